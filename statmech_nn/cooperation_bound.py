"""What one node can ever output: the single-node bound of docs/methods.md section 11.

Node ``n`` alone adds ``W[:, n] z`` (a scalar input ``z``: ``mean``, ``post_pool`` and ``pre_pool``
readouts) or ``W[:, n, :] x`` (a token vector ``x``: ``flatten``) to the logits. Label ``j`` can
be the output of the node on its own iff some input makes ``j`` the **strict** argmax of that
field, i.e. ``j`` is an exposed point of the node's label weight vectors in the directions its
inputs can take. Labels with identical weight vectors never win strictly, so they are never
counted (ties have measure zero for trained weights).

- Scalar input without bias: the lines ``W[j, n] z`` through the origin; for ``z > 0`` the largest
  weight wins, for ``z < 0`` the smallest: at most two labels (closed form).
- Scalar input with a bias: the labels on the upper envelope of the lines ``W[j, n] z + b_j``
  (the convex hull trick, exact).
- Vector input: per label a linear programme (``scipy.optimize.linprog``, HiGHS): maximise ``t``
  subject to ``(w_j - w_k) . x + (b_j - b_k) >= t`` for every ``k != j`` and ``t <= 1``; label
  ``j`` can win iff ``t* > tol``. Labels that win for one of a few random inputs are accepted
  without a programme (a strict win is a certificate).

``domain``: ``real`` (inputs of any sign; the default, an upper bound for every site) or
``nonnegative`` (inputs ``>= 0``, e.g. after a ReLU).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from statmech_nn.errors import ConfigError

DOMAINS = ("real", "nonnegative")
LP_TOL = 1e-9


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown input domain {domain!r}: choose {' or '.join(DOMAINS)}")


def _unique_extreme(w: np.ndarray, pick: str) -> int | None:
    """Index of the strictly largest (``max``) or smallest (``min``) entry, ``None`` on a tie."""
    best = w.max() if pick == "max" else w.min()
    where = np.flatnonzero(w == best)
    return int(where[0]) if len(where) == 1 else None


def scalar_output_labels(
    w: np.ndarray, bias: np.ndarray | None = None, domain: str = "real"
) -> np.ndarray:
    """Bool ``[L]``: labels that are the strict argmax of ``w z (+ bias)`` for some scalar ``z``."""
    _check_domain(domain)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    out = np.zeros(len(w), dtype=bool)
    if bias is None:
        picks = ("max", "min") if domain == "real" else ("max",)
        for pick in picks:
            j = _unique_extreme(w, pick)
            if j is not None:
                out[j] = True
        return out
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    for j, (left, right) in _envelope(w, b).items():
        if right > (0.0 if domain == "nonnegative" else -np.inf) and right > left:
            out[j] = True
    return out


def _envelope(w: np.ndarray, b: np.ndarray) -> dict[int, tuple[float, float]]:
    """``{label: (z_from, z_to)}`` of the lines on the upper envelope of ``w z + b`` over R.

    Every listed line is the strict maximum on the open interval ``(z_from, z_to)``.
    """
    order = np.lexsort((b, w))  # by slope, then intercept
    lines: list[tuple[float, float, int]] = []
    for pos, j in enumerate(order):
        last_of_slope = pos + 1 == len(order) or w[order[pos + 1]] != w[j]
        if not last_of_slope:
            continue  # a lower line of the same slope never wins
        twin = pos > 0 and w[order[pos - 1]] == w[j] and b[order[pos - 1]] == b[j]
        lines.append((float(w[j]), float(b[j]), -1 if twin else int(j)))
    stack: list[tuple[float, float, int]] = []

    def cross(p: tuple[float, float, int], q: tuple[float, float, int]) -> float:
        return (p[1] - q[1]) / (q[0] - p[0])

    for line in lines:
        while len(stack) >= 2 and cross(stack[-2], line) <= cross(stack[-2], stack[-1]):
            stack.pop()
        stack.append(line)
    out = {}
    for i, (_, _, label) in enumerate(stack):
        left = cross(stack[i - 1], stack[i]) if i > 0 else -np.inf
        right = cross(stack[i], stack[i + 1]) if i + 1 < len(stack) else np.inf
        if label >= 0:
            out[label] = (left, right)
    return out


def _reduce(w: np.ndarray) -> np.ndarray:
    """Coordinates of the points ``w`` in the span of their differences (same exposed points)."""
    centred = w - w.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-12
    return centred @ vt[keep].T


def _wins(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bool ``[L]``: labels that are the strict argmax of ``w x + b`` for some row of ``x``."""
    fields = x @ w.T + b  # [inputs, L]
    top = fields.argmax(axis=1)
    part = np.partition(fields, -2, axis=1)
    strict = part[:, -1] > part[:, -2]
    out = np.zeros(w.shape[0], dtype=bool)
    out[top[strict]] = True
    return out


