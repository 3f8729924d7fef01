"""Scoring without stored pool features (`store_pool_features=False`): one run's checkpoints featurized both ways
give the same per-pair similarities (explicit dot products of the rounded stored features), the same scores for
every objective, aggregation and supported method, and the same health signals; a killed run resumes to the same
bits. Tolerance: the two paths take the mean over a subtask's pairs before (stored) or after (streamed) the products,
so they agree to float32 rounding (~1e-7 on cosines), not bit for bit."""

import os

import numpy as np
import pytest
import torch
from helpers import make_lora_model, pool_dataset

from rose_hf import RoseConfig, score_store
from rose_hf.cache.store import dequantize_int8
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.features.preconditioner import AdamState
from rose_hf.pipeline import SelectionPipeline
from rose_hf.scoring.budget import select_top
from rose_hf.scoring.selection import select_from_store
from rose_hf.scoring.similarity import AGGREGATIONS

SETTINGS = dict(prefilter_fraction=None, projection_dim=96, chunk_size=8, feature_batch_size=4, feature_max_length=48, report=False)
ROWS, STEPS = 30, (4, 8)
LEARNING_RATES = {4: [2e-3] * 4, 8: [1e-3] * 4}
OBJECTIVES = ("dpo", "sft", "dpo+sft")


class Killed(Exception):
    pass


def _adam(num_params: int, seed: int) -> AdamState:
    generator = torch.Generator().manual_seed(seed)
    return AdamState(torch.randn(num_params, generator=generator) * 1e-3,
                     torch.rand(num_params, generator=generator) * 1e-6, 0.9, 0.999, 1e-8)  # fmt: skip


def featurize(tokenizer, selection_dir, on_chunk=None, **settings) -> SelectionPipeline:
    """Both checkpoints of one seeded run (same model, same Adam states) into `selection_dir`."""
    pool, task = pool_dataset(ROWS)
    config = RoseConfig(selection_dir=str(selection_dir), **{**SETTINGS, **settings})
    pipeline = SelectionPipeline(pool, task.validation.select(range(6)), config)
    model = make_lora_model(tokenizer, seed=3)
    pipeline.prepare(model, tokenizer)
    for seed, step in enumerate(STEPS):
        adam = _adam(pipeline.featurizer.collector.num_params, seed)
        pipeline.featurize(model, TrainingCheckpoint(step, LEARNING_RATES[step], adam), on_chunk=on_chunk)
    return pipeline


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory):
    """{(scoring, feature_dtype): (stored pipeline, streamed pipeline)}, each from the same model and checkpoints."""
    root = tmp_path_factory.mktemp("streamed")
    out = {}
    for scoring in ("paper", "robust"):
        for dtype in ("float16", "int8"):
            name = f"{scoring}-{dtype}"
            out[scoring, dtype] = tuple(
                featurize(tokenizer, root / f"{name}-{stored}", scoring=scoring, feature_dtype=dtype,
                          store_pool_features=stored)
                for stored in (True, False)
            )  # fmt: skip
    return out


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_similarities_are_dot_products_of_the_rounded_stored_features(runs, dtype):
    stored, streamed = runs["paper", dtype]
    for step in STEPS:
        ours, theirs = streamed.store.checkpoint(step), stored.store.checkpoint(step)
        assert not ours.stores_pool_features and not os.path.exists(os.path.join(ours.path, "pool.npy"))
        np.testing.assert_array_equal(ours.pool_status(), theirs.pool_status())
        features = np.asarray(theirs.pool_features(), dtype=np.float32)
        if dtype == "int8":
            features = dequantize_int8(theirs.pool_features(), theirs.pool_scales())
        for objective in ("dpo", "sft"):
            # The same run: the validation side is identical, computed before the pool or after it.
            validation = theirs.validation_features(objective)
            np.testing.assert_array_equal(ours.validation_features(objective), validation)
            expected = np.array([[float(np.dot(row, pair)) for pair in validation] for row in features])
            similarities = ours.pool_similarities(objective)
            assert similarities.shape == (ROWS, 6) and similarities.dtype == np.float32
            np.testing.assert_allclose(similarities, expected, atol=2e-7, rtol=0)
            assert np.abs(similarities).max() > 0.05  # not trivially zero


