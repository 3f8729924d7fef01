"""The budget: which rows can be selected, and the top `k` of them (shared by the selection and its health check)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..logs import warn
from .similarity import INVALID_SCORE

DEFAULT_BUDGET_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)


def selectable_rows(scores: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The one rule for which rows can be selected: finite scores that are not `INVALID_SCORE`, and `valid`."""
    mask = np.isfinite(scores) & (scores != INVALID_SCORE)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype != bool or valid.shape != scores.shape:
            raise ValueError(f"`valid` must be a bool array of shape {scores.shape}, got {valid.dtype} {valid.shape}.")
        mask &= valid
    return mask


def select_top(
    scores: np.ndarray, fraction: float | None = None, size: int | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the `k` best-scoring valid examples, best first.

    `k = size`, or `max(1, floor(fraction * N + 0.5))` (round half up) with `N` the whole pool, valid or not: the
    budget is a share of the pool. Ties go to the lower index, so the selection is deterministic. Rows with
    `valid == False`, a non-finite score or `INVALID_SCORE` are never selected; when fewer than `k` rows are valid,
    all valid rows are returned (a warning is logged; check `len(result)`).

    Args:
        scores: `(N,)` scores from `score_pool`.
        fraction: share of the pool to keep, in (0, 1] (paper: 0.05).
        size: number of examples to keep, in [1, N].
        valid: optional `(N,)` bool mask.

    Returns:
        `(k,)` int64 indices sorted by rank.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"`scores` must be 1-D, got shape {scores.shape}.")
    num_rows = scores.shape[0]
    if (fraction is None) == (size is None):
        raise ValueError("Pass exactly one of `fraction` (share of the pool) and `size` (number of examples).")
    if fraction is not None:
        if isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r} (e.g. 0.05 for the paper's 5%).")
        k = max(1, math.floor(fraction * num_rows + 0.5))
    else:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= num_rows:
            raise ValueError(f"`size` must be an integer in [1, {num_rows}] (the pool size), got {size!r}.")
        k = int(size)
    candidates = np.flatnonzero(selectable_rows(scores, valid))
    if candidates.size < k:
        warn(f"Only {candidates.size} valid examples for a budget of {k}: selecting all of them.")
    # Stable sort of the negated scores: higher score first, lower index first among ties.
    order = np.argsort(-scores[candidates].astype(np.float64), kind="stable")
    return candidates[order[:k]].astype(np.int64)


def budget_curve(
    scores: np.ndarray,
    fractions: Sequence[float] = DEFAULT_BUDGET_FRACTIONS,
    valid: np.ndarray | None = None,
) -> dict[float, np.ndarray]:
    """Selections at several budgets (the reviewers' 1-20% question), nested: each is a prefix of the next larger.

    Args:
        scores: `(N,)` scores from `score_pool`.
        fractions: shares of the pool, each in (0, 1].
        valid: optional `(N,)` bool mask.

    Returns:
        `{fraction: indices}` as `select_top(scores, fraction=f, valid=valid)` would return.
    """
    return {float(f): select_top(scores, fraction=f, valid=valid) for f in fractions}
