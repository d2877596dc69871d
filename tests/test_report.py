"""The report's split of metrics into per-layer tables and scalars (no MLflow needed)."""

from __future__ import annotations

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
    assert report._scalars(metrics) == {"andc.accuracy": "0.9", "block3": "7"}
    columns, rows, table = report.layer_table(metrics)
    assert rows == list(cells) and columns == sorted({f for r in cells.values() for f in r})
    assert table[0][columns.index("order.Q")] == "0.5"
