"""Scoring against brute-force dot products, checkpoint weights, selection, int8 storage."""

from __future__ import annotations

import numpy as np
import pytest

from rose_hf.cache.store import dequantize_int8, quantize_int8
from rose_hf.scoring.budget import budget_curve, select_top
from rose_hf.scoring.similarity import INVALID_SCORE, checkpoint_weights, rank_average, score_pool

SUBTASKS = ["b", "a", "b", "c", "a", "b", "c"]  # unsorted, uneven sizes


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _features(seed: int = 0, rows: int = 23, dim: int = 12, checkpoints: int = 3):
    rng = np.random.default_rng(seed)
    pool = [_unit_rows(rng, rows, dim) for _ in range(checkpoints)]
    val = [_unit_rows(rng, len(SUBTASKS), dim) for _ in range(checkpoints)]
    weights = rng.uniform(0.1, 1.0, size=checkpoints)
    return pool, val, weights / weights.sum()


def _brute_force(pool, val, weights, subtasks, aggregation, scales=None):
    """The score definition, literally: per pair, sum over checkpoints; per subtask, mean over pairs; then max/mean."""
    scores, per_subtask_all = [], []
    names = list(dict.fromkeys(subtasks))
    for z in range(pool[0].shape[0]):
        pair_scores = []
        for v in range(len(subtasks)):
            total = 0.0
            for c in range(len(pool)):
                row = pool[c][z].astype(np.float64) * (1.0 if scales is None else float(scales[c][z]))
                total += weights[c] * sum(float(a) * float(b) for a, b in zip(row, val[c][v]))
            pair_scores.append(total)
        per_subtask = [np.mean([s for s, label in zip(pair_scores, subtasks) if label == name]) for name in names]
        per_subtask_all.append(per_subtask)
        scores.append(max(per_subtask) if aggregation == "max" else np.mean(per_subtask))
    return np.array(scores), np.array(per_subtask_all)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("chunk_size", [4, 7, 1000])
@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_scores_equal_explicit_dot_products(aggregation, chunk_size, storage):
    pool, val, weights = _features()
    scales = None
    if storage == "float16":
        pool = [p.astype(np.float16) for p in pool]
    elif storage == "int8":
        quantized = [quantize_int8(p) for p in pool]
        pool, scales = [q for q, _ in quantized], [s for _, s in quantized]
    scores, report = score_pool(
        pool, val, weights, SUBTASKS, aggregation=aggregation, chunk_size=chunk_size, row_scales=scales
    )
    expected, per_subtask = _brute_force(pool, val, weights, SUBTASKS, aggregation, scales)
    assert scores.dtype == np.float32 and scores.shape == (23,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert report["subtasks"] == ["b", "a", "c"]
    np.testing.assert_allclose(list(report["per_subtask_mean"].values()), per_subtask.mean(0), rtol=1e-5, atol=1e-6)
    counts = np.bincount(per_subtask.argmax(1), minlength=3)
    assert list(report["argmax_subtask_counts"].values()) == counts.tolist()
    assert report["num_invalid"] == 0


def test_max_is_taken_after_the_checkpoint_sum():
    # The example points along dim 0 at checkpoint 0 and along dim 1 at checkpoint 1; so do pairs "a" and "b" at both
    # checkpoints. Per subtask, the weighted sums are a: 0.5 * 1 + 0.5 * 0 and b: 0.5 * 0 + 0.5 * 1, so ROSE's max is
    # 0.5. Taking the max per checkpoint before summing would wrongly give 0.5 * 1 + 0.5 * 1 = 1.
    pool = [np.array([[1.0, 0.0]], dtype=np.float32), np.array([[0.0, 1.0]], dtype=np.float32)]
    pairs = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    scores, report = score_pool(pool, [pairs, pairs], np.array([0.5, 0.5]), ["a", "b"])
    np.testing.assert_allclose(scores, [0.5])
    assert report["per_subtask_mean"] == {"a": 0.5, "b": 0.5}
    # When one subtask matches at both checkpoints, it gets the full score.
    scores, _ = score_pool(pool, [pairs, pairs[::-1].copy()], np.array([0.5, 0.5]), ["a", "b"])
    np.testing.assert_allclose(scores, [1.0])


def test_progress_bar_does_not_change_scores():
    pool, val, weights = _features()
    with_bar, _ = score_pool(pool, val, weights, SUBTASKS, chunk_size=5, progress=True)
    np.testing.assert_array_equal(with_bar, score_pool(pool, val, weights, SUBTASKS, chunk_size=5)[0])


def test_memmap_pool(tmp_path):
    pool, val, weights = _features(seed=1, rows=50)
    memmaps = []
    for c, features in enumerate(pool):
        mm = np.memmap(tmp_path / f"ckpt{c}.f16", dtype=np.float16, mode="w+", shape=features.shape)
        mm[:] = features
        mm.flush()
        memmaps.append(np.memmap(tmp_path / f"ckpt{c}.f16", dtype=np.float16, mode="r", shape=features.shape))
    from_disk, _ = score_pool(memmaps, val, weights, SUBTASKS, chunk_size=16)
    in_memory, _ = score_pool([p.astype(np.float16) for p in pool], val, weights, SUBTASKS, chunk_size=50)
    np.testing.assert_allclose(from_disk, in_memory, rtol=1e-6, atol=1e-7)


def test_invalid_rows_score_as_min_float32_and_are_never_selected():
    pool, val, weights = _features(seed=2, rows=10)
    pool[1][3] = 0.0  # zero row at one checkpoint: features missing
    pool[2][5, 4] = np.nan  # broken features
    valid = np.ones(10, dtype=bool)
    valid[7] = False
    scores, report = score_pool(pool, val, weights, SUBTASKS, valid=valid, chunk_size=3)
    invalid = [3, 5, 7]
    assert np.all(scores[invalid] == INVALID_SCORE) and scores[invalid].dtype == np.float32
    assert np.isfinite(scores).all()
    counts = {key: report[key] for key in ("num_invalid", "num_masked", "num_zero_rows", "num_nonfinite_rows")}
    assert counts == {"num_invalid": 3, "num_masked": 1, "num_zero_rows": 1, "num_nonfinite_rows": 1}
    assert sum(report["argmax_subtask_counts"].values()) == 7
    selected = select_top(scores, size=10)
    assert len(selected) == 7 and not set(invalid) & set(selected.tolist())
    assert not {7} & set(select_top(np.arange(10.0), size=5, valid=valid).tolist())


def test_validation_nan_raises_naming_the_field():
    pool, val, weights = _features()
    val[1][2, 0] = np.inf
    with pytest.raises(ValueError, match=r"validation_features\[1\]"):
        score_pool(pool, val, weights, SUBTASKS)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda a: a.update(aggregation="sum"), "aggregation"),
        (lambda a: a.update(weights=np.ones(2)), "weights"),
        (lambda a: a.update(subtasks=SUBTASKS[:-1]), "subtasks"),
        (lambda a: a.update(chunk_size=0), "chunk_size"),
        (lambda a: a.update(valid=np.ones(5, dtype=bool)), "valid"),
        (lambda a: a.update(validation_features=a["validation_features"][:2]), "validation_features"),
        (lambda a: a.update(pool_features=[quantize_int8(p)[0] for p in a["pool_features"]]), "row_scales"),
        (lambda a: a.update(pool_features=[p[:, :5] for p in a["pool_features"]]), "validation_features"),
    ],
)
def test_score_pool_bad_arguments(change, name):
    pool, val, weights = _features()
    arguments = {"pool_features": pool, "validation_features": val, "weights": weights, "subtasks": SUBTASKS}
    change(arguments)
    with pytest.raises(ValueError, match=name):
        score_pool(**arguments)


