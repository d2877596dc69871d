"""The main job: train, SNP, order parameters over training, an ANDC study and a report.

The demo is the public commands chained, nothing more: each step is printed as the exact
``statmech-nn`` command that a researcher can rerun or vary, and every result lands in MLflow.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from statmech_nn.errors import StatmechError

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "model": "cct_2_3x2_32",
        "dataset": "digits",
        "epochs": 16,
        "checkpoint_every": 4,
        "batch_size": 64,
        "lr": 2e-3,
        "readout_epochs": 8,
        "null_permutations": 500,
        "trials": 30,
        "train_options": ["--model-option", "num_heads=4"],
    },
    "synthetic": {
        "model": "cct_2_3x2_32",
        "dataset": "synthetic",
        "epochs": 8,
        "checkpoint_every": 2,
        "batch_size": 64,
        "lr": 2e-3,
        "readout_epochs": 4,
        "null_permutations": 500,
        "trials": 30,
        "train_options": [
            "--model-option",
            "num_heads=4",
            "--data-option",
            "num_super=5",
            "--data-option",
            "num_sub=4",
        ],
    },
    "cifar100": {
        "model": "cct_7_3x1_32",
        "dataset": "cifar100",
        "recipe": "cct-cifar100",
        "epochs": 300,
        "checkpoint_every": 25,
        "batch_size": 128,
        "lr": None,
        "readout_epochs": 30,
        "null_permutations": 1000,
        "trials": 200,
        "train_options": [],
    },
}


@dataclass
class DemoResult:
    """Run ids of every step and where the report went."""

    train_run_id: str = ""
    snp_run_id: str = ""
    order_run_id: str = ""
    study_run_id: str = ""
    report_path: str = ""
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class _Tee(io.TextIOBase):
    """Write to the terminal and keep a copy (to read the run id a command prints last)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.buffer_text = io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.buffer_text.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def invoke(argv: list[str], quiet: bool = False) -> str:
    """Run one ``statmech-nn`` command in this process; return the last line it printed."""
    from statmech_nn.cli import build_parser

    args = build_parser().parse_args(argv)
    args.debug = True
    tee = _Tee(io.StringIO() if quiet else sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = args.func(args)
    if code:
        raise StatmechError(f"'statmech-nn {shlex.join(argv)}' exited with {code}")
    lines = [line for line in tee.buffer_text.getvalue().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def plan(
    preset: str = "digits",
    *,
    data_root: str | None = None,
    device: str = "auto",
    epochs: int | None = None,
    trials: int | None = None,
    readout_epochs: int | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    experiment: str = "demo",
    tracking_uri: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The settings of a demo run: a preset with the caller's overrides."""
    if preset not in PRESETS:
        raise StatmechError(f"unknown demo dataset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = dict(PRESETS[preset])
    for key, value in (
        ("epochs", epochs),
        ("trials", trials),
        ("readout_epochs", readout_epochs),
    ):
        if value is not None:
            settings[key] = value
    settings.update(
        data_root=data_root,
        device=device,
        limit_train=limit_train,
        limit_eval=limit_eval,
        experiment=experiment,
        tracking_uri=tracking_uri,
        seed=seed,
    )
    return settings


def _common(settings: dict[str, Any]) -> list[str]:
    return ["--tracking-uri", settings["tracking_uri"]] if settings["tracking_uri"] else []


def train_argv(s: dict[str, Any]) -> list[str]:
    argv = ["train", "--model", s["model"], "--dataset", s["dataset"]]
    if s.get("recipe"):
        argv += ["--recipe", s["recipe"]]
    argv += ["--epochs", str(s["epochs"]), "--checkpoint-every", str(s["checkpoint_every"])]
    argv += ["--batch-size", str(s["batch_size"]), "--seed", str(s["seed"])]
    if s.get("lr"):
        argv += ["--lr", str(s["lr"])]
    if s["data_root"]:
        argv += ["--data-root", s["data_root"]]
    if s["limit_train"]:
        argv += ["--limit-train", str(s["limit_train"])]
    if s["limit_eval"]:
        argv += ["--limit-eval", str(s["limit_eval"])]
    argv += ["--device", s["device"], "--experiment", s["experiment"], *s["train_options"]]
    return argv + _common(s)


def snp_argv(s: dict[str, Any], run_id: str) -> list[str]:
    argv = ["snp", run_id, "--sites", "mha,ff", "--readout-epochs", str(s["readout_epochs"])]
    if s["limit_train"]:
        argv += ["--limit-train", str(s["limit_train"])]
    if s["limit_eval"]:
        argv += ["--limit-eval", str(s["limit_eval"])]
    if s["device"] != "auto":
        argv += ["--device", s["device"]]
    return argv + ["--no-progress", *_common(s)]


def order_argv(s: dict[str, Any], snp_run_id: str) -> list[str]:
    argv = ["order", snp_run_id, "--over-checkpoints"]
    argv += ["--null-permutations", str(s["null_permutations"])]
    if s["device"] != "auto":
        argv += ["--device", s["device"]]
    return argv + _common(s)


def study_argv(s: dict[str, Any], snp_run_id: str) -> list[str]:
    argv = ["study", "andc", snp_run_id, "--trials", str(s["trials"]), "--kind", "ff"]
    argv += ["--study-name", f"demo-andc-{snp_run_id[:8]}"]
    return argv + _common(s)


def run(settings: dict[str, Any], quiet: bool = False) -> DemoResult:
    """Run the whole pipeline; return the run ids (the report path last)."""
    result = DemoResult()

    def step(name: str, argv: list[str]) -> str:
        command = "statmech-nn " + shlex.join(argv)
        result.commands.append(command)
        print(f"\n=== {name}: {command}", flush=True)
        start = time.perf_counter()
        out = invoke(argv, quiet=quiet)
        result.seconds[name] = time.perf_counter() - start
        return out

    result.train_run_id = step("train", train_argv(settings))
    result.snp_run_id = step("snp", snp_argv(settings, result.train_run_id))
    result.order_run_id = step("order", order_argv(settings, result.snp_run_id))
    result.study_run_id = step("study", study_argv(settings, result.snp_run_id))
    report_argv = ["report", result.train_run_id, *_common(settings)]
    result.report_path = step("report", report_argv)
    return result


def summary_table(result: DemoResult) -> str:
    """Accuracy, SNR and Q per block, and the Pareto points of the study, as plain text."""
    from statmech_nn import report

    tree = report.run_tree(result.train_run_id)
    kinds = {c.kind: c for c in tree.children}
    per_layer: dict[str, dict[str, float]] = {}
    for child in (kinds.get("snp"), kinds.get("order")):
        if child is not None:
            for layer, values in report.by_layer(child.run.data.metrics).items():
                per_layer.setdefault(layer, {}).update(values)
    columns = [
        ("readout acc mha", "acc.readout.mha"),
        ("readout acc ff", "acc.readout.ff"),
        ("SNR mha", "snr.mha"),
        ("SNR ff", "snr.ff"),
        ("Q", "order.Q"),
        ("Q null", "order.Q_null_mean"),
        ("p(Q)", "order.Q_pvalue"),
    ]
    rows = [["block", *[c[0] for c in columns]]]
    for layer, values in per_layer.items():
        rows.append([layer, *[report.fmt(values.get(key)) for _, key in columns]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    metrics = tree.run.data.metrics
    head = (
        f"final test accuracy {report.fmt(metrics.get('test_acc'))} "
        f"(val {report.fmt(metrics.get('val_acc'))})"
    )
    front = _pareto_points(result.study_run_id)
    if front:
        lines.append("")
        lines.append("ANDC Pareto front (thresholds -> readout accuracy, pruned fraction):")
        front = sorted(front, key=lambda p: p["metrics"].get("andc.pruned_fraction", 0))
        if len(front) > 8:
            front = [front[round(i * (len(front) - 1) / 7)] for i in range(8)]
            lines[-1] += " (8 of them, evenly spread)"
        for point in front:
            thetas = ", ".join(f"{k}={v:.3f}" for k, v in sorted(point["params"].items()))
            m = point["metrics"]
            lines.append(
                f"  trial {point['number']:>3}: {thetas} -> accuracy "
                f"{report.fmt(m.get('andc.accuracy'))}, pruned "
                f"{report.fmt(m.get('andc.pruned_fraction'))}"
            )
    return head + "\n" + "\n".join(lines)


def _pareto_points(study_run_id: str) -> list[dict[str, Any]]:
    import json
    import tempfile
    from pathlib import Path

    import mlflow

    if not study_run_id:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=study_run_id, artifact_path="study/pareto_front.json", dst_path=tmp
            )
        except Exception:  # noqa: BLE001 - the table is still useful without the front
            return []
        data = json.loads(Path(path).read_text())
    return data if isinstance(data, list) else []
