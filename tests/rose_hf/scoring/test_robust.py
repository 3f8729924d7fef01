"""The robust scoring against explicit computation; the paper scoring pinned to the scores of
the code before the robust scoring existed (commit 89727e7)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import ROOT, make_lora_model, pool_dataset

from rose_hf.cache.store import quantize_int8
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.features.preconditioner import AdamState
from rose_hf.pipeline import SelectionPipeline
from rose_hf.rose_config import RoseConfig
from rose_hf.scoring.robust import DEMOTE, relevance_and_preference, robust_scores
from rose_hf.scoring.similarity import INVALID_SCORE

PINNED = os.path.join(ROOT, "tests", "data", "paper_scores_89727e7.npy")


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_relevance_and_preference_equal_explicit_dot_products():
    rng = np.random.default_rng(0)
    pool, chosen, dpo = unit(rng.normal(size=(50, 16))), unit(rng.normal(size=(6, 16))), unit(rng.normal(size=(6, 16)))
    valid = np.ones(50, dtype=bool)
    valid[[3, 17]] = False
    relevance, preference = relevance_and_preference(pool, chosen, dpo, valid, chunk_size=7)
    for z in range(50):
        if not valid[z]:
            assert np.isnan(relevance[z]) and np.isnan(preference[z])
            continue
        assert relevance[z] == pytest.approx(max(float(pool[z] @ c) for c in chosen), abs=1e-6)
        assert preference[z] == pytest.approx(np.mean([float(pool[z] @ d) for d in dpo]), abs=1e-6)
    # int8 storage: the same parts up to the quantisation error.
    q, scales = quantize_int8(pool)
    rel8, pref8 = relevance_and_preference(q, chosen, dpo, valid, row_scales=scales, chunk_size=11)
    np.testing.assert_allclose(rel8[valid], relevance[valid], atol=2e-2)
    np.testing.assert_allclose(pref8[valid], preference[valid], atol=2e-2)
    # No preference side (LESS): relevance alone.
    rel_only, none = relevance_and_preference(pool, chosen, None, valid)
    assert none is None and np.allclose(rel_only[valid], relevance[valid])


def test_robust_scores_rank_preferred_rows_first_by_relevance():
    relevance = np.array([0.9, 0.8, 0.5, 0.3, np.nan, 0.1])
    preference = np.array([-0.1, 0.2, 0.3, 0.0, 0.5, 0.4])
    scores = robust_scores(relevance, preference)
    order = np.argsort(-scores.astype(np.float64), kind="stable").tolist()
    assert order[:3] == [1, 2, 5]  # preference > 0, by relevance
    assert order[3:5] == [0, 3]  # then the others (preference 0 is not positive), by relevance
    assert scores[4] == INVALID_SCORE
    assert scores[0] == pytest.approx(0.9 - DEMOTE)
    np.testing.assert_array_equal(robust_scores(relevance, None)[:4], relevance[:4].astype(np.float32))


def test_momentum_free_scaling_is_adams_step_without_momentum():
    generator = torch.Generator().manual_seed(0)
    g, m, v = torch.randn(3, 8, generator=generator), torch.randn(8, generator=generator), torch.rand(8) * 1e-4
    adam = AdamState(m, v, 0.9, 0.999, 1e-8)
    torch.testing.assert_close(adam.scale(g), g / torch.sqrt(0.999 * v + 0.001 * g**2 + 1e-8))
    torch.testing.assert_close(adam.precondition(g), (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g**2 + 1e-8))


def _pinned_setup(tokenizer, output_dir, scoring):
    """The setup the pinned scores were computed with (two checkpoints, a random Adam state)."""
    pool, task = pool_dataset(40)
    model = make_lora_model(tokenizer, seed=3)
    config = RoseConfig(selection_dir=str(output_dir), prefilter_fraction=None, projection="sjlt", projection_dim=128, chunk_size=16,
                        feature_batch_size=4, feature_max_length=48, report=False, scoring=scoring, validation_objective="dpo")
    pipeline = SelectionPipeline(pool, task.validation, config)
    pipeline.prepare(model, tokenizer)
    n = pipeline.featurizer.collector.num_params
    for step, seed in ((5, 0), (10, 1)):
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.requires_grad:
                param.data.add_(torch.randn(param.shape, generator=generator) * 0.01)
        adam = AdamState(torch.randn(n, generator=generator) * 1e-3, torch.rand(n, generator=generator) * 1e-6,
                         0.9, 0.999, 1e-8)
        pipeline.featurize(model, TrainingCheckpoint(step, [1e-3 * (1 - step / 20)] * 5, adam))
    return pipeline, model


def test_paper_scoring_is_bit_identical_to_the_code_before_robust(tokenizer, tmp_path):
    """Bit for bit on the CPU that wrote the pinned file (an AMD EPYC); another CPU's float32 kernels move the last
    bits (2.7e-6 at most on an Intel Xeon, where the pinned commit itself gives the same), never the ranking."""
    pipeline, _ = _pinned_setup(tokenizer, tmp_path, "paper")
    scores, pinned = pipeline.select().scores, np.load(PINNED)
    np.testing.assert_allclose(scores, pinned, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), np.argsort(-pinned, kind="stable"))


def test_robust_scores_equal_explicit_computation_from_the_last_checkpoint(tokenizer, tmp_path):
    pipeline, _ = _pinned_setup(tokenizer, tmp_path, "robust")
    result = pipeline.select()
    last = pipeline.store.completed_checkpoints()[-1]
    pool = last.pool_features().astype(np.float64)
    chosen, dpo = last.validation_features("sft"), last.validation_features("dpo")
    ok = last.pool_status() == 1
    for z in np.flatnonzero(ok):
        relevance = max(float(pool[z] @ c) for c in chosen)
        preference = np.mean([float(pool[z] @ d) for d in dpo])
        expected = relevance if preference > 0 else relevance - DEMOTE
        assert result.scores[z] == pytest.approx(expected, abs=1e-5)
    assert result.weights.tolist() == [0.0, 1.0]
    assert result.info["health"]["verdict"] in ("ok", "noise")
    assert result.info["args"]["scoring"] == "robust"


def test_robust_and_paper_features_differ_at_the_same_checkpoint(tokenizer, tmp_path):
    """The same model and Adam state under both scorings: the momentum term moves every row (the formula itself is
    checked in `test_momentum_free_scaling_is_adams_step_without_momentum`)."""
    paper, _ = _pinned_setup(tokenizer, tmp_path / "paper", "paper")
    robust, _ = _pinned_setup(tokenizer, tmp_path / "robust", "robust")
    a = paper.store.completed_checkpoints()[-1].pool_features().astype(np.float32)
    b = robust.store.completed_checkpoints()[-1].pool_features().astype(np.float32)
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-2)
    cosines = np.sum(a * b, axis=1)
    assert np.all(cosines < 0.999)  # the momentum changed every row
