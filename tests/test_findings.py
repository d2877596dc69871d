"""``statmech-nn findings``: settings checked up front, tables from collected numbers, and one
tiny end-to-end run whose every step lands in MLflow beside the findings run that reads them."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from statmech_nn import findings
from statmech_nn.errors import ConfigError
from statmech_nn.findings_tables import cooperation_table, depth_table, q_history_table
from statmech_nn.naming import KIND_FINDINGS, LAYERED_METRIC


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "tpu"}, "unknown findings preset"),
        ({"dataset": "mnist"}, "not 'mnist'"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"alignment_permutations": 0}, "--alignment-permutations must be >= 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        findings.plan(**kwargs)


def test_cli_bad_epochs_is_one_line(workdir, capsys, one_line_error):
    one_line_error(["findings", "--epochs", "0"], capsys, "--epochs must be >= 1")
    assert not (workdir / "mlruns" / "mlflow.db").exists()


def test_cifar100_drops_the_procedural_options_and_epochs_keep_checkpoints():
    settings = findings.plan("cpu", dataset="cifar100", epochs=8)
    assert settings["data_options"] == {}
    assert settings["epochs"] == 8 and 1 <= settings["checkpoint_every"] <= 2


def test_tables_pivot_the_metrics_by_block():
    found = {
        "snp": {
            "run_id": "s",
            "metrics": {"acc.readout.ff.block0": 0.5, "acc.readout.ff.block1": 0.7},
        },
        "order": {
            "run_id": "o",
            "metrics": {"order.Q.block1": 0.3, "order.Q_null_mean.block1": 0.1},
            "history": {
                "order.Q.block1": [[0, 0.05], [4, 0.3]],
                "order.Q_null_mean.block1": [[0, 0.04], [4, 0.1]],
            },
        },
        "cooperation": {
            "run_id": "c",
            "metrics": {
                "coop.acc.ff.n1.block0": 0.1,
                "coop.acc.ff.n8.block0": 0.4,
                "bound.max.ff.block0": 2.0,
            },
        },
    }
    depth = depth_table(found).splitlines()
    assert depth[0].startswith("| block | acc ff |") and "Q" in depth[0]
    assert depth[2].startswith("| block0 | 0.5 |") and depth[3].startswith("| block1 | 0.7 |")
    history = q_history_table(found).splitlines()
    assert history[2] == "| 0 | 0.05 (0.04) |" and history[3] == "| 4 | 0.3 (0.1) |"
    coop = cooperation_table(found)
    assert "| ff.block0 | acc | 0.1 | 0.4 |" in coop and "| block0 | 2 |" in coop


def test_alignment_metrics_follow_the_layered_naming():
    import xarray as xr

    from statmech_nn.findings_collect import alignment_metrics

    ds = xr.Dataset(
        {"cluster_purity": ("layer", [0.2, np.nan]), "cluster_pairs": ("layer", [4.0, 0.0])},
        coords={"layer": [0, 1]},
    )
    metrics = alignment_metrics({"ff": ds})
    assert metrics == {"align.cluster_purity.ff.block0": 0.2}
    assert LAYERED_METRIC.match(next(iter(metrics)))["label"] == "block0"


TINY = {
    "model": "cct_2_3x2_32",
    "epochs": 1,
    "checkpoint_every": 1,
    "batch_size": 32,
    "readout_epochs": 1,
    "null_permutations": 20,
    "trials": 3,
    "prune_epochs": 1,
    "random_draws": 1,
    "scaling_ks": (2, 6),
    "scaling_draws": 1,
    "alignment_permutations": 30,
    "model_options": {"num_heads": 2},
    "data_options": {"num_super": 3, "num_sub": 2, "n_train_per_class": 16, "n_test_per_class": 8},
}


@pytest.mark.slow
def test_a_tiny_findings_run_reads_every_step_it_ran(workdir, capsys):
    from statmech_nn.report import descendants, run_tree

    settings = {**findings.plan("cpu", device="cpu", out_dir=str(workdir / "out")), **TINY}
    result = findings.run(settings, quiet=True)
    capsys.readouterr()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    tree = run_tree(result.runs["train"])
    by_kind = {node.kind: node.run for node in descendants(tree)}
    assert {
        "snp",
        "order",
        "study",
        "andc-network",
        "scaling",
        "cooperation",
        KIND_FINDINGS,
    } <= set(by_kind)
    assert all(run.info.status == "FINISHED" for run in by_kind.values())

    found = json.loads((workdir / "out" / "findings.json").read_text())
    for kind in ("snp", "order", "study", "andc-network", "scaling", "cooperation"):
        assert found[kind]["run_id"] == by_kind[kind].info.run_id, kind
    assert found["findings_run_id"] == by_kind[KIND_FINDINGS].info.run_id
    # Every command before the findings step's own and the report's.
    assert len(found["commands"]) == 8 and found["commands"][0].startswith("statmech-nn train ")
    assert found["commands"][-1].startswith("statmech-nn findings --collect ")

    # The alignment metrics in MLflow are the ones in the JSON, one per kind, block and quantity.
    logged = by_kind[KIND_FINDINGS].data.metrics
    assert logged == pytest.approx(found["alignment"]["metrics"])
    assert {f"align.node_purity.{k}.block{b}" for k in ("mha", "ff") for b in (0, 1)} <= set(logged)
    assert found["alignment"]["chance"] == pytest.approx(3 * 2 * 1 / (6 * 5))

    tables = (workdir / "out" / "tables.md").read_text()
    assert "(not run)" not in tables
    for kind in ("snp", "order", "study", "scaling", "cooperation"):
        assert by_kind[kind].info.run_id in tables
    assert (workdir / "out" / "alignment.png").stat().st_size > 1000
