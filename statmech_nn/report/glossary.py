"""What each metric in the report's tables means, in the words of docs/methods.md."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One glossary entry: the names it covers (a regex), a short header and its meaning."""

    key: str
    pattern: str
    short: str
    text: str

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


_SITE = r"(?:\.[\w-]+)?"
TERMS: tuple[Term, ...] = (
    Term(
        "coop",
        r"coop\.[\w.-]+",
        "cooperation",
        "Readouts on random node subsets: acc (A(n)) and its spread, the labels the subset "
        "recognises, the union of its members' single-node labels, the gain of the first over "
        "the second and the labels no member recognises alone; chance is 1/L (methods section "
        "11).",
    ),
    Term(
        "bound",
        r"bound\.[\w.-]+",
        "single-node bound",
        "Per node, the labels it can ever output on its own input (upper envelope or convex "
        "hull of its label weights): mean, maximum, and beside it the diagonal labels |D_n| "
        "(methods section 11).",
    ),
    Term(
        "snr",
        rf"snr{_SITE}",
        "SNR",
        "Signal-to-noise ratio, the headline order parameter: mean labels in clusters over mean "
        "noise, over the nodes with a cluster (methods section 5; the variant is in the "
        "settings). Infinite where a site has clusters and no noise.",
    ),
    Term(
        "acc.readout",
        rf"acc\.readout{_SITE}",
        "readout acc.",
        "Test accuracy of a fresh linear readout trained on the frozen site's output: the "
        "accuracy along the layers (methods section 3).",
    ),
    Term(
        "signal",
        rf"signal{_SITE}",
        "signal",
        "Labels in clusters per node, averaged over the nodes with a cluster (methods 5).",
    ),
    Term(
        "noise",
        rf"noise{_SITE}",
        "noise",
        "Above-threshold elements of a node's binarised matrix outside its cluster blocks, "
        "averaged over the nodes with a cluster (methods 5).",
    ),
    Term(
        "clusters",
        rf"clusters{_SITE}",
        "clusters",
        "Clusters per node (all-ones diagonal blocks of labels the node recognises together), "
        "averaged over the nodes with a cluster (methods 5).",
    ),
    Term(
        "cluster_size",
        rf"cluster_size{_SITE}",
        "cluster size",
        "Mean number of labels in a cluster (methods 5).",
    ),
    Term(
        "order.Q",
        r"order\.Q",
        "Q",
        "Head symmetry breaking, Q = 1 - mean over labels of H(p(head | label)) / log H: 0 when "
        "all heads recognise the same labels, 1 when every label has one expert head "
        "(methods 6).",
    ),
    Term(
        "order.Q_null_mean",
        r"order\.Q_null_mean",
        "null mean",
        "Mean of Q over random permutations of the node-to-head assignment (the null model).",
    ),
    Term(
        "order.Q_null_std",
        r"order\.Q_null_std",
        "null std",
        "Standard deviation of Q under the null model.",
    ),
    Term("order.Q_z", r"order\.Q_z", "z", "(Q - null mean) / null std."),
    Term(
        "order.Q_pvalue",
        r"order\.Q_pvalue",
        "p",
        "Permutation p-value of Q, (1 + #{null >= Q}) / (1 + permutations); its floor is "
        "1 / (1 + permutations).",
    ),
    Term(
        "order.owned_fraction",
        r"order\.owned_fraction",
        "owned",
        "Fraction of the recognised labels that exactly one head recognises.",
    ),
    Term(
        "order.jaccard",
        r"order\.jaccard",
        "Jaccard",
        "Mean pairwise Jaccard overlap of the heads' label sets (1: all heads alike).",
    ),
    Term(
        "andc.accuracy",
        r"andc\.accuracy(?:\.\w+)?",
        "ANDC accuracy",
        "Test accuracy of the readout with its ANDC mask applied: each node keeps only its "
        "connections to the labels it recognises (methods 8); of the best trial for a study.",
    ),
    Term(
        "andc.base_accuracy",
        r"andc\.base_accuracy",
        "unpruned accuracy",
        "Test accuracy of the same readout before pruning.",
    ),
    Term(
        "andc.accuracy_drop",
        r"andc\.accuracy_drop",
        "accuracy drop",
        "Unpruned accuracy minus ANDC accuracy.",
    ),
    Term(
        "andc.pruned_fraction",
        r"andc\.pruned_fraction(?:\.\w+)?",
        "pruned fraction",
        "Fraction of the readout connections cut, 1 - kept / all (methods 8).",
    ),
    Term("study.n_complete", r"study\.n_complete", "trials", "Optuna trials that completed."),
    Term(
        "scaling",
        r"scaling\.\w+(?:\.(?:slope|intercept|r2))?",
        "scaling",
        "Error rate, SNR or cluster size of readouts trained on random K-label subsets, and the "
        "slope, intercept and R^2 of their linear fit against K (methods 7).",
    ),
    Term(
        "train_acc",
        r"(?:train|val|test)_acc",
        "accuracy",
        "Classification accuracy of the trained network on its training, validation or test "
        "split (the last logged epoch).",
    ),
    Term(
        "train_loss",
        r"(?:train|val|test)_loss",
        "loss",
        "Cross-entropy loss on the training, validation or test split (the last logged epoch).",
    ),
    Term("lr", r"lr", "learning rate", "Learning rate at the end of the last logged epoch."),
    Term(
        "images_per_s",
        r"images_per_s",
        "images/s",
        "Training throughput of the last logged epoch.",
    ),
)


def term_of(name: str) -> Term | None:
    """The glossary entry covering the metric (or metric family) ``name``, if any."""
    return next((t for t in TERMS if t.matches(name)), None)


def anchor(term: Term) -> str:
    return "glossary-" + re.sub(r"[^\w-]", "-", term.key)


def header(name: str, label: str | None = None) -> str:
    """A table header for ``name`` linking to its glossary entry (its meaning as a tooltip)."""
    term = term_of(name)
    text = html.escape(label if label is not None else (term.short if term else name))
    if term is None:
        return text
    return f'<a class="term" href="#{anchor(term)}" title="{html.escape(term.text)}">{text}</a>'


def glossary_html(names: set[str]) -> str:
    """The glossary of every term used by ``names``, in the glossary's order (empty if none)."""
    used = {term_of(n) for n in names} - {None}
    entries = "".join(
        f'<dt id="{anchor(t)}">{html.escape(t.short)} <code>{html.escape(t.key)}</code></dt>'
        f"<dd>{html.escape(t.text)}</dd>"
        for t in TERMS
        if t in used
    )
    return f'<dl class="glossary">{entries}</dl>' if entries else ""
