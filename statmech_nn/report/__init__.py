"""A self-contained HTML report of a training run and every analysis nested under it.

The report reads MLflow only: the training run's params and metric histories, and the metrics and
PNG figures of its ``snp``, ``order``, ``scaling`` and ``study`` descendants, found parent by
parent. Figures are embedded as base64, so the single file can be mailed or opened anywhere.
Modules: ``tree`` (the run tree), ``kinds`` (one entry per section kind: add sections there),
``sections``, ``tables``, ``glossary`` and ``page`` (:func:`write_report`).
"""

from statmech_nn.report.glossary import TERMS, Term, glossary_html, term_of
from statmech_nn.report.kinds import SECTION_KINDS, SectionKind, caption, section_kind
from statmech_nn.report.page import render, training_section, write_report
from statmech_nn.report.sections import Section, analysis_sections, distinguishing_labels
from statmech_nn.report.tables import by_layer, fmt, layer_table, layer_table_html, scalar_metrics
from statmech_nn.report.tree import PAGE_SIZE, RunNode, child_runs, descendants, run_tree

__all__ = [
    "PAGE_SIZE",
    "SECTION_KINDS",
    "TERMS",
    "RunNode",
    "Section",
    "SectionKind",
    "Term",
    "analysis_sections",
    "by_layer",
    "caption",
    "child_runs",
    "descendants",
    "distinguishing_labels",
    "fmt",
    "glossary_html",
    "layer_table",
    "layer_table_html",
    "render",
    "run_tree",
    "scalar_metrics",
    "section_kind",
    "term_of",
    "training_section",
    "write_report",
]
