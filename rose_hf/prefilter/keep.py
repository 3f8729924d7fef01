"""Which rows the prefilter keeps: RDS+'s round robin over the validation pairs (arXiv 2503.01807, Algorithm 1).

Each validation pair ranks the pool by cosine; rows are taken in turn from each pair's ranking (pair 0's best, pair
1's best, ..., then each pair's next best not yet taken) until the budget is reached. Unlike a ranking by the best
cosine over pairs, no pair with many near neighbours crowds out the others.
"""

from __future__ import annotations

import math

import numpy as np


def keep_count(fraction: float, num_rows: int) -> int:
    """Rows the prefilter keeps: `ceil(fraction * num_rows)` (at least 1 of a non-empty pool)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"prefilter_fraction={fraction} must be in (0, 1].")
    return min(num_rows, max(1, math.ceil(fraction * num_rows - 1e-9)))


def pair_ranking(cosines: np.ndarray, depth: int) -> np.ndarray:
    """The `depth` best rows of one pair's `(N,)` cosines, best first; ties go to the lower row index.

    Only the rows at or above the `depth`-th best value are sorted, so a small budget on a large pool stays cheap.
    """
    cosines = np.asarray(cosines, dtype=np.float64)
    depth = min(depth, cosines.shape[0])
    if depth == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = np.partition(cosines, cosines.shape[0] - depth)[cosines.shape[0] - depth]
    candidates = np.flatnonzero(cosines >= threshold)
    order = np.lexsort((candidates, -cosines[candidates]))  # the last key sorts first: cosine, then index
    return candidates[order][:depth].astype(np.int64)


def round_robin_keep(cosines: np.ndarray, count: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """The rows RDS+'s round robin keeps, sorted by row index.

    Args:
        cosines: `(N, P)` cosine of each pool row to each validation pair.
        count: how many rows to keep (`keep_count`); fewer when fewer rows are eligible.
        eligible: optional `(N,)` bool: the rows that may be kept (others are skipped by every pair).

    Returns:
        `(min(count, eligible rows),)` int64 row indices, ascending.
    """
    cosines = np.asarray(cosines)
    num_rows, num_pairs = cosines.shape
    if eligible is None:
        eligible = np.ones(num_rows, dtype=bool)
    candidates = np.flatnonzero(eligible)
    count = min(count, candidates.size)
    if count == 0 or num_pairs == 0:
        return np.zeros(0, dtype=np.int64)
    # A pair's pointer never passes more than `count` rows: each row it skips was taken by another pair.
    rankings = [candidates[pair_ranking(cosines[candidates, j], count)] for j in range(num_pairs)]
    taken = np.zeros(num_rows, dtype=bool)
    kept: list[int] = []
    pointers = [0] * num_pairs
    while len(kept) < count:
        for j in range(num_pairs):
            ranking, position = rankings[j], pointers[j]
            while position < ranking.size and taken[ranking[position]]:
                position += 1
            pointers[j] = position
            if position < ranking.size:
                row = int(ranking[position])
                taken[row] = True
                kept.append(row)
                pointers[j] = position + 1
                if len(kept) == count:
                    break
    return np.sort(np.asarray(kept, dtype=np.int64))
