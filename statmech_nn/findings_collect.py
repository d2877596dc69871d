"""The findings run: superclass alignment, every step's numbers in one JSON, tables and a figure.

Reads what the steps of :func:`statmech_nn.findings.run` logged (the training run's children,
newest of each kind), computes the superclass alignment of the final SNP tensor against its
permutation null (:mod:`statmech_nn.order.alignment`), and logs a ``findings`` child run of the
training run with the metrics ``align.{grouping}_{purity,null_mean,pvalue}.{kind}.block{i}`` and
the artifacts ``findings/findings.json`` (run ids, commands, commit, seconds, every metric),
``findings/tables.md`` and ``findings/alignment.png``. A copy goes to ``out_dir`` when given,
with the steps' own figures beside it (``{kind}__{artifact path}.png``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from statmech_nn.naming import KIND_FINDINGS, KIND_TAG, layer_label
from statmech_nn.snp.tokens import TOKEN_READOUT
from statmech_nn.train.records import git_commit

ALIGN_PREFIX = "align"
HISTORY_METRICS = (
    "order.Q",
    "order.Q_null_mean",
    "order.Q_pvalue",
    "snr.",
    "noise.",
    "cluster_size.",
)
"""Order metrics whose history over the checkpoints (step = epoch) the findings keep: Q with its
null, and SNR, noise and cluster size, whose untrained (epoch 0) values are their control."""
SCALED = ("error", "snr", "cluster_size")
"""Scaling metrics whose history over K (step = K) the findings keep."""


def findings_argv(s: Mapping[str, Any], train_id: str) -> list[str]:
    argv = ["findings", "--collect", train_id]
    argv += ["--alignment-permutations", str(s["alignment_permutations"])]
    if s.get("out_dir"):
        argv += ["--out", str(s["out_dir"])]
    if s.get("data_root"):
        argv += ["--data-root", str(s["data_root"])]
    return argv + (["--tracking-uri", s["tracking_uri"]] if s.get("tracking_uri") else [])


def newest_children(train_id: str) -> dict[str, Any]:
    """``{kind: run}``: the newest run of each kind below training run ``train_id``.

    Analyses hang under the training run or under its SNP run (the study), so the whole tree is
    searched; trials are counted by their study and left out.
    """
    from statmech_nn.report import descendants, run_tree

    out: dict[str, Any] = {}
    for node in sorted(descendants(run_tree(train_id)), key=lambda n: -n.start_time):
        out.setdefault(node.kind, node.run)
    return out


def alignment_of(
    snp_ds: xr.Dataset, superclass: list[int], theta: float, permutations: int, seed: int
) -> dict[str, xr.Dataset]:
    """``{kind: superclass_alignment}`` for the MHA and FF sites of an SNP tensor."""
    from statmech_nn.order.alignment import superclass_alignment
    from statmech_nn.order.stats import site_statistics

    out = {}
    for kind in ("mha", "ff"):
        if f"snp_{kind}" in snp_ds:
            stats = site_statistics(snp_ds, kind, theta)
            out[kind] = superclass_alignment(stats, superclass, permutations, seed)
    return out


def alignment_metrics(aligned: Mapping[str, xr.Dataset]) -> dict[str, float]:
    """Flat ``align.{grouping}_{quantity}.{kind}.block{i}`` metrics (NaN left out)."""
    out: dict[str, float] = {}
    for kind, ds in aligned.items():
        for name in ds.data_vars:
            if ds[name].dims != ("layer",) or str(name).endswith("_pairs"):
                continue
            for layer, value in zip(ds["layer"].values, ds[name].values, strict=True):
                if np.isfinite(value):
                    out[f"{ALIGN_PREFIX}.{name}.{kind}.{layer_label(kind, int(layer))}"] = float(
                        value
                    )
    return out


def _superclass_map(
    train_id: str, data_root: str | os.PathLike | None = None
) -> tuple[list[int] | None, dict[str, Any]]:
    """The superclass of every label of the training data (None without a hierarchy)."""
    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis

    ckpt = tracking.load_checkpoint(train_id)
    data = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    superclass = data.meta.get("superclass")
    return (list(map(int, superclass)) if superclass else None), dict(ckpt.config)


def collect(
    train_id: str,
    permutations: int = 1000,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, xr.Dataset]]:
    """Every step's numbers, read from MLflow, and the superclass alignment (if a hierarchy).

    The training data (for their superclasses) are read from ``data_root``.
    """
    from statmech_nn import snp, tracking
    from statmech_nn.report.tree import json_artifact, metric_histories, run_tree

    root = run_tree(train_id).run
    children = newest_children(train_id)
    found: dict[str, Any] = {
        "train": {
            "run_id": train_id,
            "metrics": dict(root.data.metrics),
            "params": root.data.params,
        },
        "test_acc_history": metric_histories(train_id, ["test_acc", "val_acc"]),
    }
    for kind, run in children.items():
        if kind == KIND_FINDINGS:
            continue
        found[kind] = {
            "run_id": run.info.run_id,
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
        }
    if "order" in found:
        names = [m for m in found["order"]["metrics"] if m.startswith(HISTORY_METRICS)]
        found["order"]["history"] = metric_histories(found["order"]["run_id"], names)
    if "scaling" in found:
        names = [f"scaling.{name}" for name in SCALED]
        found["scaling"]["history"] = metric_histories(found["scaling"]["run_id"], names)
    if "study" in found:
        found["study"]["random_control"] = json_artifact(
            found["study"]["run_id"], "study/random_control.json"
        )
        found["study"]["pareto_front"] = json_artifact(
            found["study"]["run_id"], "study/pareto_front.json"
        )
    superclass, config = _superclass_map(train_id, data_root)
    found["config"] = config
    aligned: dict[str, xr.Dataset] = {}
    ds = None
    if superclass is not None and "snp" in found:
        ds = snp.load_from_run(found["snp"]["run_id"], tracking_uri=tracking.current_uri())
    if ds is not None and ds.attrs.get("readout") == TOKEN_READOUT:
        found["alignment"] = {"skipped": "token-level labels are tokens, not the data's classes"}
    elif ds is not None and superclass is not None:
        theta = float(found.get("order", {}).get("params", {}).get("theta", 0.3))
        aligned = alignment_of(ds, superclass, theta, permutations, seed)
        found["alignment"] = {
            "chance": next(iter(aligned.values())).attrs["chance"] if aligned else None,
            "permutations": permutations,
            "theta": theta,
            "metrics": alignment_metrics(aligned),
        }
    else:
        found["alignment"] = {"skipped": "the dataset has no superclass hierarchy"}
    return found, aligned


def findings_step(
    s: Mapping[str, Any], train_id: str, result: Any, out: Callable[..., None]
) -> str:
    """Collect, log the ``findings`` child run and copy its artifacts to ``s['out_dir']``."""
    done = log_findings(
        train_id,
        permutations=int(s["alignment_permutations"]),
        seed=int(s["seed"]),
        extra={
            "settings": {k: v for k, v in s.items() if k != "tracking_uri"},
            "commands": list(result.commands),
            "seconds": dict(result.seconds),
        },
        out_dir=s.get("out_dir"),
        tracking_uri=s.get("tracking_uri"),
        data_root=s.get("data_root"),
    )
    out(done)
    return done


def log_findings(
    train_id: str,
    permutations: int = 1000,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    data_root: str | os.PathLike | None = None,
) -> str:
    """The ``findings`` child run of ``train_id`` (data from ``data_root``); returns its id."""
    import mlflow

    from statmech_nn import figures, tracking
    from statmech_nn.findings_tables import tables_markdown

    tracking.init_store(tracking_uri)
    found, aligned = collect(train_id, permutations, seed, data_root)
    with tracking.child_run(train_id, KIND_FINDINGS) as active:
        run_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, KIND_FINDINGS)
        mlflow.log_params({"alignment_permutations": permutations, "seed": seed})
        mlflow.log_metrics(found["alignment"].get("metrics", {}))
        found.update(
            dict(extra or {}), findings_run_id=run_id, commit=git_commit(mark_dirty=True) or ""
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "findings"
            folder.mkdir()
            (folder / "findings.json").write_text(json.dumps(found, indent=1, default=str))
            (folder / "tables.md").write_text(tables_markdown(found))
            if aligned:
                figures.superclass_alignment(
                    aligned, found["alignment"]["chance"], folder / "alignment.png"
                )
            mlflow.log_artifacts(str(folder), "findings")
            if out_dir is not None:
                step_figures(found, folder)  # copies for the out folder; MLflow has them
                _copy_to(folder, Path(out_dir))
    return run_id


def _copy_to(folder: Path, target: Path) -> None:
    from statmech_nn.fileio import atomic_write

    def copy(source: Path) -> Callable[[Any], object]:
        return lambda fh: fh.write(source.read_bytes())

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        atomic_write(target / path.name, copy(path))


def step_figures(found: Mapping[str, Any], folder: Path) -> list[str]:
    """Copy the PNG figures the steps logged into ``folder`` as ``{kind}__{name}``."""
    from statmech_nn.report.tree import png_artifacts

    names = []
    for kind in ("train", "snp", "order", "study", "scaling", "cooperation"):
        run_id = found.get(kind, {}).get("run_id")
        for path, data in png_artifacts(run_id) if run_id else []:
            name = f"{kind}__{path.replace('/', '_')}"
            (folder / name).write_bytes(data)
            names.append(name)
    return names
