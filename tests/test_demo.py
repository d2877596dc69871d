"""The main job end to end on a tiny configuration: every artifact exists and loads."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

from statmech_nn import load_snp
from statmech_nn.cli import main
from statmech_nn.report import run_tree


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self._in_heading = tag in ("h1", "h2", "h3")

    def handle_data(self, data):
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
            self._in_heading = False


def _unlabelled(fig) -> list[str]:
    """What a paper figure would lack: per plotting axes an x label (in a grid of panels: on
    its bottom row) and a y label (on its left column), a title (or the figure's), per colour
    bar a label."""
    missing = []
    titled = bool(fig._suptitle and fig._suptitle.get_text())
    for index, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.has_data():
            continue
        colorbar = getattr(ax, "_colorbar", None)
        if colorbar is not None:
            if not (ax.get_ylabel() or ax.get_xlabel()):
                missing.append(f"axes {index}: colour bar without a label")
            continue
        spec = ax.get_subplotspec()
        needs_x = spec is None or spec.is_last_row() or not _panel_below(fig, ax)
        needs_y = spec is None or spec.is_first_col()
        for what, text, needed in (
            ("x label", ax.get_xlabel(), needs_x),
            ("y label", ax.get_ylabel(), needs_y),
        ):
            if needed and not text:
                missing.append(f"axes {index} ({ax.get_title()}): no {what}")
        if not (ax.get_title() or titled):
            missing.append(f"axes {index}: no title")
    return missing


def _panel_below(fig, ax) -> bool:
    """Whether another drawn panel of ``ax``'s grid sits in the same column below it."""
    spec = ax.get_subplotspec()
    for other in fig.axes:
        theirs = other.get_subplotspec()
        if other is ax or theirs is None or not other.has_data():
            continue
        same_grid = theirs.get_gridspec() is spec.get_gridspec()
        below = theirs.rowspan.start > spec.rowspan.start
        if same_grid and theirs.colspan == spec.colspan and below:
            return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_pipeline_logs_every_artifact(workdir, capsys, monkeypatch):
    from statmech_nn import cooperation_figures, figures

    saved: dict[str, list[str]] = {}
    save = figures.save_figure

    def checked_save(fig, path):
        saved[Path(path).name] = _unlabelled(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", checked_save)
    monkeypatch.setattr(cooperation_figures, "save_figure", checked_save)
    argv = ["demo", "--epochs", "1", "--trials", "4", "--readout-epochs", "1"]
    argv += ["--limit-train", "192", "--limit-eval", "96", "--device", "cpu"]
    assert main(argv) == 0
    assert len(saved) >= 6, saved  # every figure of the demo passes through save_figure
    assert {name: gaps for name, gaps in saved.items() if gaps} == {}
    out = capsys.readouterr().out
    train_run = out.strip().splitlines()[-1]

    assert (workdir / "mlruns" / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    tree = run_tree(train_run)
    kinds = {child.kind: child for child in tree.children}
    assert {"snp", "order"} <= set(kinds)
    assert all(c.run.info.status == "FINISHED" for c in tree.children)

    # The SNP tensor: every mha and ff site of both blocks, normalised matrices.
    ds = load_snp(train_run)
    assert set(ds.attrs["sites"]) == {"block0.mha", "block1.mha", "block0.ff", "block1.ff"}
    for kind in ("mha", "ff"):
        values = ds[f"snp_{kind}"].values
        assert values.shape[:2] == (2, 128)
        assert np.nanmax(values) <= 1.0 + 1e-6
        assert np.all(np.isclose(np.nanmax(values, axis=(2, 3)), 1.0) | (values == 0).all((2, 3)))

    # Order parameters logged per block, Q over the checkpoints of training (epoch 0 and 1).
    order_run = kinds["order"].run
    for block in ("block0", "block1"):
        assert 0.0 <= order_run.data.metrics[f"order.Q.{block}"] <= 1.0
        assert f"snr.ff.{block}" in order_run.data.metrics
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(order_run.info.run_id, "order.Q.block1")
    assert sorted({m.step for m in history}) == [0, 1]

    # The ANDC study is a real Optuna study in the journal file, nested under the SNP run.
    study_runs = [c for c in kinds["snp"].children if c.kind == "study"]
    assert len(study_runs) == 1
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "mlruns" / "optuna.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4
    assert len(study.directions) == 2

    # The report: one HTML file whose figures are embedded PNGs, logged to the training run.
    report_path = Path(re.search(r"report: (\S+\.html)", out).group(1))
    parser = _Images()
    parser.feed(report_path.read_text(encoding="utf-8"))
    assert len(parser.sources) >= 6
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("ANDC" in h for h in parser.headings)
    logged = client.list_artifacts(train_run, "report")
    assert [a.path for a in logged] == ["report/report.html"]