@pytest.mark.parametrize("scoring", ["paper", "robust"])
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_streamed_scores_equal_stored_scores(runs, scoring, dtype):
    stored, streamed = runs[scoring, dtype]
    subtasks = stored.subtasks
    for objective in OBJECTIVES:
        for aggregation in AGGREGATIONS:
            config = RoseConfig(scoring=scoring, validation_objective=objective, subtask_aggregation=aggregation,
                                **SETTINGS)  # fmt: skip
            ours = score_store(streamed.store, subtasks, config, num_rows=ROWS)
            theirs = score_store(stored.store, subtasks, config, num_rows=ROWS)
            case = f"{scoring} {dtype} {objective} {aggregation}"
            np.testing.assert_array_equal(ours.valid, theirs.valid, err_msg=case)
            np.testing.assert_array_equal(ours.weights, theirs.weights, err_msg=case)
            # dpo+sft scores are mean ranks: equal when both rankings are; cosines agree to float32 rounding.
            tolerance = 0 if objective == "dpo+sft" and scoring == "paper" else 1e-6
            np.testing.assert_allclose(ours.scores, theirs.scores, atol=tolerance, rtol=0, err_msg=case)
            np.testing.assert_allclose(ours.relevance, theirs.relevance, atol=1e-6, rtol=0, err_msg=case)
            if theirs.preference is None:
                assert ours.preference is None
            else:
                np.testing.assert_allclose(ours.preference, theirs.preference, atol=1e-6, rtol=0, err_msg=case)
            for a, b in zip(ours.half_scores, theirs.half_scores):
                np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=case)
            for a, b in zip(ours.objective_scores or (), theirs.objective_scores or ()):
                np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=case)
            assert (ours.objective_scores is None) == (theirs.objective_scores is None)
            assert select_top(ours.scores, size=3, valid=ours.valid).tolist() == select_top(
                theirs.scores, size=3, valid=theirs.valid).tolist(), case  # fmt: skip
            if scoring == "paper":
                counts = ("subtasks", "argmax_subtask_counts", "num_invalid", "num_zero_rows", "num_nonfinite_rows")
                assert {k: ours.info[k] for k in counts} == {k: theirs.info[k] for k in counts}, case


def test_selection_and_health_verdict_match(runs):
    stored, streamed = runs["paper", "float16"]
    config = RoseConfig(**SETTINGS)  # the default objective, dpo+sft
    ours = select_from_store(streamed.store, streamed.pool, streamed.subtasks, config, write=False)
    theirs = select_from_store(stored.store, stored.pool, stored.subtasks, config, write=False)
    assert ours.selected_indices == theirs.selected_indices
    assert ours.info["health"]["verdict"] == theirs.info["health"]["verdict"]
    for name, value in theirs.info["health"]["signals"].items():
        assert ours.info["health"]["signals"][name] == pytest.approx(value, abs=1e-6), name
    # Measured, not asserted: the disk each pool row takes per checkpoint, both ways (printed with -s).
    for label, run in (("stored", stored), ("streamed", streamed)):
        per_row = sum(run.store.checkpoint(s).nbytes() for s in STEPS) / (ROWS * len(STEPS))
        print(f"{label}: {per_row:.0f} bytes per pool row and checkpoint (projection_dim 96, 6 pairs, "
              f"chunks of {SETTINGS['chunk_size']})")
    assert ours.info["feature_bytes"] != theirs.info["feature_bytes"]
    from rose_hf.report import write_report

    report = write_report(streamed.store.root, streamed.pool, ours, config, streamed.store)
    with open(report) as handle:
        text = handle.read()
    assert "store_pool_features=False" in text and ours.info["health"]["verdict"] in text


def test_killed_streamed_run_resumes_to_the_same_bits(runs, tokenizer, tmp_path):
    _, reference = runs["paper", "float16"]
    seen = []

    def kill_mid_second_checkpoint(chunk):
        seen.append(chunk)
        if len(seen) == 6:  # 4 chunks per checkpoint: after two of the second checkpoint's
            raise Killed

    with pytest.raises(Killed):
        featurize(tokenizer, tmp_path / "run", kill_mid_second_checkpoint, store_pool_features=False)
    checkpoint = reference.store.checkpoint(8).__class__(str(tmp_path / "run" / "features" / "checkpoint-8"), 8)
    assert checkpoint.pending_chunks() == [2, 3] and checkpoint.has_validation("dpo")
    redone = []
    resumed = featurize(tokenizer, tmp_path / "run", redone.append, store_pool_features=False)
    assert redone == [2, 3], "finished chunks and checkpoints must not be recomputed"
    for step in STEPS:
        ours, theirs = resumed.store.checkpoint(step), reference.store.checkpoint(step)
        for objective in ("dpo", "sft"):
            np.testing.assert_array_equal(ours.pool_similarities(objective), theirs.pool_similarities(objective))
            np.testing.assert_array_equal(ours.validation_features(objective), theirs.validation_features(objective))
        np.testing.assert_array_equal(ours.pool_status(), theirs.pool_status())
    config = RoseConfig(**SETTINGS)
    np.testing.assert_array_equal(score_store(resumed.store, resumed.subtasks, config).scores,
                                  score_store(reference.store, reference.subtasks, config).scores)  # fmt: skip