def _lp_wins(w: np.ndarray, b: np.ndarray, j: int, nonnegative: bool, tol: float) -> bool:
    """Whether some input makes label ``j`` the strict argmax (the feasibility programme)."""
    others = np.delete(np.arange(w.shape[0]), j)
    # (w_k - w_j) . x + t <= b_j - b_k  for every k != j; variables (x, t); maximise t.
    a_ub = np.hstack([w[others] - w[j], np.ones((len(others), 1))])
    b_ub = b[j] - b[others]
    cost = np.zeros(w.shape[1] + 1)
    cost[-1] = -1.0
    bounds = [(0.0 if nonnegative else None, None)] * w.shape[1] + [(None, 1.0)]
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"the label programme failed: {result.message}")
    return bool(-result.fun > tol)


def vector_output_labels(
    w: np.ndarray,
    bias: np.ndarray | None = None,
    domain: str = "real",
    tol: float = LP_TOL,
    probes: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Bool ``[L]``: labels that are the strict argmax of ``w x (+ bias)`` for some ``x``.

    ``w`` is ``[L, D]``. ``probes`` random inputs accept labels cheaply; every other label gets
    its linear programme, so the answer does not depend on the probes.
    """
    _check_domain(domain)
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"label weight vectors must be [L, D], got {list(w.shape)}")
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    if w.shape[0] == 1:
        return np.ones(1, dtype=bool)
    nonnegative = domain == "nonnegative"
    if not nonnegative:
        w = _reduce(w)
        if w.shape[1] == 0:
            return np.zeros(w.shape[0], dtype=bool) if bias is None else _constant(b)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((probes, w.shape[1]))
    out = _wins(w, b, np.abs(x) if nonnegative else x)
    for j in np.flatnonzero(~out):
        out[j] = _lp_wins(w, b, int(j), nonnegative, tol)
    return out


def _constant(b: np.ndarray) -> np.ndarray:
    """All weight vectors equal: only a strictly largest bias ever wins."""
    out = np.zeros(len(b), dtype=bool)
    j = _unique_extreme(b, "max")
    if j is not None:
        out[j] = True
    return out


def output_labels(
    weight: np.ndarray, bias: np.ndarray | None = None, domain: str = "real"
) -> np.ndarray:
    """Bool ``[N, L]``: per node the labels it can ever output on its own.

    ``weight`` is a readout's ``W[j, n]`` (``[L, N]``, scalar inputs: closed form / envelope) or
    ``W[j, n, t]`` (``[L, N, T]``, the ``flatten`` layout: one programme per label and node).
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim == 2:
        return np.stack([scalar_output_labels(w[:, n], bias, domain) for n in range(w.shape[1])])
    if w.ndim == 3:
        return np.stack([vector_output_labels(w[:, n, :], bias, domain) for n in range(w.shape[1])])
    raise ValueError(f"readout weights must be [L, N] or [L, N, T], got {list(w.shape)}")
