"""``statmech-nn scaling RUN_ID --labels 2,4,6``: SNR and error against the number of labels."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from statmech_nn.commands import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="SNR and readout error against the number of labels K (random label subsets)",
        description=(
            "For each K in --labels, draw --draws seeded random K-label subsets; on each, train a "
            "readout of one site of the training run's last checkpoint (train split restricted "
            "to those labels, relabelled 0..K-1) and compute its single-node matrices on the "
            "test split. Logs error, SNR and cluster size against K (step = K) and their linear "
            "fits (scipy.stats.linregress: slope, intercept, R^2) to a child run 'scaling' "
            "(METHODS.md section 7). RUN_ID is a training run or one of its child runs. Prints "
            "the child run id on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="a training run (or one of its children)")
    parser.add_argument(
        "--labels",
        required=True,
        help="comma-separated label counts K, each between 2 and the number of labels",
    )
    parser.add_argument("--draws", type=int, default=3, help="random subsets per K (default: 3)")
    parser.add_argument(
        "--site", default=None, help="site to read, e.g. block6.ff (default: the last ff site)"
    )
    parser.add_argument("--epoch", type=int, default=None, help="checkpoint (default: last)")
    parser.add_argument("--theta", type=float, default=0.3, help="threshold (default: 0.3)")
    parser.add_argument(
        "--snr",
        default="labels",
        choices=("labels", "elements", "per_cluster"),
        help="SNR variant (default: labels)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets and readouts")
    parser.add_argument(
        "--readout", default="seqpool", choices=("seqpool", "flatten", "mean"), help="readout"
    )
    parser.add_argument(
        "--silencing", default="pre_pool", choices=("pre_pool", "post_pool"), help="seqpool only"
    )
    parser.add_argument("--readout-epochs", type=int, default=10, help="readout epochs (10)")
    parser.add_argument("--readout-lr", type=float, default=0.01, help="readout SGD lr (0.01)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (128)")
    parser.add_argument(
        "--limit-train", type=int, default=None, help="train on at most N samples per subset"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def scaling_for_run(
    run_id: str,
    ks: list[int],
    draws: int = 3,
    site: str | None = None,
    epoch: int | None = None,
    theta: float = 0.3,
    snr_variant: str = "labels",
    seed: int = 0,
    limit_train: int | None = None,
    snp_options: dict | None = None,
    tracking_uri: str | None = None,
):
    """Run the scaling analysis on a training run's checkpoint, log a ``scaling`` child run.

    Returns ``(child_run_id, result)`` with ``result`` from :func:`statmech_nn.scaling.scaling`.
    """
    import mlflow

    from statmech_nn import figures, scaling, tracking
    from statmech_nn.data import data_for_config, subset
    from statmech_nn.naming import KIND_TAG
    from statmech_nn.order import check_theta
    from statmech_nn.order.runs import training_run_of
    from statmech_nn.sites import resolve

    check_theta(theta)
    scaling.parse_ks(",".join(str(k) for k in ks))
    tracking.init_store(tracking_uri)
    training = training_run_of(run_id)
    ckpt = tracking.load_checkpoint(training, epoch)
    splits = data_for_config(ckpt.config, augment="none")
    scaling.check_ks(ks, int(splits.num_classes))
    resolve(ckpt.model, [site or scaling.default_site(ckpt.model)])
    if limit_train is not None:
        splits.train = subset(splits.train, limit_train, seed)
    options = {"seed": seed, **dict(snp_options or {})}
    with tracking.run(
        None, run_name="scaling", parent_run_id=training, tags={KIND_TAG: "scaling"}
    ) as active:
        child_id = active.info.run_id
        result = scaling.scaling(
            ckpt.model, splits, ks, draws, site, seed, theta, snr_variant, options
        )
        mlflow.log_params(
            {
                "site": result.attrs["site"],
                "labels": ",".join(str(int(k)) for k in result["K"].values),
                "draws": draws,
                "theta": theta,
                "snr": snr_variant,
                "seed": seed,
                "checkpoint_epoch": ckpt.epoch,
                "limit_train": limit_train,
                **{f"snp_{k}": v for k, v in options.items() if k != "seed"},
            }
        )
        for i, k in enumerate(result["K"].values):
            step_metrics = {}
            for name in ("error", "snr", "cluster_size"):
                value = float(result[name].isel(K=i).mean())
                if value == value:
                    step_metrics[f"scaling.{name}"] = value
            mlflow.log_metrics(step_metrics, step=int(k))
        fits = {}
        for name in ("error", "snr", "cluster_size"):
            for key in ("slope", "intercept", "r2"):
                value = float(result[f"{name}_{key}"])
                if value == value:
                    fits[f"scaling.{name}.{key}"] = value
        mlflow.log_metrics(fits)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scaling.nc"
            result.to_netcdf(path, engine="h5netcdf")
            mlflow.log_artifact(str(path), artifact_path="scaling")
            fig = figures.scaling_curves(result, Path(tmp) / "scaling.png")
            mlflow.log_artifact(str(fig), artifact_path="figures")
    return child_id, result


def run(args: argparse.Namespace) -> int:
    from statmech_nn import scaling

    ks = scaling.parse_ks(args.labels)
    child_id, result = scaling_for_run(
        args.run_id,
        ks,
        draws=args.draws,
        site=args.site,
        epoch=args.epoch,
        theta=args.theta,
        snr_variant=args.snr,
        seed=args.seed,
        limit_train=args.limit_train,
        snp_options={
            "readout": args.readout,
            "silencing": args.silencing,
            "readout_epochs": args.readout_epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "readout_options": {"lr": args.readout_lr},
        },
        tracking_uri=args.tracking_uri,
    )
    for i, k in enumerate(result["K"].values):
        print(
            f"K={int(k)}: error={float(result['error'].isel(K=i).mean()):.3f} "
            f"snr={float(result['snr'].isel(K=i).mean()):.3g}"
        )
    for name in ("error", "snr"):
        print(
            f"{name} ~ {float(result[f'{name}_slope']):.4g} K + "
            f"{float(result[f'{name}_intercept']):.4g} (R^2 = {float(result[f'{name}_r2']):.3f})"
        )
    print(child_id)
    return 0