def test_checkpoint_weights_are_normalised_mean_learning_rates():
    rates = [[1e-5, 2e-5, 3e-5], [1e-5], [0.5e-5, 0.5e-5, 0.5e-5, 0.5e-5]]
    np.testing.assert_allclose(checkpoint_weights(rates), np.array([2e-5, 1e-5, 0.5e-5]) / 3.5e-5, rtol=1e-12)
    # A linearly decaying schedule gives decreasing weights.
    decay = np.linspace(2e-5, 0, 41)[:-1]
    weights = checkpoint_weights([decay[i * 10 : (i + 1) * 10].tolist() for i in range(4)])
    assert np.all(np.diff(weights) < 0) and weights.sum() == pytest.approx(1.0)


def test_the_only_checkpoint_weighs_1_whatever_its_rates():
    # e.g. the robust scoring's one checkpoint of a warmup that logged its learning rate every 50 steps
    for rates in ([], [0.0, 0.0], [3e-5]):
        assert checkpoint_weights([rates]).tolist() == [1.0]


def test_checkpoint_weights_errors():
    with pytest.raises(ValueError, match=r"learning_rates_per_checkpoint\[1\]"):
        checkpoint_weights([[1e-5], []])
    with pytest.raises(ValueError, match="learning rate.*scheduler"):
        checkpoint_weights([[0.0, 0.0], [0.0]])
    with pytest.raises(ValueError, match=r"learning_rates_per_checkpoint\[0\]"):
        checkpoint_weights([[-1e-5]])


def test_select_top_breaks_ties_by_lower_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 2.0], dtype=np.float32)
    assert select_top(scores, size=3).tolist() == [1, 2, 4]
    assert select_top(scores, size=5).tolist() == [1, 2, 4, 3, 5]
    assert select_top(scores, size=4).dtype == np.int64


