"""The paper's claims measured at 100 labels: the whole analysis chained, each step as its command.

:func:`run` trains a CCT on the procedural 100-class set (20 superclasses x 5 subclasses, the
ground truth for clusters) or on CIFAR-100, then runs the SNP tensor, the order parameters over
the checkpoints with the head-permutation null, an ANDC study with its random control, network
ANDC against random pruning at the same fraction, the label-scaling fit, node cooperation, and
the superclass alignment (:mod:`statmech_nn.findings_collect`); the report comes last. Like the
demo (:mod:`statmech_nn.demo`), each step prints the ``statmech-nn`` command that reruns it and
every number lands in MLflow. Two presets: ``cpu`` (about an hour on two CPU cores) and ``gpu``
(the paper's CCT-7/3x1 recipe and 200 readout epochs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statmech_nn import demo
from statmech_nn import demo_commands as argvs
from statmech_nn.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "cct_4_3x2_32",
        "recipe": None,
        "epochs": 20,
        "checkpoint_every": 5,
        "batch_size": 64,
        "lr": 2e-3,
        "readout_epochs": 10,
        "null_permutations": 1000,
        "trials": 40,
        "prune_epochs": 1,
        "random_draws": 2,
        "scaling_ks": (10, 20, 50, 100),
        "scaling_draws": 3,
        "alignment_permutations": 1000,
        "sites": "mha,ff,ff_hidden",
        "model_options": {"num_heads": 4},
        "data_options": {"num_super": 20, "num_sub": 5, "n_train_per_class": 100},
    },
    "gpu": {
        "model": "cct_7_3x1_32",
        "recipe": "cct-cifar100",
        "epochs": 300,
        "checkpoint_every": 25,
        "batch_size": 128,
        "lr": None,
        "readout_epochs": 200,
        "null_permutations": 1000,
        "trials": 200,
        "prune_epochs": 5,
        "random_draws": 5,
        "scaling_ks": (10, 20, 40, 60, 80, 100),
        "scaling_draws": 5,
        "alignment_permutations": 10000,
        "sites": "mha,ff,ff_hidden",
        "model_options": {},
        "data_options": {
            "num_super": 20,
            "num_sub": 5,
            "n_train_per_class": 500,
            "n_test_per_class": 100,
        },
    },
}

DATASETS = ("synthetic", "cifar100")
"""What the findings run on: the procedural hierarchy (default) or a local CIFAR-100."""


@dataclass
class FindingsResult:
    """Run ids of every step, the commands that reproduce them, and each step's seconds."""

    runs: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report_path: str = ""


