"""`scoring="robust"`: a ranking that is both relevant to the target task and correct, and a health check of it.

Three ways in which the paper's ranking can come close to random, and the change that answers each:

1. **Features without Adam's momentum.** The paper's feature `m' / sqrt(v' + eps)` adds the same `b1 m / sqrt(v')` to
   every pool row, so any two rows look alike and a row with a small gradient is scored by the warmup's momentum.
   `g / sqrt(v' + eps)` keeps Adam's per-coordinate scaling.
2. **The last checkpoint.** The paper's learning-rate weights give the first, least-trained checkpoint the largest
   weight; at the end of the warmup the features separate tasks best. One pool pass instead of one per checkpoint.
3. **Relevance, gated by correctness.** A row is *relevant* when its gradient is close to the SFT gradient of SOME
   validation chosen answer (`relevance = max over pairs`; the mean over pairs dilutes it), and *correct* when
   training on it moves the DPO margin the right way on average (`preference = mean over pairs` of the cosine to the
   DPO gradient). Rows with positive preference rank first, by relevance; the others follow, by relevance.

    score(z) = relevance(z)           if preference(z) > 0
             = relevance(z) - 10      otherwise      (cosines lie in [-1, 1])

With `validation_objective="sft"` (LESS) there is no preference side: rows rank by relevance alone.

The health check of every selection (`rose_hf.scoring.health`) records the same two parts among its signals.
"""

from __future__ import annotations

import numpy as np

from .similarity import INVALID_SCORE, release_pages

DEMOTE = 10.0  # larger than any cosine difference, so every preferred row ranks above every other one


def relevance_and_preference(
    pool: np.ndarray,
    chosen: np.ndarray,
    dpo: np.ndarray | None,
    valid: np.ndarray,
    row_scales: np.ndarray | None = None,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`relevance = max_v cos(pool row, chosen_v)` and `preference = mean_v cos(pool row, dpo_v)`, streamed.

    Args:
        pool: `(N, d)` unit pool features of one checkpoint (float16/32, or int8 with `row_scales`; memmap works).
        chosen: `(V, d)` unit SFT-gradient features of the validation (prompt, chosen) rows.
        dpo: `(V, d)` unit DPO-gradient features of the pairs, or None (no preference side).
        valid: `(N,)` rows with a usable gradient; the others get NaN.
        row_scales: `(N,)` int8 scales (see `rose_hf.cache.store.quantize_int8`).
        chunk_size: rows read and converted to float32 at once.
    """
    num_rows, num_pairs = pool.shape[0], chosen.shape[0]
    relevance = np.full(num_rows, np.nan, dtype=np.float64)
    preference = None if dpo is None else np.full(num_rows, np.nan, dtype=np.float64)
    targets = np.asarray(chosen, dtype=np.float32).T  # (d, V)
    if dpo is not None:  # the mean of the cosines is the dot product with the mean validation vector
        dpo_mean = np.asarray(dpo, dtype=np.float64).mean(axis=0).astype(np.float32)
        targets = np.concatenate([targets, dpo_mean[:, None]], axis=1)
    for start in range(0, num_rows, chunk_size):
        stop = min(start + chunk_size, num_rows)
        products = np.array(pool[start:stop]).astype(np.float32, copy=False) @ targets
        release_pages(pool, start, stop)
        if row_scales is not None:
            products *= np.asarray(row_scales[start:stop], dtype=np.float32)[:, None]
        keep = valid[start:stop]
        relevance[start:stop] = np.where(keep, products[:, :num_pairs].max(axis=1), np.nan)
        if preference is not None:
            preference[start:stop] = np.where(keep, products[:, num_pairs], np.nan)
    return relevance, preference


def robust_scores(relevance: np.ndarray, preference: np.ndarray | None) -> np.ndarray:
    """`(N,)` float32 scores: relevance, with rows whose preference is not positive demoted below all others."""
    score = relevance if preference is None else np.where(preference > 0, relevance, relevance - DEMOTE)
    return np.where(np.isfinite(score), score, INVALID_SCORE).astype(np.float32)
