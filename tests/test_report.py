"""The report's split of metrics into per-layer tables and scalars (no MLflow needed)."""

from __future__ import annotations

import pytest

from statmech_nn import report


def test_layer_metrics_go_to_the_layer_table_and_the_rest_are_scalars():
    metrics = {
        "snr.ff.block1": 1.0,
        "snr.ff.block0": 2.0,
        "order.Q.block0": 0.5,
        "acc.readout.module.layer2": 0.75,
        "acc.readout.conv.conv10": 0.25,
        "andc.accuracy": 0.9,
        "block3": 7.0,
    }
    cells = report.by_layer(metrics)
    assert cells == {
        "block0": {"snr.ff": 2.0, "order.Q": 0.5},
        "block1": {"snr.ff": 1.0},
        "conv10": {"acc.readout.conv": 0.25},
        "layer2": {"acc.readout.module": 0.75},
    }
    assert list(cells) == ["block0", "block1", "conv10", "layer2"]
    assert report.scalar_metrics(metrics) == {"andc.accuracy": "0.9", "block3": "7"}
    columns, rows, table = report.layer_table(metrics)
    assert rows == list(cells) and set(columns) == {f for r in cells.values() for f in r}
    assert table[0][columns.index("order.Q")] == "0.5"


def test_layer_table_groups_columns_by_site_kind_snr_first_head_symmetry_last():
    metrics = {
        f"{family}.{kind}.block0": 1.0
        for family in ("noise", "snr", "signal", "clusters")
        for kind in ("mha", "ff")
    }
    metrics |= {"order.Q.block0": 0.1, "order.Q_null_mean.block0": 0.05}
    columns, _, _ = report.layer_table(metrics)
    groups = [report.tables.split_family(c)[0] for c in columns]
    assert groups == sorted(groups, key=lambda g: (g == "heads", g))  # each kind contiguous
    for kind in ("ff", "mha"):
        mine = [c for c in columns if c.endswith("." + kind)]
        assert mine[0] == f"snr.{kind}"
    assert columns[-2:] == ["order.Q", "order.Q_null_mean"]
    html, names = report.layer_table_html(metrics)
    assert html.count("<table") == 2 and names == set(columns)  # head symmetry its own table


def test_glossary_covers_the_metric_names_the_analyses_write():
    from statmech_nn.order.metrics import Q_METRICS, SITE_METRICS

    families = [f"{f}.ff" for f in (*SITE_METRICS, "snr", "acc.readout")]
    families += [f"order.{name}" for name in Q_METRICS]
    assert all(report.term_of(f) is not None for f in families)
    shorts = [report.term_of(f).short for f in families]
    assert len(set(shorts)) == len(shorts)  # no two columns look alike


def test_q_axis_fits_the_effect_and_its_null_band():
    from statmech_nn.figures import q_limits

    lo, hi = q_limits([0.02, 0.03], [0.01, 0.012], [0.025, 0.028])
    assert 0.0 <= lo <= 0.01 and 0.03 <= hi < 0.2  # not squeezed into a 0..1 axis
    assert q_limits([0.9], [0.1], [0.2]) == pytest.approx((0.02, 0.98))


def test_captions_say_what_is_shown_with_the_run_settings():
    kind = report.section_kind("order")
    text = report.caption(kind, "figures/gallery_mha.png", {"theta": "0.4"})
    assert "mha nodes" in text and "theta = 0.4" in text and ".png" not in text
    assert report.caption(None, "figures/some_plot.png", {}) == "Some plot."


def test_layers_are_in_depth_order_everywhere_they_are_sorted():
    """``block10`` after ``block2`` (not as strings), in the report's tables and cooperation's."""
    import re

    from statmech_nn import cooperation_report
    from statmech_nn.report.tables import by_layer

    metrics = {f"snr.ff.block{i}": float(i) for i in (10, 2, 0, 1)} | {"snr.ff.conv3": 3.0}
    assert list(by_layer(metrics)) == ["block0", "block1", "block2", "block10", "conv3"]
    curve = {f"coop.{s}.ff.n{n}.block{i}": 0.5 for i in (10, 2) for n in (4, 1) for s in ("acc",)}
    html = cooperation_report._curve_table(curve)
    rows = re.findall(r"<tr><td>(block\d+)</td><td>(\d+)</td>", html)
    assert rows == [("block2", "1"), ("block2", "4"), ("block10", "1"), ("block10", "4")], html


def test_an_artifact_a_step_did_not_write_reads_as_absent_but_a_lost_store_raises(
    workdir, monkeypatch
):
    import mlflow
    from mlflow.exceptions import MlflowException

    from statmech_nn.report.tree import json_artifact

    with mlflow.start_run() as run:
        mlflow.log_dict({"a": [1, 2]}, "step/result.json")
    assert json_artifact(run.info.run_id, "step/result.json") == {"a": [1, 2]}
    assert json_artifact(run.info.run_id, "step/missing.json") is None

    def unreachable(**_):
        raise MlflowException("API request failed: connection refused", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", unreachable)
    with pytest.raises(MlflowException, match="connection refused"):
        json_artifact(run.info.run_id, "step/result.json")