def plan(
    preset: str = "cpu",
    *,
    dataset: str = "synthetic",
    data_root: str | None = None,
    device: str = "auto",
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    experiment: str = "findings",
    tracking_uri: str | None = None,
    seed: int = 0,
    out_dir: str | None = None,
    alignment_permutations: int | None = None,
) -> dict[str, Any]:
    """The settings of a findings run: a preset with the caller's overrides, checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown findings preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if dataset not in DATASETS:
        raise ConfigError(f"findings run on {' or '.join(DATASETS)}, not {dataset!r}")
    for name, value in (
        ("epochs", epochs),
        ("limit-train", limit_train),
        ("limit-eval", limit_eval),
        ("alignment-permutations", alignment_permutations),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    settings = dict(PRESETS[preset], preset=preset, dataset=dataset)
    if dataset != "synthetic":
        settings["data_options"] = {}
    if epochs is not None:
        settings["epochs"] = epochs
        settings["checkpoint_every"] = max(1, min(settings["checkpoint_every"], epochs // 4 or 1))
    settings.update(
        data_root=data_root,
        device=device,
        limit_train=limit_train,
        limit_eval=limit_eval,
        experiment=experiment,
        tracking_uri=tracking_uri,
        seed=seed,
        out_dir=out_dir,
    )
    if alignment_permutations is not None:
        settings["alignment_permutations"] = alignment_permutations
    return settings


def prune_argv(s: dict[str, Any], train_id: str, snp_id: str) -> list[str]:
    argv = ["prune", train_id, "--snp-run", snp_id, "--epochs", str(s["prune_epochs"])]
    argv += ["--random-draws", str(s["random_draws"])]
    return argv + argvs.data_flags(s) + argvs.device_flags(s) + argvs.common_flags(s)


def scaling_argv(s: dict[str, Any], train_id: str) -> list[str]:
    argv = ["scaling", train_id, "--labels", ",".join(str(k) for k in s["scaling_ks"])]
    argv += ["--draws", str(s["scaling_draws"]), "--readout-epochs", str(s["readout_epochs"])]
    if s["limit_train"]:
        argv += ["--limit-train", str(s["limit_train"])]
    return argv + argvs.data_flags(s) + argvs.common_flags(s)


def prune_step(s: dict[str, Any], train_id: str, snp_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn prune``: network ANDC beside ``random_draws`` random prunings."""
    from statmech_nn.pruning import prune_network, summary_lines

    child_id, result = prune_network(
        train_id,
        snp_run_id=snp_id,
        epochs=s["prune_epochs"],
        random_draws=s["random_draws"],
        device=demo.device_of(s),
        seed=s["seed"],
        tracking_uri=s["tracking_uri"],
        data_root=s["data_root"],
    )
    out(*summary_lines(result), child_id)
    return child_id


def scaling_step(s: dict[str, Any], train_id: str, out: Callable[..., None]) -> str:
    """``statmech-nn scaling``: error, SNR and cluster size against the number of labels K."""
    from statmech_nn import scaling

    child_id, result = scaling.for_run(
        train_id,
        ks=list(s["scaling_ks"]),
        draws=s["scaling_draws"],
        seed=s["seed"],
        limit_train=s["limit_train"],
        snp_options={
            "readout_epochs": s["readout_epochs"],
            "readout_options": {"lr": 0.01},
            "device": demo.device_of(s),
        },
        tracking_uri=s["tracking_uri"],
        data_root=s["data_root"],
    )
    for name in ("error", "snr", "cluster_size"):
        if f"{name}_slope" in result:
            slope, r2 = float(result[f"{name}_slope"]), float(result[f"{name}_r2"])
            out(f"{name}: slope {slope:.4g} per label (R² {r2:.3f})")
    out(child_id)
    return child_id


def run(settings: dict[str, Any], quiet: bool = False) -> FindingsResult:
    """Every step of the findings, in data-flow order; the findings run and the report last."""
    from statmech_nn.findings_collect import findings_argv, findings_step

    result = FindingsResult()
    out = (lambda *lines: None) if quiet else demo.print_lines
    s = settings

    def step(name: str, argv: list[str], work: Callable[[], str]) -> str:
        result.runs[name] = demo.run_step(result, name, argv, work)
        return result.runs[name]

    train_id = step("train", argvs.train_argv(s), lambda: demo.train_step(s, out))
    snp_id = step("snp", argvs.snp_argv(s, train_id), lambda: demo.snp_step(s, train_id, out))
    step("order", argvs.order_argv(s, snp_id), lambda: demo.order_step(s, snp_id, out))
    step("study", argvs.study_argv(s, snp_id), lambda: demo.study_step(s, snp_id, out))
    step("prune", prune_argv(s, train_id, snp_id), lambda: prune_step(s, train_id, snp_id, out))
    step("scaling", scaling_argv(s, train_id), lambda: scaling_step(s, train_id, out))
    step(
        "cooperation",
        argvs.cooperation_argv(s, snp_id),
        lambda: demo.cooperation_work(s, snp_id, out),
    )
    step(
        "findings",
        findings_argv(s, train_id),
        lambda: findings_step(s, train_id, result, out),
    )
    report_argv = ["report", train_id, *argvs.common_flags(s)]
    result.report_path = step("report", report_argv, lambda: demo.report_step(s, train_id, out))
    return result
