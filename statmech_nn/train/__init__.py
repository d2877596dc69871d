"""Phase 1 (docs/methods.md section 2): train a network, tracked in MLflow, resumable bit for bit.

``train(config)`` runs AdamW with a linear warm-up and a cosine decay to ``min_lr``, cross-entropy
with label smoothing (soft-target cross-entropy on the mixup/cutmix targets of the ``cct``
preset, which already fold the smoothing in), optional gradient
clipping, AMP (float16) on CUDA and optional bfloat16 autocast on CPU. It logs the whole config
as params, per-epoch metrics and a checkpoint of the untrained weights (epoch 0) and of every
epoch (see :mod:`statmech_nn.tracking`).

Reproducibility: every epoch starts by reseeding torch, numpy, ``random`` and the DataLoader's
generator from ``(seed, epoch, rank)``. The data order, augmentation and dropout of epoch ``e``
therefore depend only on the seed and ``e``, and a run resumed from the checkpoint of epoch ``e``
(model, optimiser, schedule, scaler) continues exactly as the uninterrupted run would have: on
CPU the final weights are equal bit for bit. RNG states are stored in checkpoints as well.

Objectives (``objective``, :mod:`statmech_nn.train.objectives`): ``classification`` (default)
or ``mlm``, masked-language-model pre-training of a Hugging Face BERT-style encoder on a text set
with BERT's masking drawn per ``(seed, split, epoch, sample)`` (:mod:`statmech_nn.data.mlm`), so
resume stays exact; its losses and accuracies are per masked token.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU,
nccl on CUDA), each rank reads its shard through a ``DistributedSampler``, and only rank 0
evaluates, logs to MLflow and writes checkpoints. ``batch_size`` is per process.

Modules: ``config`` (TrainConfig and its checks), ``schedule`` (learning rates), ``steps`` (the
one training step, loss, evaluation, checkpoint state), ``determinism`` (seeds, RNG states),
``dist`` (torchrun), ``records`` (what a run logs), ``objectives`` (classification or MLM),
``loop`` (``train``) and ``finetune``
(``fine_tune``, the short retraining that network pruning uses).
"""

from statmech_nn.data.for_config import data_for_config
from statmech_nn.train.config import RUNTIME_FIELDS, SCHEDULE_UNITS, TrainConfig, check_config
from statmech_nn.train.finetune import fine_tune
from statmech_nn.train.loop import EpochCallback, train
from statmech_nn.train.schedule import CosineToZero, Schedule, lr_at
from statmech_nn.train.steps import (
    CHECKPOINT_FORMAT,
    Step,
    accuracy,
    evaluate,
    evaluate_on,
    is_training_state,
    model_state,
    param_groups,
    soft_target_loss,
    training_state,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "RUNTIME_FIELDS",
    "SCHEDULE_UNITS",
    "CosineToZero",
    "EpochCallback",
    "Schedule",
    "Step",
    "TrainConfig",
    "accuracy",
    "check_config",
    "data_for_config",
    "evaluate",
    "evaluate_on",
    "fine_tune",
    "is_training_state",
    "lr_at",
    "model_state",
    "param_groups",
    "soft_target_loss",
    "train",
    "training_state",
]