def test_select_top_fraction_rounds_half_up_and_keeps_at_least_one():
    scores = np.linspace(0, 1, 30)
    assert len(select_top(scores, fraction=0.05)) == 2  # 1.5 -> 2
    assert len(select_top(np.linspace(0, 1, 50), fraction=0.05)) == 3  # 2.5 -> 3
    assert len(select_top(scores, fraction=0.01)) == 1  # 0.3 -> at least 1
    assert select_top(scores, fraction=1.0).tolist() == list(range(29, -1, -1))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"size": 0}, "size"),
        ({"size": 11}, "size"),
        ({"size": 2.0}, "size"),
        ({"fraction": 0.1, "size": 2}, "exactly one"),
        ({}, "exactly one"),
        ({"size": 2, "valid": np.ones(3, dtype=bool)}, "valid"),
    ],
)
def test_select_top_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        select_top(np.arange(10.0), **kwargs)


def test_budget_curve_selections_are_nested():
    scores = np.random.default_rng(3).normal(size=500).astype(np.float32)
    curve = budget_curve(scores)
    assert list(curve) == [0.01, 0.02, 0.05, 0.1, 0.2]
    sizes = [len(indices) for indices in curve.values()]
    assert sizes == [5, 10, 25, 50, 100]
    for small, large in zip(list(curve.values())[:-1], list(curve.values())[1:]):
        assert large[: len(small)].tolist() == small.tolist()


def test_int8_round_trip():
    rng = np.random.default_rng(4)
    x = _unit_rows(rng, 20, 64) * rng.uniform(0.1, 10, size=(20, 1)).astype(np.float32)
    x[3] = 0.0
    q, scales = quantize_int8(x)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (20,)
    assert scales[3] == 1.0 and not q[3].any()
    np.testing.assert_array_equal(np.abs(q).max(axis=1)[np.arange(20) != 3], 127)
    error = np.abs(dequantize_int8(q, scales) - x)
    assert np.all(error <= scales[:, None] / 2 * (1 + 1e-5))
    with pytest.raises(ValueError, match="NaN"):
        quantize_int8(np.array([[np.nan, 1.0]]))


# --- rank_average (validation_objective="dpo+sft") --------------------------------------------------------------------
def _brute_force_rank_average(arrays, weights=None):
    """Each valid row's rank = 1 + rows strictly below + half of its ties (itself excluded), over the valid rows;
    the weighted mean over the arrays."""
    valid = np.all([np.isfinite(a) & (a != INVALID_SCORE) for a in arrays], axis=0)
    out = np.full(len(arrays[0]), INVALID_SCORE, dtype=np.float64)
    for z in np.flatnonzero(valid):
        ranks = []
        for a in arrays:
            others = a[valid]
            below, equal = (others < a[z]).sum(), (others == a[z]).sum() - 1
            ranks.append((1 + below + equal / 2) / valid.sum())
        out[z] = np.average(ranks, weights=weights)
    return out


def test_rank_average_equals_explicit_ranks_with_ties_and_invalid_rows():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, size=40).astype(np.float32)  # many ties
    b = rng.normal(size=40).astype(np.float32)
    a[[2, 9]] = INVALID_SCORE
    b[[9, 17]] = np.nan
    combined = rank_average([a, b])
    np.testing.assert_allclose(combined, _brute_force_rank_average([a, b]), rtol=1e-6)
    assert set(np.flatnonzero(combined == INVALID_SCORE)) == {2, 9, 17}
    assert combined.dtype == np.float32


def test_weighted_rank_average_equals_explicit_weighted_ranks():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 8, size=30).astype(np.float32), rng.normal(size=30).astype(np.float32)
    b[4] = INVALID_SCORE
    for weights in ([0.75, 0.25], [3.0, 1.0], [1.0, 0.0]):
        np.testing.assert_allclose(rank_average([a, b], weights), _brute_force_rank_average([a, b], weights), rtol=1e-6)
    # All the weight on one side: that side's ranking (its ties left as ties).
    only_a = rank_average([a, b], [1.0, 0.0])
    valid = np.arange(30) != 4
    assert np.all(np.sign(np.subtract.outer(only_a[valid], only_a[valid])) == np.sign(np.subtract.outer(a[valid], a[valid])))


@pytest.mark.parametrize("weights", [[1.0], [-1.0, 2.0], [0.0, 0.0], [np.nan, 1.0]])
def test_rank_average_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        rank_average([np.zeros(3), np.ones(3)], weights)


def test_rank_average_ignores_scale_and_keeps_a_single_ranking():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=50), rng.normal(size=50)
    np.testing.assert_array_equal(rank_average([a, b]), rank_average([1000 * a - 5, b / 1000]))
    single = rank_average([a])
    np.testing.assert_array_equal(np.argsort(-single, kind="stable"), np.argsort(-a, kind="stable"))


@pytest.mark.parametrize("arrays", [[], [np.zeros(3), np.zeros(4)], [np.zeros((2, 2))]])
def test_rank_average_bad_arguments(arrays):
    with pytest.raises(ValueError, match="scores"):
        rank_average(arrays)
