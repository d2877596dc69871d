"""The main job: train, SNP, order parameters over training, an ANDC study and a report.

The demo is the public commands chained, nothing more: each step calls the library function
that its command runs, is printed as the exact ``statmech-nn`` command that a researcher can
rerun or vary, and every result lands in MLflow. The text task (``demo --task text``) fine-tunes
a small BERT-style encoder on the procedural ``textsynth`` set and runs the same analyses, plus
node cooperation (:func:`cooperation_step`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statmech_nn.demo_commands import (
    SNP_SITES,
    common_flags,
    cooperation_argv,
    order_argv,
    snp_argv,
    study_argv,
    train_argv,
)
from statmech_nn.errors import ConfigError, StatmechError

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
        "model_options": {"num_heads": 4},
        "data_options": {},
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
        "model_options": {"num_heads": 4},
        "data_options": {"num_super": 5, "num_sub": 4},
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
        "model_options": {},
        "data_options": {},
    },
    "textsynth": {
        "task": "text",
        "model": "hf:bert-tiny-text",
        "dataset": "textsynth",
        "epochs": 8,
        "checkpoint_every": 2,
        "batch_size": 32,
        "lr": 3e-3,
        "readout_epochs": 10,
        "null_permutations": 500,
        "trials": 30,
        "model_options": {},
        "data_options": {"max_length": 32},
    },
}

TASKS: dict[str, tuple[str, ...]] = {
    "image": ("digits", "synthetic", "cifar100"),
    "text": ("textsynth",),
}
"""The demo datasets of each task; the first is the task's default."""


def preset_for(task: str = "image", dataset: str | None = None) -> str:
    """The preset of ``task`` on ``dataset`` (default: the task's first); ConfigError if none."""
    if task not in TASKS:
        raise ConfigError(f"unknown demo task {task!r}; choose one of {', '.join(TASKS)}")
    if dataset is None:
        return TASKS[task][0]
    if dataset not in TASKS[task]:
        raise ConfigError(
            f"the {task} demo runs on {', '.join(TASKS[task])}, not {dataset!r}"
            + ("" if task == "text" else "; for text pass --task text")
        )
    return dataset


@dataclass
class DemoResult:
    """Run ids of every step and where the report went."""

    train_run_id: str = ""
    snp_run_id: str = ""
    order_run_id: str = ""
    study_run_id: str = ""
    cooperation_run_id: str = ""
    report_path: str = ""
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


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
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            settings[key] = value
    for key, value in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
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


def run(settings: dict[str, Any], quiet: bool = False) -> DemoResult:
    """Run the whole pipeline; return the run ids (the report path last).

    Each step calls the library function its command runs and prints what that command prints
    (nothing with ``quiet``), after the command line that reproduces it.
    """
    result = DemoResult()
    out = (lambda *lines: None) if quiet else print_lines
    s = settings

    def step(name: str, argv: list[str], work: Callable[[], str]) -> str:
        return run_step(result, name, argv, work)

    result.train_run_id = step("train", train_argv(s), lambda: train_step(s, out))
    train_id = result.train_run_id
    result.snp_run_id = step("snp", snp_argv(s, train_id), lambda: snp_step(s, train_id, out))
    snp_id = result.snp_run_id
    result.order_run_id = step("order", order_argv(s, snp_id), lambda: order_step(s, snp_id, out))
    result.study_run_id = step("study", study_argv(s, snp_id), lambda: study_step(s, snp_id, out))
    if s.get("task") == "text":
        cooperation_step(s, snp_id, step, out, result)
    report_argv = ["report", train_id, *common_flags(s)]
    result.report_path = step("report", report_argv, lambda: report_step(s, train_id, out))
    return result


def run_step(record: Any, name: str, argv: list[str], work: Callable[[], str]) -> str:
    """Print the command that reproduces step ``name``, run ``work`` and return its value.

    The command goes to ``record.commands`` and the step's wall time to ``record.seconds``.
    """
    command = "statmech-nn " + shlex.join(argv)
    record.commands.append(command)
    print(f"\n=== {name}: {command}", flush=True)
    start = time.perf_counter()
    value = work()
    record.seconds[name] = time.perf_counter() - start
    return value


def print_lines(*lines: str) -> None:
    """Print each line at once (progress stays visible when stdout is a pipe)."""
    for line in lines:
        print(line, flush=True)


