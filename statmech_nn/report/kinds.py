"""The report's sections, one entry per analysis run kind: the place to add a section.

To add a section for a new kind of run (tag ``statmech_nn.kind``), append a :class:`SectionKind`
to :data:`SECTION_KINDS`: its title and introduction, the params that tell two runs of the kind
apart, captions for its PNG artifacts and, optionally, a ``body`` function returning extra HTML.
Sections appear in this list's order, newest run first within a kind. Runs of a kind not listed
still get a generic section after the listed ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statmech_nn.naming import (
    KIND_ANDC_NETWORK,
    KIND_COOPERATION,
    KIND_FINDINGS,
    KIND_ORDER,
    KIND_SCALING,
    KIND_SNP,
    KIND_STUDY,
)


@dataclass(frozen=True)
class SectionKind:
    """How the report shows the runs of one kind."""

    kind: str
    title: str
    short: str
    """The name in the navigation."""
    text: str = ""
    distinguish: tuple[str, ...] = ()
    """Params named in the heading when several runs of the kind exist, first differing first."""
    captions: tuple[tuple[str, str], ...] = ()
    """(artifact path regex, caption) pairs, in the order the figures are shown; captions are
    formatted with the run's params and the regex's named groups (a missing name reads "?")."""
    body: Callable[[Any], str] | None = field(default=None, compare=False)
    """Extra HTML for a run (called with its :class:`~statmech_nn.report.tree.RunNode`)."""


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def caption(kind: SectionKind | None, path: str, params: dict[str, str]) -> str:
    """What the figure at artifact ``path`` shows (the file's name only when nothing is known)."""
    for pattern, text in kind.captions if kind else ():
        match = re.fullmatch(pattern, path)
        if match:
            return text.format_map(_Defaulting({**params, **match.groupdict()}))
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("_", " ").capitalize() + "."


_ORDER_CAPTIONS = (
    (
        r"figures/depth\.png",
        "Readout accuracy (left) and SNR, variant '{snr}' (right), of each site kind along "
        "depth; matrices binarised at theta = {theta}.",
    ),
    (
        r"figures/q_over_training_(?P<site>\w+)\.png",
        "Q of the {site} heads at every saved checkpoint, one panel per block, beside its null "
        "band (mean ± 2 std): where Q leaves the band, the heads' symmetry is broken "
        "(theta = {theta}).",
    ),
    (
        r"figures/expertise_(?P<site>\w+)\.png",
        "How the {site} heads divide the labels (theta = {theta}): per block, the number of a "
        "head's nodes that recognise each label, titled with Q, its null mean ± std and "
        "p-value ({null_permutations} permutations); last panel: Q along depth beside the null "
        "band (mean ± 2 std of randomly permuted node-to-head assignments).",
    ),
    (
        r"figures/gallery_(?P<site>\w+)\.png",
        "Binarised labels x labels matrices of randomly drawn {site} nodes, one row per block "
        "(rows: true label, columns: output label; black: above theta = {theta}). Clusters are "
        "the all-ones diagonal blocks, noise the black elements outside them.",
    ),
)

SECTION_KINDS: list[SectionKind] = [
    SectionKind(
        KIND_SNP,
        "Single-node matrices and readout accuracy along depth",
        "Single-node matrices",
        "A fresh linear readout is trained on each site of the frozen network; its test "
        "accuracy per block is the accuracy along the layers (docs/methods.md, sections 3-4).",
        ("checkpoint_epoch", "readout", "silencing", "sites", "readout_epochs", "split"),
    ),
    SectionKind(
        KIND_ORDER,
        "Order parameters: clusters, noise, SNR and head symmetry breaking",
        "Order parameters",
        "Each node's labels x labels matrix is normalised by its maximum and binarised at theta. "
        "Clusters are the labels a node recognises together; noise the above-threshold elements "
        "outside the clusters; SNR their ratio. Q measures how far the MHA heads have "
        "specialised, beside its null model of randomly permuted node-to-head assignments "
        "(docs/methods.md, sections 5-6).",
        ("theta", "snr", "snr_form", "null_permutations", "over_checkpoints", "snp_run_id", "seed"),
        _ORDER_CAPTIONS,
    ),
    SectionKind(
        KIND_COOPERATION,
        "Node cooperation and the single-node bound",
        "Cooperation",
        "Readouts trained on random node subsets of one site: their accuracy A(n) against the "
        "subset size n beside the random guess, the labels a subset recognises against the union "
        "of its members' single-node labels, and per node the number of labels it can ever "
        "output on its own (docs/methods.md, section 11).",
        ("kind", "sizes", "draws", "within_head", "theta"),
        (
            (
                r"accuracy_curve_(?P<site>\w+)\.png",
                "Accuracy A(n) of readouts on n random {site} "
                "nodes against n, with the spread over draws and the random guess.",
            ),
            (
                r"label_counts_(?P<site>\w+)\.png",
                "Labels recognised by a subset of {site} nodes "
                "(theta {theta}) against the union of its members' single-node labels.",
            ),
            (
                r"node_bound_(?P<site>\w+)\.png",
                "Per {site} node: labels it can ever output alone "
                "(the hull bound) against the labels it recognises.",
            ),
        ),
    ),
    SectionKind(
        KIND_SCALING,
        "Scaling with the number of labels",
        "Scaling",
        "Readouts of one site trained on random K-label subsets: error and SNR against K with "
        "their linear fits (docs/methods.md, section 7).",
        ("site", "labels", "draws", "theta"),
        (
            (
                r"(?:.*/)?scaling\.png",
                "Error rate, SNR and cluster size against the number of labels K: each random "
                "K-label draw as a point, the linear fit as a line (R² in the title).",
            ),
        ),
    ),
    SectionKind(
        KIND_STUDY,
        "ANDC pruning study: accuracy against pruned fraction",
        "ANDC pruning study",
        "Optuna trials over the ANDC threshold: readout accuracy against the fraction of "
        "readout connections cut, with the random-pruning control at equal per-node counts "
        "(docs/methods.md, section 8). The metrics are those of the best trial.",
        ("objective", "study_name", "kind", "variant", "per_site", "delta", "sampler"),
        (
            (
                r"study/pareto\.png",
                "Readout accuracy ({kind} sites) against the fraction of readout connections "
                "pruned, objective '{objective}': every trial (grey), the Pareto front (red), "
                "ANDC at one global theta (blue) and random pruning with the same per-node "
                "counts (green, mean ± std); dotted: the unpruned readout.",
            ),
        ),
    ),
    SectionKind(
        KIND_FINDINGS,
        "Findings: the claims at 100 labels beside their controls",
        "Findings",
        "Every step of `statmech-nn findings` read back from its run, and how the labels single "
        "nodes group together align with the dataset's superclasses against a permutation of the "
        "label-to-superclass map (docs/methods.md, section 5; docs/findings.md). The tables are "
        "the artifact findings/tables.md.",
        ("alignment_permutations", "seed"),
        (
            (
                r"findings/alignment\.png",
                "Fraction of label pairs grouped by one node (left: in one cluster; right: both "
                "recognised) that share a superclass, along depth, beside the null band "
                "({alignment_permutations} permutations) and chance.",
            ),
        ),
    ),
    SectionKind(
        KIND_ANDC_NETWORK,
        "Network-level ANDC pruning",
        "Network-level ANDC",
        "Weights between nodes of consecutive sites that share no recognised label are cut and "
        "the network is retrained briefly under the mask (docs/methods.md, section 8).",
        ("theta", "epochs"),
    ),
]


def figure_rank(kind: SectionKind | None, path: str) -> tuple[int, str]:
    """Where the figure at ``path`` goes: in the order of the kind's captions, then by path."""
    patterns = [p for p, _ in kind.captions] if kind else []
    for i, pattern in enumerate(patterns):
        if re.fullmatch(pattern, path):
            return i, path
    return len(patterns), path


def section_kind(kind: str) -> SectionKind | None:
    """The registered entry of ``kind``, if any."""
    return next((k for k in SECTION_KINDS if k.kind == kind), None)


def kind_rank(kind: str) -> int:
    """Position of ``kind`` in the report (unlisted kinds last)."""
    kinds = [k.kind for k in SECTION_KINDS]
    return kinds.index(kind) if kind in kinds else len(kinds)
