"""One report section per analysis run, named by what tells it apart from its siblings."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import UTC, datetime

from statmech_nn.naming import KIND_TRIAL
from statmech_nn.report.kinds import caption, figure_rank, kind_rank, section_kind
from statmech_nn.report.tables import kv_table, layer_table_html, scalar_metrics
from statmech_nn.report.tree import PARENT_TAG, RunNode, descendants, png_artifacts


@dataclass
class Section:
    """A rendered section: its anchor, heading, HTML and the metric names its tables show."""

    anchor: str
    title: str
    html: str
    names: set[str] = field(default_factory=set)
    nav: str = ""
    """The name in the navigation (default: the title)."""


def started(node: RunNode) -> str:
    """The run's start as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.fromtimestamp(node.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def anchor_of(node: RunNode) -> str:
    return f"{node.kind}-{node.run_id}"


def _params(node: RunNode) -> dict[str, str]:
    parent = node.run.data.tags.get(PARENT_TAG, "")
    return {**node.run.data.params, "parent run": parent[:8]}


def _value(name: str, value: str) -> str:
    return f"{name} {value[:8] if name.endswith('run_id') else value}"


def distinguishing_labels(nodes: list[RunNode]) -> dict[str, str]:
    """``{run_id: "theta 0.4, objective pareto"}`` naming each of same-kind ``nodes`` by what
    differs between them (the kind's listed params first, then any other param, then the
    parent run, then the start time); empty labels when there is only one."""
    if len(nodes) < 2:
        return {n.run_id: "" for n in nodes}
    kind = section_kind(nodes[0].kind)
    params = [_params(n) for n in nodes]
    names = sorted({k for p in params for k in p})
    listed = [k for k in kind.distinguish if k in names] if kind else []
    ordered = listed + [k for k in names if k not in listed and k != "parent run"]
    ordered.append("parent run")
    differing = [k for k in ordered if len({p.get(k, "") for p in params}) > 1][:2]
    labels = {
        n.run_id: ", ".join(_value(k, p[k]) for k in differing if p.get(k))
        for n, p in zip(nodes, params, strict=True)
    }
    if len(set(labels.values())) < len(nodes):
        labels = {
            n.run_id: (labels[n.run_id] + ", " if labels[n.run_id] else "") + started(n)
            for n in nodes
        }
    return labels


def figure_html(text: str, data: bytes) -> str:
    """An embedded PNG with its caption."""
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(text)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{html.escape(text)}</figcaption></figure>"
    )


def section(node: RunNode, label: str, parents: dict[str, RunNode]) -> Section:
    """The HTML section of one analysis run."""
    kind = section_kind(node.kind)
    title = kind.title if kind else f"{node.kind} run"
    nav = kind.short if kind else title
    if label:
        title, nav = f"{title} ({label})", f"{nav} ({label})"
    run = node.run
    parent_id = run.data.tags.get(PARENT_TAG, "")
    parent = parents.get(parent_id)
    on = ""
    if parent is not None and parent.kind != "train":
        on = f' &middot; on the <a href="#{anchor_of(parent)}">{html.escape(parent.kind)} run'
        on += f" {parent_id[:8]}</a>"
    parts = [
        f'<section id="{html.escape(anchor_of(node))}">',
        f"<h2>{html.escape(title)}</h2>",
        f'<p class="meta">run <code>{node.run_id}</code> &middot; {html.escape(run.info.status)}'
        f" &middot; started {started(node)}{on}</p>",
    ]
    if kind and kind.text:
        parts.append(f"<p>{html.escape(kind.text)}</p>")
    table, names = layer_table_html(run.data.metrics)
    parts.append(table)
    scalars = scalar_metrics(run.data.metrics)
    if scalars:
        names |= set(scalars)
        parts.append(_details("metrics", kv_table(scalars, terms=True), open_=not table))
    if run.data.params:
        parts.append(_details("settings", kv_table(run.data.params)))
    if kind and kind.body:
        parts.append(kind.body(node))
    params = dict(run.data.params)
    for path, data in sorted(png_artifacts(node.run_id), key=lambda a: figure_rank(kind, a[0])):
        parts.append(figure_html(caption(kind, path, params), data))
    trials = [c for c in node.children if c.kind == KIND_TRIAL]
    if trials:
        parts.append(f"<p>{len(trials)} trial runs are nested under this study run in MLflow.</p>")
    parts.append("</section>")
    return Section(anchor_of(node), title, "\n".join(parts), names, nav)


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def analysis_sections(tree: RunNode) -> list[Section]:
    """A section per analysis run below the training run: by kind, newest first within one."""
    nodes = descendants(tree)
    parents = {tree.run_id: tree, **{n.run_id: n for n in nodes}}
    nodes.sort(key=lambda n: (kind_rank(n.kind), n.kind, -n.start_time))
    by_kind: dict[str, list[RunNode]] = {}
    for node in nodes:
        by_kind.setdefault(node.kind, []).append(node)
    labels: dict[str, str] = {}
    for same in by_kind.values():
        labels.update(distinguishing_labels(same))
    return [section(n, labels[n.run_id], parents) for n in nodes]