def device_of(s: dict[str, Any]) -> str | None:
    """The torch device of the settings (``None``: the library's automatic choice)."""
    return None if s["device"] == "auto" else s["device"]


def train_step(s: dict[str, Any], out: Callable[..., None]) -> str:
    """``statmech-nn train``: :func:`statmech_nn.train.train` on the preset's config."""
    from statmech_nn import recipes
    from statmech_nn.commands.train import install_sigterm
    from statmech_nn.train import train

    config = recipes.config(
        s.get("recipe") or recipes.DEFAULT,
        model=s["model"],
        dataset=s["dataset"],
        epochs=s["epochs"],
        checkpoint_every=s["checkpoint_every"],
        batch_size=s["batch_size"],
        seed=s["seed"],
        lr=s.get("lr") or None,
        data_root=s["data_root"] or None,
        limit_train=s["limit_train"] or None,
        limit_eval=s["limit_eval"] or None,
        device=s["device"],
        experiment=s["experiment"],
        model_overrides=dict(s["model_options"]) or None,
        dataset_options=dict(s["data_options"]) or None,
    )
    install_sigterm()
    run_id = train(config, tracking_uri=s["tracking_uri"])
    out(run_id)
    return run_id


def snp_step(s: dict[str, Any], train_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn snp``: :func:`statmech_nn.snp.compute_for_run` on the MHA and FF sites."""
    from statmech_nn import snp
    from statmech_nn.commands.snp import snp_summary

    child_id, ds = snp.compute_for_run(
        train_id,
        sites=s.get("sites", SNP_SITES),
        readout_epochs=s["readout_epochs"],
        device=device_of(s),
        progress=False,
        tracking_uri=s["tracking_uri"],
        limit_train=s["limit_train"] or None,
        limit_eval=s["limit_eval"] or None,
        readout_options={"lr": 0.01},
        data_root=s["data_root"] or None,
    )
    out(*snp_summary(ds), child_id)
    return child_id


def order_step(s: dict[str, Any], snp_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn order --over-checkpoints``: :func:`statmech_nn.order.for_run`."""
    from statmech_nn import order
    from statmech_nn.order.pipeline import summary

    options = order.OrderOptions(
        null_permutations=s["null_permutations"], over_checkpoints=True, device=device_of(s)
    )
    result = order.for_run(
        snp_id,
        options,
        tracking_uri=s["tracking_uri"],
        on_epoch=lambda epoch, metrics: out(f"epoch {epoch}: " + summary(metrics)),
        data_root=s["data_root"] or None,
    )
    out(summary(result.metrics), result.run_id)
    return result.run_id


def study_step(s: dict[str, Any], snp_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn study andc``: :func:`statmech_nn.studies.for_run` on the FF readouts."""
    from statmech_nn import studies
    from statmech_nn.commands.study import result_lines

    options = studies.StudyOptions(n_trials=s["trials"])
    result = studies.for_run(
        snp_id, options, kind="ff", tracking_uri=s["tracking_uri"], data_root=s["data_root"]
    )
    out(*result_lines(result))
    return result["study_run_id"] or ""


def cooperation_work(s: dict[str, Any], snp_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn cooperation``: :func:`statmech_nn.cooperation_run.for_run` on the FF sites."""
    from statmech_nn.cooperation_run import for_run

    done = for_run(
        snp_id,
        kind="ff",
        device=device_of(s),
        tracking_uri=s["tracking_uri"],
        data_root=s["data_root"],
    )
    run_id = str(getattr(done, "run_id", "") or "")
    out(run_id)
    return run_id


def cooperation_step(
    s: dict[str, Any],
    snp_id: str,
    step: Callable[[str, list[str], Callable[[], str]], str],
    out: Callable[..., None],
    result: DemoResult,
) -> None:
    """The cooperation step of the text demo: the subset curve and the single-node bound."""
    result.cooperation_run_id = step(
        "cooperation", cooperation_argv(s, snp_id), lambda: cooperation_work(s, snp_id, out)
    )


def report_step(s: dict[str, Any], train_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn report``: :func:`statmech_nn.report.write_report`."""
    from statmech_nn.report import write_report

    path = str(write_report(train_id, None, s["tracking_uri"]).resolve())
    out(path)
    return path


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
    from statmech_nn.report.tree import json_artifact

    data = json_artifact(study_run_id, "study/pareto_front.json") if study_run_id else None
    return data if isinstance(data, list) else []  # the table is still useful without the front
