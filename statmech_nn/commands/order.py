"""``statmech-nn order RUN_ID``: clusters, noise, SNR and head symmetry breaking of an SNP run."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from statmech_nn.commands import add_tracking_uri
from statmech_nn.order.stats import SNR_VARIANTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "order",
        help="order parameters (clusters, noise, SNR, head symmetry breaking Q) of an SNP run",
        description=(
            "Binarise the single-node matrices of an SNP run at THETA and compute per site the "
            "clusters, signal, noise and SNR (METHODS.md section 5) and, for MHA sites, the head "
            "symmetry-breaking order parameter Q with its permutation null model (section 6). "
            "RUN_ID is an SNP child run or a training run (its newest SNP child is used). "
            "Metrics (snr.{kind}.block{i}, noise..., signal..., clusters..., order.Q.block{i}, "
            "order.Q_null_mean/Q_null_std/Q_z/Q_pvalue.block{i}) and figures go to a child run "
            "'order' of the training run. Prints the child run id on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="an SNP child run or a training run")
    parser.add_argument(
        "--theta",
        type=float,
        default=0.3,
        help="binarisation threshold in (0, 1), strict M/max(M) > theta (default: 0.3)",
    )
    parser.add_argument(
        "--snr",
        default="labels",
        choices=SNR_VARIANTS,
        help=(
            "SNR variant logged as snr.{kind}.block{i}: labels (sum |c| over noise, default), "
            "elements (sum |c|^2 over noise), per_cluster (each cluster over the noise in its "
            "columns)"
        ),
    )
    parser.add_argument(
        "--snr-form",
        default="ratio",
        choices=("ratio", "mean"),
        help=(
            "ratio: mean numerator over mean denominator (default); mean: mean of per-node "
            "(per-cluster) ratios, zero-noise units excluded"
        ),
    )
    parser.add_argument(
        "--null-permutations",
        type=int,
        default=1000,
        help="random node-to-head permutations of the null model of Q (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the null model (default: 0)")
    parser.add_argument(
        "--over-checkpoints",
        action="store_true",
        help=(
            "also compute SNP matrices, SNR and Q on every checkpoint of the training run "
            "(epoch 0 included) with the SNP run's settings, logged with step = epoch"
        ),
    )
    parser.add_argument(
        "--gallery-nodes", type=int, default=4, help="nodes per layer in the gallery (default: 4)"
    )
    parser.add_argument("--device", default=None, help="torch device for --over-checkpoints")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def _analyse(ds, args):
    from statmech_nn import order

    stats = order.statistics(ds, args.theta)
    syms = {
        kind: order.head_symmetry(
            ds, args.theta, kind, permutations=args.null_permutations, seed=args.seed
        )
        for kind in order.head_kinds(ds)
    }
    labels = order.layer_labels(ds)
    metrics = order.site_metrics(stats, args.snr, args.snr_form, labels)
    for sym in syms.values():
        metrics.update(order.symmetry_metrics(sym, labels))
    return stats, syms, metrics


def _figures(ds, stats, syms, args, folder: Path) -> list[Path]:
    from statmech_nn import figures, order

    paths = [figures.depth_profile(stats, folder / "depth.png", args.snr)]
    for kind, st in stats.items():
        binary = order.binarize(order.node_matrices(ds, kind), args.theta)
        binary = binary.assign_coords(valid=st["valid"])
        paths.append(
            figures.node_gallery(binary, folder / f"gallery_{kind}.png", args.gallery_nodes)
        )
    for kind, sym in syms.items():
        paths.append(figures.expertise_heatmaps(sym, folder / f"expertise_{kind}.png"))
    return paths


def run(args: argparse.Namespace) -> int:
    import mlflow
    import xarray as xr

    from statmech_nn import figures, snp, tracking
    from statmech_nn.errors import StatmechError, TrackingError
    from statmech_nn.naming import KIND_TAG
    from statmech_nn.order import check_theta
    from statmech_nn.order.checkpoints import snp_settings
    from statmech_nn.snp import find_snp_run

    check_theta(args.theta)
    if args.null_permutations < 1:
        raise StatmechError("--null-permutations must be >= 1")
    tracking.init_store(args.tracking_uri)
    found = find_snp_run(args.run_id)
    if args.over_checkpoints and found.training_run_id is None:
        raise TrackingError(
            f"SNP run {found.snp_run_id} has no parent training run; --over-checkpoints needs "
            "the training run's checkpoints"
        )
    ds = snp.load_from_run(found.snp_run_id, tracking_uri=tracking.current_uri())
    stats, syms, metrics = _analyse(ds, args)
    parent = found.training_run_id or found.snp_run_id
    snp_epoch = int(ds.attrs.get("checkpoint_epoch", -1))
    step = max(snp_epoch, 0)

    with tracking.run(None, run_name="order", parent_run_id=parent, tags={KIND_TAG: "order"}) as a:
        child_id = a.info.run_id
        mlflow.log_params(
            {
                "snp_run_id": found.snp_run_id,
                "theta": args.theta,
                "snr": args.snr,
                "snr_form": args.snr_form,
                "null_permutations": args.null_permutations,
                "seed": args.seed,
                "over_checkpoints": args.over_checkpoints,
                "checkpoint_epoch": snp_epoch,
            }
        )
        mlflow.log_metrics(metrics, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            for path in _figures(ds, stats, syms, args, Path(tmp)):
                mlflow.log_artifact(str(path), artifact_path="figures")

        if args.over_checkpoints:
            params = tracking.get_run(found.snp_run_id).data.params
            settings = snp_settings(ds, params)
            series = {}
            for epoch, ds_e in _checkpoint_datasets(found, settings, snp_epoch, ds, args):
                if epoch == snp_epoch:
                    syms_e, metrics_e = syms, metrics
                else:
                    _, syms_e, metrics_e = _analyse(ds_e, args)
                    mlflow.log_metrics(metrics_e, step=epoch)
                for kind, sym in syms_e.items():
                    series.setdefault(kind, []).append(
                        sym[["Q", "Q_null_mean", "Q_null_std", "Q_pvalue"]].expand_dims(
                            epoch=[epoch]
                        )
                    )
                print(f"epoch {epoch}: " + _summary(metrics_e))
            with tempfile.TemporaryDirectory() as tmp:
                for kind, parts in series.items():
                    q = xr.concat(parts, dim="epoch")
                    path = figures.q_over_training(q, Path(tmp) / f"q_over_training_{kind}.png")
                    mlflow.log_artifact(str(path), artifact_path="figures")
    print(_summary(metrics))
    print(child_id)
    return 0


def _checkpoint_datasets(found, settings, snp_epoch, ds, args):
    """The SNP dataset of every checkpoint; the SNP run's own epoch reuses its stored tensor."""
    from statmech_nn import tracking
    from statmech_nn.order.checkpoints import snp_over_checkpoints

    epochs = tracking.list_checkpoints(found.training_run_id)
    others = [e for e in epochs if e != snp_epoch]
    computed = snp_over_checkpoints(
        found.training_run_id, settings, epochs=others, device=args.device
    )
    pending = next(computed, None)
    for epoch in epochs:
        if epoch == snp_epoch:
            yield epoch, ds
        elif pending is not None and pending[0] == epoch:
            yield pending
            pending = next(computed, None)


def _summary(metrics: dict[str, float]) -> str:
    keys = sorted(k for k in metrics if k.startswith(("snr.", "order.Q.")))
    return ", ".join(f"{k}={metrics[k]:.3g}" for k in keys)
