"""Markdown tables and the alignment figure of a findings run (pure: the collected dict in)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from statmech_nn.cooperation_store import CHANCE_METRIC, CURVE_METRIC
from statmech_nn.naming import LAYERED_METRIC, layer_order
from statmech_nn.report.tables import by_layer, fmt

DEPTH_COLUMNS = (
    ("acc mha", "acc.readout.mha"),
    ("acc ff", "acc.readout.ff"),
    ("acc ff_hidden", "acc.readout.ff_hidden"),
    ("SNR mha", "snr.mha"),
    ("SNR ff", "snr.ff"),
    ("noise ff", "noise.ff"),
    ("cluster size ff", "cluster_size.ff"),
    ("clusters ff", "clusters.ff"),
    ("Q", "order.Q"),
    ("Q null", "order.Q_null_mean"),
    ("p(Q)", "order.Q_pvalue"),
)
"""The per-block columns of the depth table: (heading, metric family)."""

ALIGN_COLUMNS = (
    ("cluster purity", "align.cluster_purity"),
    ("null", "align.cluster_null_mean"),
    ("p", "align.cluster_pvalue"),
    ("node purity", "align.node_purity"),
    ("null", "align.node_null_mean"),
    ("p", "align.node_pvalue"),
)


def table(rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first row is the heading."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _metrics(found: Mapping[str, Any], kind: str) -> dict[str, float]:
    return dict(found.get(kind, {}).get("metrics", {}))


def _run(found: Mapping[str, Any], kind: str) -> str:
    return str(found.get(kind, {}).get("run_id", "(not run)"))


def depth_table(found: Mapping[str, Any]) -> str:
    """Accuracy, SNR, noise, cluster size and Q with its null, per block."""
    layers = by_layer({**_metrics(found, "snp"), **_metrics(found, "order")})
    columns = [c for c in DEPTH_COLUMNS if any(c[1] in v for v in layers.values())]
    rows = [["block", *[c[0] for c in columns]]]
    rows += [[layer, *[fmt(v.get(key)) for _, key in columns]] for layer, v in layers.items()]
    return table(rows)


def q_history_table(found: Mapping[str, Any]) -> str:
    """Q and its null mean per checkpoint epoch and block."""
    history = found.get("order", {}).get("history", {})
    q = {
        name.rsplit(".", 1)[1]: dict(v)
        for name, v in history.items()
        if name.startswith("order.Q.")
    }
    null = {
        name.rsplit(".", 1)[1]: dict(v)
        for name, v in history.items()
        if name.startswith("order.Q_null_mean.")
    }
    blocks = sorted(q, key=lambda b: int("".join(ch for ch in b if ch.isdigit()) or 0))
    epochs = sorted({e for values in q.values() for e in values})
    rows = [["epoch", *[f"Q {b} (null)" for b in blocks]]]
    for epoch in epochs:
        cells = [f"{fmt(q[b].get(epoch))} ({fmt(null.get(b, {}).get(epoch))})" for b in blocks]
        rows.append([str(epoch), *cells])
    return table(rows)


def untrained_table(found: Mapping[str, Any]) -> str:
    """SNR, noise and cluster size per block at the untrained checkpoint (epoch 0) and the last."""
    history = found.get("order", {}).get("history", {})
    rows = [["site", "quantity", "untrained (epoch 0)", "trained (last)"]]
    for name in sorted(history, key=_by_block):
        quantity, _, site = name.partition(".")
        values = sorted((int(e), v) for e, v in history[name])
        if quantity in ("snr", "noise", "cluster_size") and len(values) > 1 and values[0][0] == 0:
            rows.append([site, quantity, fmt(values[0][1]), fmt(values[-1][1])])
    return table(rows) if len(rows) > 1 else "(no epoch-0 checkpoint analysed)"


def _site_key(site: str) -> tuple[str, tuple[str, int]]:
    """Sort key of ``kind.block{i}``: the kind, then the layer in depth order."""
    kind, _, layer = site.rpartition(".")
    return kind, layer_order(layer)


def _by_block(name: str) -> tuple[str, tuple[str, int], str]:
    """Sort key of ``quantity.kind.block{i}``: site kind, block number, quantity."""
    quantity, _, site = name.partition(".")
    return (*_site_key(site), quantity)


def study_table(found: Mapping[str, Any]) -> str:
    """ANDC at one global theta against random pruning with the same per-node counts."""
    curve = found.get("study", {}).get("random_control") or {}
    if not curve:
        return "(no random-control curve)"
    rows = [["theta", "pruned fraction", "ANDC acc", "random acc (mean ± std)"]]
    for i, theta in enumerate(curve["theta"]):
        rows.append(
            [
                fmt(theta),
                fmt(curve["fraction"][i]),
                fmt(curve["andc_accuracy"][i]),
                f"{fmt(curve['random_mean'][i])} ± {fmt(curve['random_std'][i])}",
            ]
        )
    return table(rows)


def scaling_table(found: Mapping[str, Any]) -> str:
    """Error, SNR and cluster size (means over the draws) per number of labels K, and the fits."""
    history = found.get("scaling", {}).get("history", {})
    columns = {name: dict((int(k), v) for k, v in values) for name, values in history.items()}
    ks = sorted({k for values in columns.values() for k in values})
    rows = [["K", *[name.removeprefix("scaling.") for name in columns]]]
    rows += [[str(k), *[fmt(values.get(k)) for values in columns.values()]] for k in ks]
    return table(rows) + "\n\n" + metric_list(found, "scaling", ("scaling.",))


COOP_QUANTITIES = ("acc", "labels", "union", "gain")
"""Cooperation metrics per subset size in the table: accuracy, labels recognised by the subset,
the union of its members' single-node labels, and their difference."""


