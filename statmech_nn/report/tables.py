"""Metric tables of the report: per-layer metrics grouped by site kind, and scalar metrics."""

from __future__ import annotations

import html
from typing import Any

from statmech_nn.naming import LAYERED_METRIC, layer_order
from statmech_nn.report.glossary import header

QUANTITY_ORDER = (
    "snr",
    "acc.readout",
    "signal",
    "noise",
    "clusters",
    "cluster_size",
    "order.Q",
    "order.Q_null_mean",
    "order.Q_null_std",
    "order.Q_z",
    "order.Q_pvalue",
    "order.owned_fraction",
    "order.jaccard",
)
"""Column order within a group: SNR, the headline, first."""

HEADS_GROUP = "heads"
"""The group of the head-symmetry metrics (``order.*``), which carry no site kind."""


def fmt(value: float | None) -> str:
    """A metric value in four significant digits ("inf" for the infinite-SNR sentinel)."""
    if value is None:
        return ""
    if abs(value) >= 1e300:
        return "inf"
    return f"{value:.4g}"


def by_layer(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``family.blockI`` metrics as ``{layer: {family: value}}``, layers in depth order."""
    cells: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        match = LAYERED_METRIC.match(name)
        if match:
            cells.setdefault(match["label"], {})[match["family"]] = value
    order = sorted(cells, key=layer_order)
    return {layer: cells[layer] for layer in order}


def split_family(family: str) -> tuple[str, str]:
    """``snr.ff`` -> (``ff``, ``snr``); ``order.Q`` -> (``heads``, ``order.Q``)."""
    if family.startswith("order."):
        return HEADS_GROUP, family
    for quantity in sorted(QUANTITY_ORDER, key=len, reverse=True):
        if family.startswith(quantity + "."):
            return family[len(quantity) + 1 :], quantity
    quantity, _, group = family.rpartition(".")
    return (group, quantity) if quantity else ("", family)


def _column_key(family: str) -> tuple[int, str, int, str]:
    group, quantity = split_family(family)
    rank = QUANTITY_ORDER.index(quantity) if quantity in QUANTITY_ORDER else len(QUANTITY_ORDER)
    return (group == HEADS_GROUP, group, rank, quantity)


def layer_table(metrics: dict[str, float]) -> tuple[list[str], list[str], list[list[str]]]:
    """Split ``family.blockI`` metrics into (columns, rows, cells): one row per layer.

    Columns are grouped by site kind (``ff``, ``mha``, ..., the head symmetry last), SNR first.
    """
    cells = by_layer(metrics)
    columns = sorted({f for row in cells.values() for f in row}, key=_column_key)
    rows = list(cells)
    table = [[fmt(cells[r].get(c)) for c in columns] for r in rows]
    return columns, rows, table


def group_title(group: str) -> str:
    if group == HEADS_GROUP:
        return "head symmetry (mha)"
    return f"{group} sites" if group else ""


def layer_table_html(metrics: dict[str, float]) -> tuple[str, set[str]]:
    """The per-layer tables and the metric families they show.

    One table of the site kinds side by side (a header row of kinds over quantities, SNR first)
    and, below it, one of the head symmetry, so that neither is wider than the page.
    """
    columns, rows, cells = layer_table(metrics)
    if not rows:
        return "", set()
    heads = [i for i, c in enumerate(columns) if split_family(c)[0] == HEADS_GROUP]
    sites = [i for i in range(len(columns)) if i not in heads]
    tables = [
        _grouped_table([columns[i] for i in part], rows, [[row[i] for i in part] for row in cells])
        for part in (sites, heads)
        if part
    ]
    return "".join(tables), set(columns)


def _grouped_table(columns: list[str], rows: list[str], cells: list[list[str]]) -> str:
    groups: list[tuple[str, int]] = []
    for column in columns:
        group = split_family(column)[0]
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    top = "".join(
        f'<th colspan="{n}" class="group">{html.escape(group_title(g))}</th>' for g, n in groups
    )
    second = "".join(f"<th>{header(c)}</th>" for c in columns)
    starts = {sum(n for _, n in groups[:i]) for i in range(len(groups))}
    body = "".join(
        f"<tr><th>{html.escape(r)}</th>"
        + "".join(
            f"<td{' class=start' if i in starts else ''}>{html.escape(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for r, row in zip(rows, cells, strict=True)
    )
    return (
        '<div class="wide"><table class="num"><thead>'
        f'<tr><th rowspan="2">layer</th>{top}</tr><tr>{second}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def scalar_metrics(metrics: dict[str, float]) -> dict[str, str]:
    """The metrics that are not per layer, formatted."""
    return {k: fmt(v) for k, v in metrics.items() if not LAYERED_METRIC.match(k)}


def kv_table(items: dict[str, Any], terms: bool = False) -> str:
    """A two-column name/value table; with ``terms`` the names link to the glossary."""
    rows = "".join(
        f"<tr><th>{header(str(k), str(k)) if terms else html.escape(str(k))}</th>"
        f"<td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(items.items())
    )
    return f'<table class="kv">{rows}</table>'
