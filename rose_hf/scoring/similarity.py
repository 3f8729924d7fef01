"""Score a pool of training examples against validation preference pairs, and select the top of the ranking.

ROSE's score of a training example `z` (ROSE_METHOD.md, step 5) is

    s(z) = agg_{subtask} ( mean_{v in subtask} sum_c w_c * <G_c(z), g_c(v)> )

with `G_c(z)` the projected, L2-normalised Adam-preconditioned gradient of `z` at checkpoint `c`, `g_c(v)` the
projected, L2-normalised DPO gradient of validation pair `v`, `w_c` the checkpoint weight (mean learning rate of the
epoch, renormalised) and `agg` the max over subtasks (paper) or their mean. Because the mean over pairs and the sum over
checkpoints are linear, each checkpoint's validation side collapses to one weighted mean vector per subtask, so the
pool is read once, in row chunks, with `C` small matmuls per chunk: memory stays flat in the pool size apart from the
`(N,)` output, and pool matrices can be `np.memmap`s bigger than RAM.

Invalid examples (no completion tokens, features that failed, ...) are marked with `INVALID_SCORE`, the smallest
float32, rather than `-inf` or NaN, so that saved score arrays stay finite for consumers that average or plot them;
they always rank last and `rose_hf.scoring.selection.select_top` never picks them.

Example:
```python
>>> import numpy as np
>>> from rose_hf.scoring.similarity import checkpoint_weights, score_pool
>>> from rose_hf.scoring.selection import select_top
>>> rng = np.random.default_rng(0)
>>> unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
>>> pool = [unit(rng.normal(size=(100, 16))) for _ in range(2)]
>>> val = [unit(rng.normal(size=(4, 16))) for _ in range(2)]
>>> weights = checkpoint_weights([[2e-5, 1e-5], [5e-6]])
>>> scores, report = score_pool(pool, val, weights, subtasks=["a", "a", "b", "b"])
>>> select_top(scores, fraction=0.05).shape
(5,)
```
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
from accelerate.utils import tqdm

from ..logs import get_logger, warn

logger = get_logger(__name__)

INVALID_SCORE = float(np.finfo(np.float32).min)
# How per-subtask mean similarities combine into one score (`RoseConfig.subtask_aggregation`); the paper takes the max.
AGGREGATIONS = ("max", "mean")


def checkpoint_weights(learning_rates_per_checkpoint: Sequence[Sequence[float]]) -> np.ndarray:
    """Checkpoint weights `w_c`: mean learning rate of the optimizer steps that led to each checkpoint, summing to 1.

    Args:
        learning_rates_per_checkpoint: for each checkpoint `c`, the learning rates of the steps taken since
            checkpoint `c - 1` (e.g. collected from the trainer's log history).

    Returns:
        `(C,)` float64 weights summing to 1.

    Example:
    ```python
    >>> checkpoint_weights([[2.0, 4.0], [1.0]])  # means 3 and 1
    array([0.75, 0.25])
    ```
    """
    if len(learning_rates_per_checkpoint) == 0:
        raise ValueError("`learning_rates_per_checkpoint` is empty: pass one list of learning rates per checkpoint.")
    # Weights sum to 1, so the only checkpoint's is 1 whatever its rates: none need be known (e.g. a warmup that saved
    # once and logged its learning rate every 50 steps), and all may be 0.
    single = len(learning_rates_per_checkpoint) == 1
    means = []
    for c, rates in enumerate(learning_rates_per_checkpoint):
        rates = np.asarray(rates, dtype=np.float64)
        if rates.size == 0 and not single:
            raise ValueError(
                f"`learning_rates_per_checkpoint[{c}]` is empty: no optimizer step led to checkpoint {c}. Save "
                "checkpoints only after at least one optimizer step (e.g. one per epoch)."
            )
        if not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise ValueError(
                f"`learning_rates_per_checkpoint[{c}]` holds negative or non-finite learning rates: {rates.tolist()}."
            )
        means.append(rates.mean() if rates.size else 0.0)
    if single:
        return np.ones(1)
    means = np.asarray(means)
    if means.sum() <= 0:
        raise ValueError(
            "All learning rates are 0, so the checkpoint weights are undefined: the learning-rate scheduler produced "
            "zero learning rate at every step. Check `learning_rate` and the scheduler/warmup settings of the warmup run."
        )
    return means / means.sum()


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, np.ndarray) and value.ndim == 2:
        raise ValueError(f"`{name}` must be a list with one (rows, dim) array per checkpoint, got a single 2-D array.")
    return list(value)


def release_pages(array: np.ndarray, start: int, stop: int) -> None:
    """Tell the OS a memory-mapped chunk was read once and will not be read again.

    Without it the pages of a read-once pool file stay resident, so the process's peak RSS grows with the pool
    although its own memory stays flat.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row_bytes = array.strides[0]
    offset = getattr(array, "offset", 0)
    begin = (offset + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
    end = offset + stop * row_bytes
    try:
        mapping.madvise(mmap.MADV_DONTNEED, begin, end - begin)
    except (OSError, ValueError):  # not supported here, or a view whose mapping differs: only memory is at stake
        pass


def score_pool(
    pool_features: Sequence[np.ndarray],
    validation_features: Sequence[np.ndarray],
    weights: np.ndarray | Sequence[float],
    subtasks: Sequence[str] | np.ndarray,
    aggregation: str = "max",
    chunk_size: int = 8192,
    valid: np.ndarray | None = None,
    row_scales: Sequence[np.ndarray] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Score every pool example against the validation pairs, streaming over the pool in row chunks.

    Args:
        pool_features: one `(N, d)` array per checkpoint (float16, float32 or int8; `np.memmap` works), rows
            L2-normalised. A row that is all zeros at any checkpoint marks an invalid example.
        validation_features: one `(V, d)` array per checkpoint, rows L2-normalised.
        weights: `(C,)` checkpoint weights (see `checkpoint_weights`).
        subtasks: `(V,)` subtask label of each validation pair.
        aggregation: `"max"` (paper) or `"mean"` over subtasks of the per-subtask mean score. The checkpoint sum is
            taken first, so with `"max"` each example is scored by its best subtask over the weighted sum.
        chunk_size: pool rows read and converted to float32 at once.
        valid: optional `(N,)` bool mask; `False` rows are invalid.
        row_scales: for int8 storage (see `rose_hf.cache.store.quantize_int8`), one `(N,)` float32 scale array per checkpoint: the feature
            is `int8_row * scale`. Required for int8 pools.
        progress: show a progress bar over chunks (main process only).

    Returns:
        `scores`, `(N,)` float32, with `INVALID_SCORE` for invalid rows (given by `valid`, all-zero at some checkpoint,
        or holding non-finite values), and a JSON-able report: `subtasks` (order used below), `per_subtask_mean`
        (mean per-subtask score over valid rows), `argmax_subtask_counts` (how many valid rows each subtask scores
        best), `num_invalid`, `num_masked`, `num_zero_rows`, `num_nonfinite_rows`, `aggregation`.
    """
    pool_features = _as_list("pool_features", pool_features)
    validation_features = _as_list("validation_features", validation_features)
    num_checkpoints = len(pool_features)
    if num_checkpoints == 0:
        raise ValueError("`pool_features` is empty: pass one (N, d) array per checkpoint.")
    if len(validation_features) != num_checkpoints:
        raise ValueError(
            f"`validation_features` has {len(validation_features)} checkpoints but `pool_features` has {num_checkpoints}:"
            " both sides must be computed at the same checkpoints."
        )
    weights = _check_settings(weights, num_checkpoints, aggregation, chunk_size)

    num_rows = pool_features[0].shape[0]
    num_pairs = validation_features[0].shape[0]
    for c, (pool, val) in enumerate(zip(pool_features, validation_features)):
        if pool.ndim != 2 or pool.shape[0] != num_rows:
            raise ValueError(
                f"`pool_features[{c}]` has shape {pool.shape}; expected ({num_rows}, d) like `pool_features[0]`."
            )
        if val.ndim != 2 or val.shape[0] != num_pairs or val.shape[1] != pool.shape[1]:
            raise ValueError(
                f"`validation_features[{c}]` has shape {val.shape}; expected ({num_pairs}, {pool.shape[1]}): as many "
                "pairs as at checkpoint 0 and the pool's feature dimension (same projection on both sides)."
            )
        if pool.dtype not in (np.float16, np.float32, np.int8):
            raise ValueError(
                f"`pool_features[{c}]` has dtype {pool.dtype}; use float16, float32 or int8 (+ row_scales)."
            )
        bad = np.flatnonzero(~np.isfinite(np.asarray(val, dtype=np.float32)).all(axis=1))
        if bad.size:
            raise ValueError(
                f"`validation_features[{c}]` rows {bad[:10].tolist()} hold NaN/inf: the validation gradients are broken "
                "(e.g. fp16 overflow); recompute them before scoring."
            )
    if row_scales is not None:
        row_scales = _as_list("row_scales", row_scales)
        if len(row_scales) != num_checkpoints or any(np.shape(s) != (num_rows,) for s in row_scales):
            raise ValueError(
                f"`row_scales` must hold {num_checkpoints} arrays of shape ({num_rows},), one per checkpoint."
            )
    elif any(pool.dtype == np.int8 for pool in pool_features):
        raise ValueError("`row_scales` is required for int8 `pool_features` (see `rose_hf.cache.store.quantize_int8`).")

    names, membership = subtask_membership(subtasks, num_pairs)
    # Per checkpoint, w_c times each subtask's mean validation vector: (d, S). Scores are then linear in the pool rows.
    targets = [
        (weights[c] * (np.asarray(val, dtype=np.float64).T @ membership)).astype(np.float32)
        for c, val in enumerate(validation_features)
    ]

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        per_subtask = np.zeros((stop - start, len(names)), dtype=np.float64)
        zero = np.zeros(stop - start, dtype=bool)
        for c in range(num_checkpoints):
            chunk = np.array(pool_features[c][start:stop])  # a copy, so the file pages can be dropped below
            release_pages(pool_features[c], start, stop)
            zero |= ~chunk.any(axis=1)
            contribution = chunk.astype(np.float32, copy=False) @ targets[c]
            if row_scales is not None:
                contribution *= np.asarray(row_scales[c][start:stop], dtype=np.float32)[:, None]
            per_subtask += contribution
        return per_subtask, zero

    return aggregate_subtasks(read, num_rows, names, aggregation, chunk_size, valid, progress)


def score_similarities(
    similarities: Sequence[np.ndarray],
    weights: np.ndarray | Sequence[float],
    subtasks: Sequence[str] | np.ndarray,
    aggregation: str = "max",
    chunk_size: int = 8192,
    valid: np.ndarray | None = None,
    pairs: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """`score_pool`'s scores from each row's cosine to each validation pair instead of its features
    (`RoseConfig.store_pool_features=False`): the same rules, from `sim_c(z, v) = <G_c(z), g_c(v)>`.

    Args:
        similarities: one `(N, V)` float32 array per checkpoint: the cosine of each pool row to each validation pair
            (all zeros for a row without a feature, which marks it invalid as an all-zero feature does).
        weights, subtasks, aggregation, chunk_size, valid, progress: as in `score_pool`; `subtasks` labels the pairs
            scored (`pairs` when given).
        pairs: the validation pairs (columns) to score with; default all.

    Returns:
        `(scores, report)` as `score_pool`'s. They equal `score_pool`'s on the features the similarities were computed
        from up to float32 rounding (the mean over pairs is taken after the products here, before them there).
    """
    similarities = _as_list("similarities", similarities)
    num_checkpoints = len(similarities)
    if num_checkpoints == 0:
        raise ValueError("`similarities` is empty: pass one (N, V) array per checkpoint.")
    weights = _check_settings(weights, num_checkpoints, aggregation, chunk_size)
    num_rows, num_pairs = similarities[0].shape
    if any(sim.shape != (num_rows, num_pairs) for sim in similarities):
        raise ValueError(f"`similarities` must all have the shape of the first, {(num_rows, num_pairs)}.")
    columns = list(range(num_pairs)) if pairs is None else list(pairs)
    names, membership = subtask_membership(subtasks, len(columns))
    # w_c times the subtask means, applied to the products: (V', S) per checkpoint.
    targets = [weights[c] * membership for c in range(num_checkpoints)]

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        per_subtask = np.zeros((stop - start, len(names)), dtype=np.float64)
        zero = np.zeros(stop - start, dtype=bool)
        for c in range(num_checkpoints):
            chunk = np.asarray(similarities[c][start:stop], dtype=np.float64)
            zero |= ~chunk.any(axis=1)
            per_subtask += chunk[:, columns] @ targets[c]
        return per_subtask, zero

    return aggregate_subtasks(read, num_rows, names, aggregation, chunk_size, valid, progress)


def _check_settings(weights, num_checkpoints: int, aggregation: str, chunk_size: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (num_checkpoints,) or not np.all(np.isfinite(weights)):
        raise ValueError(
            f"`weights` must be {num_checkpoints} finite numbers (one per checkpoint), got {weights.tolist()}."
        )
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"`aggregation`={aggregation!r} is not one of {AGGREGATIONS}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
    return weights


def subtask_membership(subtasks: Sequence[str] | np.ndarray, num_pairs: int) -> tuple[list, np.ndarray]:
    """The subtasks in first-appearance order (so reports list them as the user's data does), and the `(V, S)`
    float64 matrix that takes the mean over each subtask's pairs."""
    labels = np.asarray(subtasks)
    if labels.shape != (num_pairs,):
        raise ValueError(
            f"`subtasks` must have one label per validation pair ({num_pairs}), got shape {labels.shape}."
        )
    names = list(dict.fromkeys(labels.tolist()))
    membership = np.stack([labels == name for name in names], axis=1).astype(np.float64)  # (V, S)
    membership /= membership.sum(axis=0, keepdims=True)
    return names, membership


def aggregate_subtasks(
    read, num_rows: int, names: list, aggregation: str, chunk_size: int, valid: np.ndarray | None, progress: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The rules after the per-subtask sums, shared by `score_pool` and `score_similarities`: invalid rows, the
    aggregation over subtasks, and the report.

    Args:
        read: `read(start, stop)` gives, for those rows, the `(n, S)` float64 checkpoint-weighted per-subtask mean
            similarities and the `(n,)` rows that are all zero at some checkpoint.
    """
    if valid is None:
        valid_mask = np.ones(num_rows, dtype=bool)
    else:
        valid_mask = np.asarray(valid)
        if valid_mask.dtype != bool or valid_mask.shape != (num_rows,):
            raise ValueError(
                f"`valid` must be a bool array of shape ({num_rows},), got {valid_mask.dtype} {valid_mask.shape}."
            )

    scores = np.empty(num_rows, dtype=np.float32)
    per_subtask_sum = np.zeros(len(names), dtype=np.float64)
    argmax_counts = np.zeros(len(names), dtype=np.int64)
    num_zero = num_nonfinite = 0
    starts = range(0, num_rows, chunk_size)
    for start in tqdm(starts, desc="Scoring pool") if progress else starts:
        stop = min(start + chunk_size, num_rows)
        per_subtask, zero = read(start, stop)
        # A NaN/inf anywhere in a row reaches every column of its matmul (inf * 0 is NaN), so checking the (n, S)
        # result finds bad rows without another pass over the features.
        nonfinite = ~np.isfinite(per_subtask).all(axis=1)
        keep = valid_mask[start:stop] & ~zero & ~nonfinite
        num_zero += int((zero & valid_mask[start:stop]).sum())
        num_nonfinite += int((nonfinite & valid_mask[start:stop] & ~zero).sum())
        chunk_scores = per_subtask.max(axis=1) if aggregation == "max" else per_subtask.mean(axis=1)
        scores[start:stop] = np.where(keep, chunk_scores, INVALID_SCORE)
        per_subtask_sum += per_subtask[keep].sum(axis=0)
        argmax_counts += np.bincount(per_subtask[keep].argmax(axis=1), minlength=len(names))

    num_valid = int(num_rows - (scores == INVALID_SCORE).sum())
    if num_nonfinite:
        warn(f"{num_nonfinite} pool rows hold NaN/inf features; they are scored as invalid.")
    report = {
        "aggregation": aggregation,
        "subtasks": [str(name) for name in names],
        "per_subtask_mean": {
            str(name): float(per_subtask_sum[s] / num_valid) if num_valid else float("nan")
            for s, name in enumerate(names)
        },
        "argmax_subtask_counts": {str(name): int(argmax_counts[s]) for s, name in enumerate(names)},
        "num_rows": int(num_rows),
        "num_invalid": int(num_rows - num_valid),
        "num_masked": int((~valid_mask).sum()),
        "num_zero_rows": num_zero,
        "num_nonfinite_rows": num_nonfinite,
    }
    return scores, report


def rank_average(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Combine rankings: each row's weighted mean normalised rank over the score arrays
    (`validation_objective="dpo+sft"`, weighted by `RoseConfig.dpo_weight`).

    In each array the rows that are not `INVALID_SCORE` (and finite) get their rank among those rows divided by their
    count, in (0, 1], ties sharing their average rank; a row's combined score is the weighted mean over the arrays,
    and a row invalid in any array is `INVALID_SCORE`. Ranks rather than raw values, so that neither score's scale
    decides.

    Args:
        scores: `(N,)` score arrays over the same rows.
        weights: one non-negative weight per array, normalised to sum to 1 (default: equal weights).

    Returns:
        `(N,)` float32 combined scores.

    Example:
    ```python
    >>> rank_average([np.array([0.1, 0.3, 0.2]), np.array([5.0, 4.0, 6.0])]).tolist()  # ranks 1,3,2 and 2,1,3 of 3
    [0.5, 0.6666666865348816, 0.8333333134651184]
    >>> rank_average([np.array([0.1, 0.3, 0.2]), np.array([5.0, 4.0, 6.0])], weights=[3, 1]).tolist()
    [0.4166666567325592, 0.8333333134651184, 0.75]
    ```
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in _as_list("scores", scores)]
    if not arrays or any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(
            f"`scores` must be one or more 1-D arrays of the same length, got {[a.shape for a in arrays]}."
        )
    share = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    if share.shape != (len(arrays),) or not np.all(np.isfinite(share)) or np.any(share < 0) or share.sum() <= 0:
        raise ValueError(f"`weights` must be {len(arrays)} non-negative numbers, not all 0, got {weights!r}.")
    share = share / share.sum()
    valid = np.ones(arrays[0].shape, dtype=bool)
    for a in arrays:
        valid &= np.isfinite(a) & (a != INVALID_SCORE)
    total = np.zeros(int(valid.sum()))
    for a, weight in zip(arrays, share):
        values = a[valid]
        order = np.argsort(values, kind="stable")
        _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
        ranks = np.empty(len(values))
        ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, ties share their mean rank
        total += weight * ranks / max(1, len(values))
    combined = np.full(arrays[0].shape, INVALID_SCORE, dtype=np.float32)
    combined[valid] = total
    return combined
