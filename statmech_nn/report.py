"""A self-contained HTML report of a training run and every analysis nested under it.

The report reads MLflow only: the training run's params and metric histories, and the metrics and
PNG figures of its ``snp``, ``order``, ``scaling`` and ``study`` descendants. Figures are embedded
as base64, so the single file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from statmech_nn.errors import TrackingError
from statmech_nn.naming import (
    KIND_ORDER,
    KIND_SCALING,
    KIND_SNP,
    KIND_STUDY,
    KIND_TAG,
    KIND_TRAIN,
    KIND_TRIAL,
    LAYERED_METRIC,
)

SECTION_ORDER = (KIND_SNP, KIND_ORDER, KIND_SCALING, KIND_STUDY)
SECTION_TITLES = {
    KIND_SNP: "Single-node matrices and readout accuracy along depth",
    KIND_ORDER: "Order parameters: clusters, noise, SNR and head symmetry breaking",
    KIND_SCALING: "Scaling with the number of labels",
    KIND_STUDY: "ANDC pruning: accuracy vs pruned fraction",
}
SECTION_TEXT = {
    KIND_SNP: (
        "A fresh linear readout is trained on each site of the frozen network; its test "
        "accuracy per block is the accuracy along the layers (METHODS.md section 3)."
    ),
    KIND_ORDER: (
        "Each node's labels x labels matrix is normalised by its maximum and binarised at theta. "
        "Clusters are the labels a node recognises together; noise the above-threshold elements "
        "outside the clusters; SNR their ratio. Q measures how far the MHA heads have specialised "
        "(0: all heads recognise the same labels; 1: every label has one expert head); the grey "
        "band is the null model of randomly permuted node-to-head assignments (mean +- std)."
    ),
    KIND_SCALING: (
        "Readouts of one site trained on random K-label subsets: error and SNR against K with "
        "their linear fits ([Universal])."
    ),
    KIND_STUDY: (
        "Optuna trials over the ANDC threshold: readout accuracy against the fraction of "
        "readout connections cut, with the random-pruning control at equal per-node counts."
    ),
}


@dataclass
class RunNode:
    """One MLflow run of the tree: its metadata, latest metrics and figures."""

    run: Any
    kind: str
    children: list[RunNode] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def run_tree(run_id: str) -> RunNode:
    """The run ``run_id`` with all its descendants (nested runs), newest first per level."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID as PARENT_TAG

    client = _client()
    try:
        root = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(f"no MLflow run {run_id!r} in the tracking store") from exc
        raise TrackingError(f"cannot read run {run_id!r}: {str(exc).splitlines()[0]}") from exc
    if root.data.tags.get(PARENT_TAG):
        raise TrackingError(
            f"run {run_id} is a child run ({root.data.tags.get(KIND_TAG, 'analysis')}); "
            f"report on its training run {root.data.tags[PARENT_TAG]}"
        )
    runs = client.search_runs(
        [root.info.experiment_id], filter_string="", max_results=5000, order_by=["start_time DESC"]
    )
    by_parent: dict[str, list[Any]] = {}
    for r in runs:
        parent = r.data.tags.get(PARENT_TAG)
        if parent:
            by_parent.setdefault(parent, []).append(r)

    def build(r: Any) -> RunNode:
        kind = r.data.tags.get(KIND_TAG) or r.info.run_name or "run"
        node = RunNode(r, kind if r.data.tags.get(PARENT_TAG) else KIND_TRAIN)
        node.children = [build(c) for c in by_parent.get(r.info.run_id, [])]
        return node

    return build(root)


def _png_artifacts(run_id: str) -> list[tuple[str, bytes]]:
    """All PNG artifacts of a run (path, bytes), in path order."""
    import mlflow

    client = _client()
    found: list[str] = []

    def walk(path: str | None) -> None:
        for item in client.list_artifacts(run_id, path):
            if item.is_dir:
                walk(item.path)
            elif item.path.endswith(".png"):
                found.append(item.path)

    walk(None)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(found):
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            out.append((path, Path(local).read_bytes()))
    return out


