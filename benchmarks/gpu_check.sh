#!/usr/bin/env bash
# One GPU check of issue 11 in one go (run on a CUDA machine from the repository root, < 10 min):
# readouts on the activation cache (batched and separate) on CUDA, the bf16 training step on
# CUDA against vit-pytorch, order parameters at 100 and 1000 labels, and checkpoint sizes of a
# 300-epoch CCT-7/3x1 run. PIPELINE=1 first runs the whole pipeline as before (demo on CUDA,
# CCT-7/3x1 with the CIFAR-100 recipe, SNP of its 14 sites; about 5 more minutes).
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh   (wheels in .whl/ are installed first if present)
# Each section has its own timeout; the sum of the issue-11 ones is 510 s.
set -uo pipefail
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, xarray, mlflow, optuna; print('torch', torch.__version__, 'xarray', xarray.__version__, 'mlflow', mlflow.__version__, 'optuna', optuna.__version__)" | tee -a "$OUT/gpu.txt"
START=$(date +%s)
if [ "${PIPELINE:-0}" = 1 ]; then
(
work=$(mktemp -d)
cd "$work" || exit 1
SECONDS=0
timeout 120 python3 -m statmech_nn demo --device cuda 2>&1 | tee "$OUT/demo.log" | tail -40
echo "demo: ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
SECONDS=0
run=$(timeout 100 python3 -m statmech_nn train --recipe cct-cifar100 --model cct_7_3x1_32 \
    --dataset synthetic --epochs 3 --warmup-epochs 1 --checkpoint-every 3 --device cuda \
    --experiment gpu-cct7 --workers 8 2>"$OUT/cct7_train.err" | tail -1)
echo "cct7 train: ${SECONDS}s run=$run" | tee -a "$OUT/gpu.txt"
tail -5 "$OUT/cct7_train.err"
SECONDS=0
timeout 60 python3 -m statmech_nn snp "$run" --sites mha,ff --readout-epochs 2 --device cuda \
    --no-progress 2>&1 | tail -5 | tee -a "$OUT/gpu.txt"
echo "cct7 snp (14 sites): ${SECONDS}s" | tee -a "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import mlflow
mlflow.set_tracking_uri("sqlite:///mlruns/mlflow.db")
for r in mlflow.search_runs(search_all_experiments=True, output_format="list"):
    m = r.data.metrics
    keep = {k: round(v, 4) for k, v in m.items() if k in ("test_acc", "images_per_s") or k.startswith("acc.readout")}
    print(r.info.run_name, r.info.status, keep)
PY
ls reports 2>/dev/null && cp reports/*.html "$OUT/" 2>/dev/null
)
fi
cd "$REPO" || exit 1
# -- readouts on the activation cache (issue 11 item 1-2): 14 CCT-7/3x1 sites, E = 20, cached and
# batched vs today's loop, all three readouts (about 2 minutes on an H100); then seqpool unbatched
# (cached, one readout per site) for the batched-vs-separate step time.
SECONDS=0
(cd "$REPO" && PYTHONPATH=$REPO:${PYTHONPATH:-} timeout 150 python3 benchmarks/readout_cache.py \
    --device cuda --batched on --samples 4096 --batch-size 128 --epochs 20 \
    --out "$OUT/readout_cache_gpu.json") 2>&1 | tee "$OUT/readout_cache_gpu.log" | grep -v "^  \["
echo "readout cache (batched): ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
SECONDS=0
(cd "$REPO" && PYTHONPATH=$REPO:${PYTHONPATH:-} timeout 60 python3 benchmarks/readout_cache.py \
    --device cuda --batched off --kinds seqpool --samples 4096 --batch-size 128 --epochs 20 \
    --uncached-epochs 2 --out "$OUT/readout_cache_gpu_separate.json") 2>&1 \
    | tee "$OUT/readout_cache_gpu_separate.log" | grep -v "^  \["
echo "readout cache (separate): ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
# -- bf16 training step on CUDA (issue 11 item 3): ours vs vit-pytorch bf16 and fp32.
SECONDS=0
(cd "$REPO" && PYTHONPATH=$REPO:${PYTHONPATH:-} timeout 90 python3 benchmarks/train_throughput.py \
    --device cuda --dtype bf16 --fp32-baseline --batch 128 --rounds 5 --steps 10 --modes train \
    --out "$OUT/train_bf16_gpu.json") 2>&1 | tee "$OUT/train_bf16_gpu.log" | tail -8
echo "train bf16 (cuda): ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
# -- order parameters, 7 x 256 nodes, 100 vs 1000 labels (issue 11 item 4; numpy, host CPUs).
SECONDS=0
(cd "$REPO" && PYTHONPATH=$REPO:${PYTHONPATH:-} timeout 120 python3 benchmarks/order_scale.py \
    --repeats 1 --out "$OUT/order_scale.json") 2>&1 | tee "$OUT/order_scale.log" | tail -6
echo "order scale: ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
# -- checkpoint bytes of a 300-epoch CCT-7/3x1 run (issue 11 item 5; sizes, device-independent).
SECONDS=0
(cd "$REPO" && PYTHONPATH=$REPO:${PYTHONPATH:-} timeout 60 python3 benchmarks/checkpoint_size.py \
    --out "$OUT/checkpoint_size.json") 2>&1 | tee "$OUT/checkpoint_size.log" | tail -3
echo "checkpoint size: ${SECONDS}s rc=${PIPESTATUS[0]}" | tee -a "$OUT/gpu.txt"
echo "total: $(( $(date +%s) - START ))s" | tee -a "$OUT/gpu.txt"
exit 0
