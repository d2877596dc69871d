"""The report section of a ``cooperation`` run: an HTML fragment from its metrics and figures.

:func:`cooperation_section` reads MLflow only (the run's params, its ``coop.*`` / ``bound.*``
metrics and its PNG figures, embedded as base64 so the report stays one file).
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path
from typing import Any

from statmech_nn.cooperation_store import BOUND_METRIC, CHANCE_METRIC, CURVE_METRIC
from statmech_nn.naming import LAYERED_METRIC, layer_order

TITLE = "Node cooperation and the single-node bound"
TEXT = (
    "For each subset size n, random node subsets of a site each get their own readout, trained "
    "on those nodes only; A(n) is its test accuracy (mean and spread over draws) beside the "
    "random guess 1/L. The labels a subset recognises (its own diagonal above theta) are "
    "compared with the union of its members' single-node labels D_n: the excess is "
    "cooperation. Per node, the bound counts the labels it can ever output on its own (the "
    "extreme points of its label weights; docs/methods.md section 11), beside |D_n|."
)


def curve_rows(metrics: dict[str, float]) -> dict[tuple[str, int], dict[str, float]]:
    """``{(layer label, n): {stat: value}}`` from the ``coop.*`` metrics of a run."""
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for name, value in metrics.items():
        layered = LAYERED_METRIC.match(name)
        found = CURVE_METRIC.match(layered.group("family")) if layered else None
        if layered and found:
            key = (layered.group("label"), int(found.group("n")))
            rows.setdefault(key, {})[found.group("stat")] = float(value)
    return rows


def bound_rows(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{layer label: {labels, max, diag}}`` from the ``bound.*`` metrics of a run."""
    rows: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        layered = LAYERED_METRIC.match(name)
        found = BOUND_METRIC.match(layered.group("family")) if layered else None
        if layered and found:
            rows.setdefault(layered.group("label"), {})[found.group("stat")] = float(value)
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _table(head: list[str], body: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f'<table class="num"><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>'


def _curve_table(metrics: dict[str, float]) -> str:
    rows = curve_rows(metrics)
    if not rows:
        return ""
    body = []
    for layer, n in sorted(rows, key=lambda k: (layer_order(k[0]), k[1])):
        r = rows[(layer, n)]
        acc = f"{_fmt(r.get('acc'))} ± {_fmt(r.get('acc_std'), 2)}"
        stats = [r.get(s) for s in ("labels", "union", "gain", "new")]
        body.append([layer, str(n), acc, *(_fmt(v) for v in stats)])
    head = ["layer", "n", "A(n)", "recognised", "union of D_n", "gain", "new labels"]
    return _table(head, body)


def _bound_table(metrics: dict[str, float]) -> str:
    rows = bound_rows(metrics)
    if not rows:
        return ""
    body = [
        [layer, _fmt(r.get("labels")), _fmt(r.get("max")), _fmt(r.get("diag"))]
        for layer, r in sorted(rows.items(), key=lambda kv: layer_order(kv[0]))
    ]
    head = ["layer", "labels a node can output (mean)", "(max)", "|D_n| (mean)"]
    return _table(head, body)


def _figures(run_id: str) -> list[tuple[str, bytes]]:
    """The run's PNG figures under ``figures/`` as ``(path, bytes)``, in path order."""
    import mlflow
    from mlflow.tracking import MlflowClient

    paths = sorted(
        f.path for f in MlflowClient().list_artifacts(run_id, "figures") if f.path.endswith(".png")
    )
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            out.append((path, Path(local).read_bytes()))
    return out


def _img(title: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    caption = html.escape(title)
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def cooperation_section(run: Any, depth: int = 3) -> str:
    """The HTML fragment of one ``cooperation`` MLflow run (an ``mlflow.entities.Run``)."""
    run_id = run.info.run_id
    params, metrics = dict(run.data.params), dict(run.data.metrics)
    settings = ", ".join(
        f"{k} = {params[k]}"
        for k in ("kind", "sizes", "draws", "within_head", "theta")
        if k in params
    )
    chance = metrics.get(CHANCE_METRIC)
    parts = [
        f'<section id="cooperation-{html.escape(run_id)}">',
        f"<h{depth}>{html.escape(TITLE)}</h{depth}>",
        f'<p class="meta">run <code>{html.escape(run_id)}</code> &middot; '
        f"{html.escape(run.info.status)} &middot; {html.escape(settings)}</p>",
        f"<p>{html.escape(TEXT)}</p>",
    ]
    if chance is not None:
        parts.append(f"<p>Random guess 1/L = {_fmt(chance)}.</p>")
    for table in (_curve_table(metrics), _bound_table(metrics)):
        if table:
            parts.append(f'<div class="wide">{table}</div>')
    parts.extend(_img(path, data) for path, data in _figures(run_id))
    parts.append("</section>")
    return "\n".join(parts)
