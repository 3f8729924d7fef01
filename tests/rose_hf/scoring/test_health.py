"""The health check (`rose_hf.scoring.health`): its signals against explicit computation, its verdicts and messages, and the
half-pair scores of a real cache against scoring that cache with only those pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import write_feature_store

from rose_hf.rose_config import RoseConfig
from rose_hf.scoring.budget import select_top
from rose_hf.scoring.health import HEALTH_THRESHOLD, pair_halves, selection_health, top_overlap
from rose_hf.scoring.selection import score_store
from rose_hf.scoring.similarity import INVALID_SCORE, checkpoint_weights, rank_average, score_pool


def test_pair_halves_alternate_within_each_subtask():
    subtasks = ["a", "b", "a", "a", "b", "c", "b", "a"]
    first, second = pair_halves(subtasks)
    assert sorted(first + second) == list(range(len(subtasks)))
    for name in set(subtasks):
        pairs = [i for i, s in enumerate(subtasks) if s == name]
        assert [i for i in pairs if i in first] == pairs[0::2] and [i for i in pairs if i in second] == pairs[1::2]
    assert pair_halves(["a", "b"]) == ([0, 1], [])  # one pair per subtask: nothing to compare


def test_top_overlap_is_the_shared_share_of_two_top_k_sets():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=60), rng.normal(size=60)
    for k in (1, 5, 17, 60):
        expected = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
        assert top_overlap(a, b, k) == pytest.approx(expected)
    a[3] = INVALID_SCORE  # never selected, as in select_top
    assert 3 not in select_top(a, size=59) and top_overlap(a, a, 59) == 1.0


def _case(agreeing_rows: int, budget: int = 10, rows: int = 100):
    """Half scores whose top-`budget` sets share exactly `agreeing_rows` rows."""
    first = np.zeros(rows)
    second = np.zeros(rows)
    first[:budget] = 1.0
    second[budget - agreeing_rows: 2 * budget - agreeing_rows] = 1.0
    return first, second


def test_verdict_follows_the_agreement_of_the_two_objectives_and_names_the_fix():
    relevance = np.linspace(1, 0, 100)
    preference = np.where(np.arange(100) < 30, 1.0, -1.0)
    top = np.arange(10)
    agreeing = int(np.ceil(HEALTH_THRESHOLD * 10))
    ok = selection_health(relevance, preference, top, 10, _case(7), _case(agreeing))
    assert ok["verdict"] == "ok" and ok["signals"]["objective_agreement"] == pytest.approx(agreeing / 10)
    assert ok["signals"]["pair_split_agreement"] == pytest.approx(0.7)
    noise = selection_health(relevance, preference, top, 10, _case(10), _case(agreeing - 1))
    assert noise["verdict"] == "noise" and noise["signals"]["objective_agreement"] == pytest.approx((agreeing - 1) / 10)
    assert "more typical, preference pairs" in noise["message"] and "warm up longer" in noise["message"]
    thin = selection_health(relevance, preference, top, 10, None, _case(10))
    assert thin["verdict"] == "unchecked" and "at least 2 preference pairs per subtask" in thin["message"]
    assert selection_health(relevance, None, top, 10, _case(10), None)["verdict"] == "unchecked"
    # The recorded signals, written out.
    med = np.median(relevance)
    assert ok["signals"]["tail_separation"] == pytest.approx((relevance[top].mean() - med) / np.median(np.abs(relevance - med)))
    assert ok["signals"]["preferred_share"] == 1.0 and ok["signals"]["selected_preferred_share"] == 1.0


@pytest.mark.parametrize("objective", ["dpo", "sft", "dpo+sft"])
def test_half_scores_of_a_cache_are_its_scoring_with_only_those_pairs(tmp_path, objective):
    """score_store's half scores against score_pool called on the half's validation rows by hand."""
    subtasks = ["x", "y", "x", "y", "x", "y", "x"]
    store, pool, validation, learning_rates = write_feature_store(tmp_path, subtasks)
    config = RoseConfig(selection_dir=str(tmp_path), validation_objective=objective)
    scored = score_store(store, subtasks, config, num_rows=40)
    weights = checkpoint_weights(learning_rates)
    for half, scores in zip(pair_halves(subtasks), scored.half_scores):
        parts = [score_pool(pool, [v[name][half] for v in validation], weights, [subtasks[p] for p in half])[0]
                 for name in {"dpo": ["dpo"], "sft": ["sft"], "dpo+sft": ["dpo", "sft"]}[objective]]  # fmt: skip
        expected = parts[0] if len(parts) == 1 else rank_average(parts, [config.dpo_weight, 1 - config.dpo_weight])
        np.testing.assert_array_equal(scores, expected)
    # The two sides of the objective check: each objective's paper score over every pair, whatever the objective.
    for name, side in zip(("dpo", "sft"), scored.objective_scores):
        np.testing.assert_array_equal(side, score_pool(pool, [v[name] for v in validation], weights, subtasks)[0])
    robust = score_store(store, subtasks, dataclasses.replace(config, scoring="robust",
                         validation_objective="dpo"), num_rows=40)  # fmt: skip
    assert robust.half_scores is not None and not np.array_equal(robust.half_scores[0], robust.half_scores[1])
    assert robust.objective_scores[0] is robust.preference and robust.objective_scores[1] is robust.relevance
    # One pair per subtask: no second half, no half scores, and the verdict says why.
    two, *_ = write_feature_store(tmp_path / "two", ["x", "y"])
    thin = score_store(two, ["x", "y"], config, num_rows=40)
    assert thin.half_scores is None
    assert selection_health(thin.relevance, thin.preference, np.arange(2), 2, thin.half_scores)["verdict"] == "unchecked"
