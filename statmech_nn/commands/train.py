"""``statmech-nn train``: train a model on a dataset, tracked in MLflow; prints the run id."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from statmech_nn.commands.options import add_tracking_uri

# CLI flag -> TrainConfig field, for flags that set a training value (None = not given).
_CONFIG_FLAGS = (
    "model",
    "dataset",
    "data_root",
    "img_size",
    "positional_embedding",
    "experiment",
    "epochs",
    "seed",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "min_lr",
    "label_smoothing",
    "augment",
    "grad_clip",
    "val_fraction",
    "checkpoint_every",
    "keep_resume",
    "limit_train",
    "limit_eval",
    "attention_dropout",
    "stochastic_depth",
)
_RUNTIME_FLAGS = ("device", "workers")

EPILOG = """\
examples:
  # a small CCT on the bundled digits (CPU, about a minute):
  statmech-nn train --model cct_2_3x2_32 --dataset digits --epochs 3

  # the reference CIFAR-100 recipe (downloads CIFAR-100 into ./data once):
  statmech-nn train --recipe cct-cifar100 --data-root data --download

  # continue a run that was interrupted (same MLflow run, same final weights):
  statmech-nn train --resume RUN_ID

  # several processes (DDP; --batch-size is per process):
  torchrun --nproc_per_node=2 -m statmech_nn train --model cct_2_3x2_32 --dataset digits

The last line printed is the MLflow run id. Runs, metrics and checkpoints go to
./mlruns (sqlite:///mlruns/mlflow.db, artifacts in mlruns/artifacts); look at them with
  mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db
"""


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    from statmech_nn import recipes

    parser = subparsers.add_parser(
        "train",
        help="train a model (CCT or VGG) on a dataset, tracked in MLflow",
        description=(
            "Train a model and record it as an MLflow run: every setting as a parameter, "
            "per-epoch losses, accuracies, learning rate and images/s as metrics, and a "
            "checkpoint of the untrained weights and of every epoch as artifacts. A recipe "
            f"gives every setting a starting value (recipes: {', '.join(recipes.names())}; "
            f"default {recipes.DEFAULT}); the flags below override single values. Training is "
            "seeded: the same command gives the same weights on CPU."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_what(parser.add_argument_group("what to train"), recipes)
    _add_how(parser.add_argument_group("how to train"))
    _add_where(parser.add_argument_group("where to run and record"))
    parser.set_defaults(func=run)


def _add_what(what: Any, recipes: Any) -> None:
    what.add_argument(
        "--recipe",
        default=None,
        choices=recipes.names(),
        help=f"starting values for every setting (default: {recipes.DEFAULT})",
    )
    what.add_argument(
        "--model", help="model name, see 'statmech-nn models' (default: the recipe's)"
    )
    what.add_argument(
        "--dataset", help="dataset name, see 'statmech-nn datasets' (default: the recipe's)"
    )
    what.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the datasets (default: $STATMECH_DATA or ./data)",
    )
    what.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download the dataset into --data-root if it is missing",
    )
    what.add_argument("--img-size", type=int, help="resize images to this size (pixels)")
    what.add_argument(
        "--positional-embedding",
        choices=("learnable", "sine", "none"),
        help="CCT positional embedding (default: the recipe's)",
    )
    what.add_argument(
        "--data-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, e.g. num_super=5 for synthetic (repeatable)",
    )
    what.add_argument(
        "--model-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model constructor argument, e.g. embedding_dim=64 (repeatable)",
    )


def _add_how(how: Any) -> None:
    how.add_argument("--epochs", type=int, help="number of epochs")
    how.add_argument("--seed", type=int, help="random seed (data order, init, augmentation)")
    how.add_argument("--batch-size", type=int, help="batch size (per process under torchrun)")
    how.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    how.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    how.add_argument("--warmup-epochs", type=float, help="epochs of linear learning-rate warm-up")
    how.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine")
    how.add_argument("--label-smoothing", type=float, help="label smoothing of the loss")
    how.add_argument(
        "--augment", choices=("none", "basic", "cct"), help="training augmentation preset"
    )
    how.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    how.add_argument("--attention-dropout", type=float, help="override the model's")
    how.add_argument("--stochastic-depth", type=float, help="override the model's")
    how.add_argument("--val-fraction", type=float, help="fraction of train held out (0.1)")
    how.add_argument(
        "--checkpoint-every", type=int, help="checkpoint every N epochs (default 1; last always)"
    )
    how.add_argument(
        "--keep-resume",
        type=int,
        metavar="N",
        help="keep the full resume state of the newest N checkpoints, weights alone of older (2)",
    )
    how.add_argument("--limit-train", type=int, metavar="N", help="train on N random samples")
    how.add_argument(
        "--limit-eval", type=int, metavar="N", help="validate and test on N random samples"
    )


def _add_where(run_: Any) -> None:
    run_.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="cuda if available by default"
    )
    run_.add_argument("--workers", type=int, help="DataLoader worker processes")
    run_.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="bfloat16 autocast on CPU (faster on CPUs with AMX/AVX512-BF16)",
    )
    run_.add_argument(
        "--no-amp", dest="amp", action="store_false", default=None, help="no float16 AMP on CUDA"
    )
    run_.add_argument("--experiment", help="MLflow experiment name (default: statmech-nn)")
    add_tracking_uri(run_)
    run_.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this interrupted run from its last checkpoint, with its own settings",
    )
    run_.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even though the run is RUNNING on another host (make sure nothing "
        "trains it there any more); a run still training on this host is always refused",
    )


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def install_sigterm() -> None:
    """SIGTERM stops training like Ctrl-C does (the run ends KILLED, checkpoints kept)."""
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _on_sigterm)


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig the flags ask for (``None`` to resume with the run's own settings)."""
    from statmech_nn import recipes

    values = {name: getattr(args, name) for name in _CONFIG_FLAGS}
    values.update(download=args.download, bf16=args.bf16, amp=args.amp)
    runtime = {name: getattr(args, name) for name in _RUNTIME_FLAGS}
    if args.data_option:
        values["dataset_options"] = dict(args.data_option)
    if args.model_option:
        values["model_overrides"] = dict(args.model_option)
    if not args.resume:
        return recipes.config(args.recipe or recipes.DEFAULT, **values, **runtime)
    given = sorted(k for k, v in values.items() if v is not None)
    if given or args.recipe:
        ignored = ", ".join("--" + k.replace("_", "-") for k in given) or "--recipe"
        print(
            "statmech-nn train: note: --resume continues with the run's own settings; "
            f"ignoring {ignored}",
            file=sys.stderr,
        )
    if any(v is not None for v in runtime.values()):
        return recipes.config(args.recipe or recipes.DEFAULT, **runtime)
    return None


def run(args: argparse.Namespace) -> int:
    import os

    from statmech_nn.train import train

    config = config_from_args(args)
    install_sigterm()
    run_id = train(
        config,
        tracking_uri=args.tracking_uri,
        resume_run_id=args.resume,
        force_resume=args.force_resume,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_id, flush=True)
    return 0