def by_layer(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``family.blockI`` metrics as ``{layer: {family: value}}``, layers in depth order."""
    cells: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        match = LAYERED_METRIC.match(name)
        if match:
            cells.setdefault(match["label"], {})[match["family"]] = value
    order = sorted(cells, key=lambda s: (re.sub(r"\d+", "", s), int(re.sub(r"\D", "", s))))
    return {layer: cells[layer] for layer in order}


def layer_table(metrics: dict[str, float]) -> tuple[list[str], list[str], list[list[str]]]:
    """Split ``family.blockI`` metrics into (columns, rows, cells): one row per layer."""
    cells = by_layer(metrics)
    columns = sorted({f for row in cells.values() for f in row})
    rows = list(cells)
    table = [[fmt(cells[r].get(c)) for c in columns] for r in rows]
    return columns, rows, table


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 1e300:
        return "inf"
    return f"{value:.4g}"


def _training_curve(run_id: str, folder: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    client = _client()
    series = {}
    for key in ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss"):
        history = client.get_metric_history(run_id, key)
        if history:
            points = sorted((m.step, m.value) for m in history)
            series[key] = points
    if not series:
        return None
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, points in series.items():
        ax = ax_acc if key.endswith("acc") else ax_loss
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=key)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy during training")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss during training")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(title: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    caption = html.escape(title)
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _table(columns: list[str], rows: list[str], cells: list[list[str]], corner: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [corner, *columns])
    body = "".join(
        "<tr><th>"
        + html.escape(r)
        + "</th>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in row)
        + "</tr>"
        for r, row in zip(rows, cells, strict=True)
    )
    return f'<table class="num"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(items.items())
    )
    return f'<table class="kv">{rows}</table>'


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def _scalars(metrics: dict[str, float]) -> dict[str, str]:
    return {k: fmt(v) for k, v in metrics.items() if not LAYERED_METRIC.match(k)}


def _section(node: RunNode, depth: int = 2) -> str:
    run = node.run
    title = SECTION_TITLES.get(node.kind, node.kind)
    parts = [
        f'<section id="{html.escape(node.kind)}-{node.run_id}">',
        f"<h{depth}>{html.escape(title)}</h{depth}>",
        f'<p class="meta">run <code>{node.run_id}</code> &middot; {html.escape(run.info.status)}'
        f" &middot; {html.escape(run.info.run_name or '')}</p>",
    ]
    if node.kind in SECTION_TEXT:
        parts.append(f"<p>{html.escape(SECTION_TEXT[node.kind])}</p>")
    columns, rows, cells = layer_table(run.data.metrics)
    if rows:
        parts.append(f'<div class="wide">{_table(columns, rows, cells, "layer")}</div>')
    scalars = _scalars(run.data.metrics)
    if scalars and node.kind != KIND_TRIAL:
        parts.append(
            "<details><summary>other metrics</summary>" + _kv_table(scalars) + "</details>"
        )
    if run.data.params:
        parts.append(
            "<details><summary>settings</summary>" + _kv_table(run.data.params) + "</details>"
        )
    for path, data in _png_artifacts(node.run_id):
        parts.append(_img(path, data))
    for child in node.children:
        if child.kind != KIND_TRIAL:
            parts.append(_section(child, min(depth + 1, 4)))
    trials = [c for c in node.children if c.kind == KIND_TRIAL]
    if trials:
        parts.append(f"<p>{len(trials)} trial runs are nested under this study run in MLflow.</p>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.2em .5em} table.num td{text-align:right}
thead th{background:#f4f4f4} table.kv th{text-align:left;font-weight:600;background:#fafafa}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8em;color:#666} .meta{color:#666;font-size:.9em}
nav ul{columns:2} details{margin:.4em 0} div.wide{overflow-x:auto}
"""


def render(tree: RunNode, tracking_uri: str) -> str:
    """The HTML text of the report for a run tree."""
    run = tree.run
    params = run.data.params
    with tempfile.TemporaryDirectory() as tmp:
        curve = _training_curve(tree.run_id, Path(tmp))
        curve_html = _img("training curves", curve.read_bytes()) if curve else ""
    rank = {kind: i for i, kind in enumerate(SECTION_ORDER)}
    children = sorted(tree.children, key=lambda c: rank.get(c.kind, len(rank)))
    sections = [_section(c) for c in children]
    nav = "".join(
        f'<li><a href="#{html.escape(c.kind)}-{c.run_id}">'
        f"{html.escape(SECTION_TITLES.get(c.kind, c.kind))}</a></li>"
        for c in children
    )
    final = {k: fmt(v) for k, v in run.data.metrics.items()}
    model = params.get("model", run.data.tags.get("model", "?"))
    dataset = params.get("dataset", run.data.tags.get("dataset", "?"))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>statmech-nn report: {html.escape(model)} on {html.escape(dataset)}</title>
<style>{STYLE}</style></head>
<body>
<h1>statmech-nn report: {html.escape(model)} on {html.escape(dataset)}</h1>
<p class="meta">training run <code>{tree.run_id}</code> ({html.escape(run.info.run_name or "")},
{html.escape(run.info.status)}) &middot; tracking store <code>{html.escape(tracking_uri)}</code>
&middot; generated {generated}</p>
<p>Single-nodal-performance analysis after Koresh et al., "Unified CNNs and transformers
underlying learning mechanism reveals multi-head attention modus vivendi", Physica A 666 (2025)
130529. Browse every run with
<code>mlflow ui --backend-store-uri {html.escape(tracking_uri)}</code>.</p>
<nav><ul>{nav}</ul></nav>
<h2>Training</h2>
{curve_html}
<details open><summary>final metrics</summary>{_kv_table(final)}</details>
<details><summary>configuration</summary>{_kv_table(params)}</details>
{"".join(sections) or "<p>No analysis runs yet: run <code>statmech-nn snp RUN_ID</code>.</p>"}
</body></html>
"""


def write_report(
    run_id: str, out: str | Path | None = None, tracking_uri: str | None = None, log: bool = True
) -> Path:
    """Write the report of training run ``run_id`` to ``out`` (default ``reports/<run>.html``).

    With ``log`` the file is also logged to the training run as ``report/report.html``.
    """
    from statmech_nn import tracking

    uri = tracking.check_store(tracking_uri)
    tree = run_tree(run_id)
    text = render(tree, uri)
    path = Path(out) if out else Path("reports") / f"{run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    if log:
        with tempfile.TemporaryDirectory() as tmp_dir:
            logged = Path(tmp_dir) / "report.html"
            logged.write_text(text, encoding="utf-8")
            _client().log_artifact(run_id, str(logged), "report")
    return path
