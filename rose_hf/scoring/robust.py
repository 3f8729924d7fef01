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
    num_pairs = chosen.shape[0]
    targets = np.asarray(chosen, dtype=np.float32).T  # (d, V)
    if dpo is not None:  # the mean of the cosines is the dot product with the mean validation vector
        dpo_mean = np.asarray(dpo, dtype=np.float64).mean(axis=0).astype(np.float32)
        targets = np.concatenate([targets, dpo_mean[:, None]], axis=1)

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        products = np.array(pool[start:stop]).astype(np.float32, copy=False) @ targets
        release_pages(pool, start, stop)
        if row_scales is not None:
            products *= np.asarray(row_scales[start:stop], dtype=np.float32)[:, None]
        return products[:, :num_pairs], None if dpo is None else products[:, num_pairs]

    return _parts(read, pool.shape[0], valid, chunk_size, dpo is not None)


def relevance_and_preference_from_similarities(
    chosen: np.ndarray,
    dpo: np.ndarray | None,
    valid: np.ndarray,
    pairs: list[int] | None = None,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`relevance_and_preference` from each row's cosines to the pairs (`RoseConfig.store_pool_features=False`).

    Args:
        chosen: `(N, V)` cosine of each pool row to the SFT-gradient feature of each validation chosen answer.
        dpo: `(N, V)` cosine to each pair's DPO-gradient feature, or None (no preference side).
        valid: `(N,)` rows with a usable gradient; the others get NaN.
        pairs: the pairs (columns) to use; default all.
    """
    columns = slice(None) if pairs is None else list(pairs)

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        products = np.asarray(chosen[start:stop], dtype=np.float32)[:, columns]
        mean = None if dpo is None else np.asarray(dpo[start:stop], dtype=np.float64)[:, columns].mean(axis=1)
        return products, mean

    return _parts(read, chosen.shape[0], valid, chunk_size, dpo is not None)


def _parts(read, num_rows: int, valid: np.ndarray, chunk_size: int, has_preference: bool):
    """The rules of both: relevance is the max over pairs of the cosines to the chosen answers, preference the mean
    cosine to the DPO gradients (`read(start, stop)` gives both for those rows), NaN for rows not `valid`."""
    relevance = np.full(num_rows, np.nan, dtype=np.float64)
    preference = np.full(num_rows, np.nan, dtype=np.float64) if has_preference else None
    for start in range(0, num_rows, chunk_size):
        stop = min(start + chunk_size, num_rows)
        chosen, mean = read(start, stop)
        keep = valid[start:stop]
        relevance[start:stop] = np.where(keep, chosen.max(axis=1), np.nan)
        if preference is not None:
            preference[start:stop] = np.where(keep, mean, np.nan)
    return relevance, preference


def robust_scores(relevance: np.ndarray, preference: np.ndarray | None) -> np.ndarray:
    """`(N,)` float32 scores: relevance, with rows whose preference is not positive demoted below all others."""
    score = relevance if preference is None else np.where(preference > 0, relevance, relevance - DEMOTE)
    return np.where(np.isfinite(score), score, INVALID_SCORE).astype(np.float32)
