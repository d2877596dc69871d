"""The report on a hand-built MLflow run tree: paged walk by parent, unambiguous sections."""

from __future__ import annotations

import io
from html.parser import HTMLParser

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from statmech_nn import report  # noqa: E402
from statmech_nn.naming import KIND_ORDER, KIND_SNP, KIND_STUDY, KIND_TAG, KIND_TRIAL  # noqa: E402
from statmech_nn.report import tree as tree_module  # noqa: E402

T0 = 1_700_000_000_000

pytestmark = pytest.mark.slow  # MLflow runs end to end


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.nav: list[str] = []
        self.captions: list[str] = []
        self.ids: set[str] = set()
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        if dict(attrs).get("id"):
            self.ids.add(dict(attrs)["id"])

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data):
        if not data.strip() or not self._stack:
            return
        if self._stack[-1] == "h2":
            self.headings.append(data.strip())
        elif self._stack[-1] == "a" and "nav" in self._stack:
            self.nav.append(data.strip())
        elif self._stack[-1] == "figcaption":
            self.captions.append(data.strip())


def _png() -> bytes:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@pytest.fixture
def store(workdir):
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.create_experiment("t", artifact_location=(workdir / "art").as_uri())

    def make(parent, kind, minute, params=None, metrics=None):
        tags = {KIND_TAG: kind} if kind else {}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(exp, start_time=T0 + minute * 60_000, tags=tags)
        rid = run.info.run_id
        client.log_batch(
            rid,
            metrics=[Metric(k, v, T0, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )
        client.set_terminated(rid)
        return rid

    train = make(None, None, 0, {"model": "m", "dataset": "d"}, {"test_acc": 0.5})
    snp = make(train, KIND_SNP, 1, {"readout": "seqpool"}, {"acc.readout.ff.block0": 0.4})
    layer = {"snr.ff.block0": 1.5, "noise.ff.block0": 2.0, "order.Q.block0": 0.2}
    old = make(train, KIND_ORDER, 2, {"theta": 0.3, "seed": 0}, layer)
    new = make(train, KIND_ORDER, 5, {"theta": 0.4, "seed": 0}, layer)
    (workdir / "figures").mkdir()
    (workdir / "figures" / "depth.png").write_bytes(_png())
    client.log_artifact(new, str(workdir / "figures" / "depth.png"), "figures")
    study_a = make(snp, KIND_STUDY, 3, {"objective": "pareto", "kind": "ff"}, {"andc.accuracy": 1})
    study_b = make(snp, KIND_STUDY, 4, {"objective": "pareto", "kind": "ff"}, {"andc.accuracy": 1})
    trials = [make(study_a, KIND_TRIAL, 3, {"theta": 0.1 * i}) for i in range(5)]
    return {"train": train, "orders": (old, new), "studies": (study_a, study_b), "trials": trials}


def test_tree_reads_every_child_page_by_page(store, monkeypatch):
    monkeypatch.setattr(tree_module, "PAGE_SIZE", 2)
    calls = []
    original = tree_module.child_runs

    def counting(client, experiment, parent):
        calls.append(parent)
        return original(client, experiment, parent)

    monkeypatch.setattr(tree_module, "child_runs", counting)
    tree = report.run_tree(store["train"])
    (snp,) = [c for c in tree.children if c.kind == KIND_SNP]
    study = next(c for c in snp.children if c.run_id == store["studies"][0])
    assert sorted(c.run_id for c in study.children) == sorted(store["trials"])
    assert [c.run_id for c in tree.children if c.kind == KIND_ORDER] == list(
        reversed(store["orders"])
    )
    assert not set(store["trials"]) & set(calls)  # trials are leaves: never searched below


def test_sections_are_named_by_what_differs_newest_first(store):
    text = report.render(report.run_tree(store["train"]), "sqlite:///x")
    page = _Page()
    page.feed(text)
    assert len(page.headings) == len(set(page.headings))
    assert len(page.nav) == len(set(page.nav))
    orders = [h for h in page.headings if h.startswith("Order parameters")]
    assert len(orders) == 2
    assert "theta 0.4" in orders[0] and "theta 0.3" in orders[1]
    studies = [h for h in page.headings if h.startswith("ANDC")]
    assert len(studies) == 2 and all("UTC" in h for h in studies)
    assert studies[0] > studies[1]  # same params: told apart by start time, newest first
    assert any(n.startswith("ANDC pruning study") for n in page.nav)  # the study in the nav
    assert "Glossary of metrics" in page.nav
    terms = {report.term_of(n) for n in ("snr.ff", "noise.ff", "order.Q", "andc.accuracy")}
    assert {report.glossary.anchor(t) for t in terms} <= page.ids
    assert page.captions and not any(c.endswith(".png") for c in page.captions)
    assert any("SNR" in c and "theta = 0.4" in c for c in page.captions)
