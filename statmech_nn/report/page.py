"""The report page: the training section, every analysis section, navigation and a glossary."""

from __future__ import annotations

import html
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from statmech_nn.fileio import atomic_write_text
from statmech_nn.report.glossary import glossary_html
from statmech_nn.report.sections import Section, analysis_sections, figure_html
from statmech_nn.report.tables import fmt, kv_table
from statmech_nn.report.tree import RunNode, metric_histories, run_tree, tracking_client

CURVES = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss")

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.2em .45em} table.num td{text-align:right}
table.num td.start{border-left:2px solid #999} th.group{border-left:2px solid #999}
thead th{background:#f4f4f4} table.kv th{text-align:left;font-weight:600;background:#fafafa}
a.term{color:inherit;text-decoration:underline dotted}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:60em} .meta{color:#666;font-size:.9em}
nav ol{padding-left:1.4em} details{margin:.4em 0} div.wide{overflow-x:auto}
dl.glossary dt{font-weight:600;margin-top:.5em} dl.glossary dd{margin-left:1.5em}
"""


def _histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    return metric_histories(run_id, list(CURVES))


def training_section(tree: RunNode) -> Section:
    """Training curves, final metrics and configuration of the training run."""
    from statmech_nn import figures

    run = tree.run
    parts = [
        '<section id="training">',
        "<h2>Training</h2>",
        f'<p class="meta">run <code>{tree.run_id}</code> ({html.escape(run.info.run_name or "")}'
        f", {html.escape(run.info.status)})</p>",
    ]
    series = _histories(tree.run_id)
    if series:
        with tempfile.TemporaryDirectory() as tmp:
            path = figures.training_curves(series, Path(tmp) / "training.png")
            parts.append(
                figure_html(
                    "Accuracy (left) and cross-entropy loss (right) of the network on its "
                    "training, validation and test splits after each epoch.",
                    path.read_bytes(),
                )
            )
    final = {k: fmt(v) for k, v in run.data.metrics.items()}
    parts.append(
        f"<details open><summary>final metrics</summary>{kv_table(final, terms=True)}</details>"
    )
    parts.append(f"<details><summary>configuration</summary>{kv_table(run.data.params)}</details>")
    parts.append("</section>")
    return Section("training", "Training", "\n".join(parts), set(final))


def _nav(sections: list[Section]) -> str:
    items = "".join(
        f'<li><a href="#{html.escape(s.anchor)}">{html.escape(s.nav or s.title)}</a></li>'
        for s in sections
    )
    return f"<nav><ol>{items}</ol></nav>"


def render(tree: RunNode, tracking_uri: str) -> str:
    """The HTML text of the report for a run tree."""
    run = tree.run
    params = run.data.params
    analyses = analysis_sections(tree)
    sections = [training_section(tree), *analyses]
    names = set().union(*(s.names for s in sections))
    glossary = glossary_html(names)
    nav_sections = sections + ([Section("glossary", "Glossary of metrics", "")] if glossary else [])
    model = params.get("model", run.data.tags.get("model", "?"))
    dataset = params.get("dataset", run.data.tags.get("dataset", "?"))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    empty = (
        ""
        if analyses
        else ("<p>No analysis runs yet: run <code>statmech-nn snp RUN_ID</code>.</p>")
    )
    glossary_part = (
        f'<section id="glossary"><h2>Glossary of metrics</h2>{glossary}</section>'
        if glossary
        else ""
    )
    title = f"statmech-nn report: {html.escape(model)} on {html.escape(dataset)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<p class="meta">training run <code>{tree.run_id}</code> &middot; tracking store
<code>{html.escape(tracking_uri)}</code> &middot; generated {generated}</p>
<p>Single-nodal-performance analysis after Koresh et al., "Unified CNNs and transformers
underlying learning mechanism reveals multi-head attention modus vivendi", Physica A 666 (2025)
130529; every quantity is defined in the project's docs/methods.md. Browse every run with
<code>mlflow ui --backend-store-uri {html.escape(tracking_uri)}</code>.</p>
{_nav(nav_sections)}
{"".join(s.html for s in sections)}
{empty}
{glossary_part}
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
    text = render(run_tree(run_id), uri)
    path = Path(out) if out else Path("reports") / f"{run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    if log:
        with tempfile.TemporaryDirectory() as tmp_dir:
            logged = Path(tmp_dir) / "report.html"
            logged.write_text(text, encoding="utf-8")
            tracking_client().log_artifact(run_id, str(logged), "report")
    return path
