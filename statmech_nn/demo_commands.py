"""The ``statmech-nn`` command lines that the demo and the findings print for each step.

Each builder turns a demo's settings (:func:`statmech_nn.demo.plan`) into the argv that reruns
the step. Every analysis step reads the data from the demo's own ``--data-root``, so the printed
command names it too (:func:`data_flags`).
"""

from __future__ import annotations

from typing import Any

SNP_SITES = "mha,ff"
"""The site kinds the demo's SNP step reads (a preset's ``sites`` overrides it)."""


def common_flags(settings: dict[str, Any]) -> list[str]:
    """``--tracking-uri`` when the settings name one (every command takes it)."""
    return ["--tracking-uri", settings["tracking_uri"]] if settings["tracking_uri"] else []


def device_flags(s: dict[str, Any]) -> list[str]:
    """``--device D`` unless the settings leave the device automatic."""
    return [] if s["device"] == "auto" else ["--device", s["device"]]


def data_flags(s: dict[str, Any]) -> list[str]:
    """``--data-root DIR`` when the settings name one (training and every analysis take it)."""
    return ["--data-root", str(s["data_root"])] if s.get("data_root") else []


def limit_flags(s: dict[str, Any]) -> list[str]:
    """``--limit-train N`` / ``--limit-eval N`` where the settings set them."""
    argv = ["--limit-train", str(s["limit_train"])] if s["limit_train"] else []
    return argv + (["--limit-eval", str(s["limit_eval"])] if s["limit_eval"] else [])


def train_argv(s: dict[str, Any]) -> list[str]:
    argv = ["train", "--model", s["model"], "--dataset", s["dataset"]]
    if s.get("recipe"):
        argv += ["--recipe", s["recipe"]]
    argv += ["--epochs", str(s["epochs"]), "--checkpoint-every", str(s["checkpoint_every"])]
    argv += ["--batch-size", str(s["batch_size"]), "--seed", str(s["seed"])]
    if s.get("lr"):
        argv += ["--lr", str(s["lr"])]
    argv += data_flags(s) + limit_flags(s)
    argv += ["--device", s["device"], "--experiment", s["experiment"]]
    for flag, options in (("--model-option", "model_options"), ("--data-option", "data_options")):
        for key, value in s[options].items():
            argv += [flag, f"{key}={value}"]
    return argv + common_flags(s)


def snp_argv(s: dict[str, Any], run_id: str) -> list[str]:
    sites = s.get("sites", SNP_SITES)
    argv = ["snp", run_id, "--sites", sites, "--readout-epochs", str(s["readout_epochs"])]
    argv += limit_flags(s) + data_flags(s)
    return argv + device_flags(s) + ["--no-progress", *common_flags(s)]


def order_argv(s: dict[str, Any], snp_run_id: str) -> list[str]:
    argv = ["order", snp_run_id, "--over-checkpoints"]
    argv += ["--null-permutations", str(s["null_permutations"])]
    return argv + data_flags(s) + device_flags(s) + common_flags(s)


def study_argv(s: dict[str, Any], snp_run_id: str) -> list[str]:
    argv = ["study", "andc", snp_run_id, "--trials", str(s["trials"]), "--kind", "ff"]
    return argv + data_flags(s) + common_flags(s)


def cooperation_argv(s: dict[str, Any], snp_run_id: str) -> list[str]:
    argv = ["cooperation", snp_run_id, "--kind", "ff"]
    return argv + data_flags(s) + device_flags(s) + common_flags(s)