def cooperation_table(found: Mapping[str, Any]) -> str:
    """Per block: A(n), the subset's labels, its members' union and the gain, by subset size n;
    then the single-node bound beside the labels a node recognises."""
    per_size: dict[tuple[str, str], dict[int, float]] = {}
    rest: dict[str, float] = {}
    for name, value in _metrics(found, "cooperation").items():
        layered = LAYERED_METRIC.match(name)
        match = CURVE_METRIC.match(layered["family"]) if layered else None
        if layered and match and match["stat"] in COOP_QUANTITIES:
            key = (f"{match['kind']}.{layered['label']}", match["stat"])
            per_size.setdefault(key, {})[int(match["n"])] = value
        elif not match and name != CHANCE_METRIC:
            rest[name] = value
    sizes = sorted({n for values in per_size.values() for n in values})
    order = sorted(per_size, key=lambda k: (_site_key(k[0]), COOP_QUANTITIES.index(k[1])))
    rows = [["site", "quantity", *[f"n={n}" for n in sizes]]]
    rows += [[site, q, *[fmt(per_size[(site, q)].get(n)) for n in sizes]] for site, q in order]
    others = by_layer(rest)
    columns = sorted({family for values in others.values() for family in values})
    rows2 = [["block", *columns]]
    rows2 += [[layer, *[fmt(v.get(c)) for c in columns]] for layer, v in others.items()]
    chance = _metrics(found, "cooperation").get(CHANCE_METRIC)
    return table(rows) + "\n\n" + table(rows2) + f"\n\nrandom guess {fmt(chance)}"


def metric_list(found: Mapping[str, Any], kind: str, prefixes: tuple[str, ...] = ("",)) -> str:
    """Every metric of one step's run whose name starts with one of ``prefixes``."""
    metrics = _metrics(found, kind)
    rows = [["metric", "value"]]
    rows += [[k, fmt(v)] for k, v in sorted(metrics.items()) if k.startswith(prefixes)]
    return table(rows) if len(rows) > 1 else "(none)"


def alignment_table(found: Mapping[str, Any]) -> str:
    """Cluster and node pair purity per site kind and block, beside the permutation null."""
    align = found.get("alignment", {})
    if "metrics" not in align:
        return f"(not measured: {align.get('skipped', 'no alignment')})"
    rows = [["site", *[c[0] for c in ALIGN_COLUMNS]]]
    for layer, values in by_layer(align["metrics"]).items():
        for kind in ("mha", "ff"):
            cells = [fmt(values.get(f"{key}.{kind}")) for _, key in ALIGN_COLUMNS]
            if any(cells):
                rows.append([f"{layer}.{kind}", *cells])
    return table(rows) + f"\n\nchance (null expectation): {fmt(align.get('chance'))}"


def tables_markdown(found: Mapping[str, Any]) -> str:
    """Every table of a findings run, each under the run id it was read from."""
    train = _metrics(found, "train")
    parts = [
        "# Measured tables",
        f"commit {found.get('commit', '?')}; findings run {found.get('findings_run_id', '?')}",
        f"## Training (run {_run(found, 'train')})",
        f"final test accuracy {fmt(train.get('test_acc'))}, val {fmt(train.get('val_acc'))}",
        f"## Along depth (snp {_run(found, 'snp')}, order {_run(found, 'order')})",
        depth_table(found),
        f"## Q over training (order {_run(found, 'order')})",
        q_history_table(found),
        f"## Untrained against trained (order {_run(found, 'order')}, step 0 and last)",
        untrained_table(found),
        f"## ANDC study against random pruning (study {_run(found, 'study')})",
        study_table(found),
        f"## Network ANDC against random pruning (andc-network {_run(found, 'andc-network')})",
        metric_list(found, "andc-network"),
        f"## Label scaling (scaling {_run(found, 'scaling')})",
        scaling_table(found),
        f"## Node cooperation (cooperation {_run(found, 'cooperation')})",
        cooperation_table(found),
        f"## Superclass alignment (findings {found.get('findings_run_id', '?')})",
        alignment_table(found),
    ]
    return "\n\n".join(parts) + "\n"
