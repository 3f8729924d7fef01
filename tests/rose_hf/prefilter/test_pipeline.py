"""A warmup with the prefilter on: the gradient features cover only the kept rows, the scores and the selection
refer to the whole pool, rows outside the kept set are never selected, and each kept row scores what the same warmup
without a prefilter scores it. Without a prefilter, the run and its cache are those of before the field existed."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import pool_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf import RoseConfig, RoseDataSelector
from rose_hf.scoring.similarity import INVALID_SCORE

NUM_ROWS = 64  # the last row's prompt fills max_length: no completion token, so it has no training target


def run_warmup(tokenizer, pool, pairs, root, **rose):
    defaults = dict(projection_dim=64, chunk_size=16, feature_batch_size=8, feature_max_length=64, report=False,
                    scoring="paper", validation_objective="dpo", selection_fraction=0.1, prefilter_fraction=None)  # fmt: skip
    config = RoseConfig(selection_dir=str(root / "rose"), **{**defaults, **rose})
    selector = RoseDataSelector(pool, pairs, config)
    args = SFTConfig(output_dir=str(root / "sft"), num_train_epochs=2, per_device_train_batch_size=8,
                     learning_rate=1e-3, save_strategy="epoch", logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, max_length=64, disable_tqdm=True, seed=0)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(0)
    warmup = pool.select(range(16)).remove_columns(["family", "correct", "source", "id"])
    trainer = SFTTrainer(model=build_model("llama", tokenizer, seed=0), args=args, train_dataset=warmup,
                         processing_class=tokenizer, peft_config=lora, callbacks=[selector])  # fmt: skip
    trainer.train()
    return selector


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory):
    pool, task = pool_dataset(NUM_ROWS - 1)
    long_row = {**pool[0], "prompt": "count the numbers in the list " + "5 " * 80 + ".", "id": 10_000}
    pool = Dataset.from_list(list(pool) + [long_row])
    pairs = task.validation
    root = tmp_path_factory.mktemp("prefilter")
    full = run_warmup(tokenizer, pool, pairs, root / "full")
    filtered = run_warmup(tokenizer, pool, pairs, root / "filtered", prefilter_fraction=0.4, report=True)
    return full, filtered


def test_features_only_for_kept_rows_and_selection_in_pool_indices(runs):
    full, filtered = runs
    kept = filtered.pipeline.prefilter.kept
    assert len(kept) == 26  # ceil(0.4 * 64)
    assert NUM_ROWS - 1 not in kept.tolist()  # no training target: never kept
    root = filtered.config.selection_dir
    np.testing.assert_array_equal(np.load(os.path.join(root, "prefilter", "kept.npy")), kept)
    for step in filtered.pipeline.completed_steps():
        features = np.load(os.path.join(root, "features", f"checkpoint-{step}", "pool.npy"))
        assert features.shape == (len(kept), 64)
        # The kept rows' features are those the same warmup computes for them over the whole pool.
        everything = np.load(os.path.join(full.config.selection_dir, "features", f"checkpoint-{step}", "pool.npy"))
        np.testing.assert_allclose(features.astype(np.float32), everything[kept].astype(np.float32), atol=2.5e-4)
    scores = filtered.scores
    assert scores.shape == (NUM_ROWS,)
    outside = np.setdiff1d(np.arange(NUM_ROWS), kept)
    assert (scores[outside] == INVALID_SCORE).all() and not filtered.result.valid[outside].any()
    np.testing.assert_allclose(scores[kept], full.scores[kept], atol=1e-3, rtol=0)
    selected = filtered.selected_indices
    assert len(selected) == 6 and set(selected) <= set(kept.tolist())  # floor(0.1 * 64 + 0.5), of the whole pool
    # The best kept rows of the unfiltered ranking (its scores, restricted to the kept rows).
    order = [int(i) for i in np.argsort(-full.scores, kind="stable") if i in set(kept.tolist())]
    assert selected == order[:6]
    with open(os.path.join(root, "selected_indices.json")) as handle:
        assert json.load(handle) == selected
    assert filtered.selected_dataset["id"] == [filtered.pipeline.pool[i]["id"] for i in selected]
    info = json.load(open(os.path.join(root, "selection.json")))
    assert info["prefilter"]["num_kept"] == 26 and info["num_pool"] == NUM_ROWS
    report = open(os.path.join(root, "report.md")).read()  # the report reads the whole-pool scores
    assert "kept 26 rows for the gradient features" in report


def test_the_kept_set_keys_the_feature_run(runs):
    _, filtered = runs
    run = json.load(open(os.path.join(filtered.config.selection_dir, "run.json")))
    assert run["prefilter_fraction"] == 0.4 and run["prefilter"]["num_kept"] == 26


def test_without_prefilter_the_run_and_its_cache_are_unchanged(runs):
    full, _ = runs
    root = full.config.selection_dir
    run = json.load(open(os.path.join(root, "run.json")))
    # The fields of run.json before the prefilter existed, and nothing else (`store_pool_features` is recorded always;
    # a run.json written before it existed reads as its default: cache/store.py RECORDED_DEFAULTS).
    assert set(run) == {"adapter_config_hash", "tokenizer_hash", "assistant_only_loss", "completion_only_loss",
                        "pool_fingerprint", "pool_size", "validation_fingerprint", "scoring", "beta", "loss_type",
                        "label_smoothing", "projection", "projection_dim", "projection_seed", "preconditioner",
                        "max_length", "feature_dtype", "chunk_size", "store_pool_features", "warmup"}  # fmt: skip
    assert not os.path.exists(os.path.join(root, "prefilter"))
    assert full.pipeline.prefilter is None and full.pipeline.feature_rows is full.pipeline.pool_tokens
    assert "prefilter" not in json.load(open(os.path.join(root, "selection.json")))
    for step in full.pipeline.completed_steps():
        assert np.load(os.path.join(root, "features", f"checkpoint-{step}", "pool.npy")).shape == (NUM_ROWS, 64)


def test_a_selection_size_the_kept_rows_cannot_hold_fails_at_construction(tmp_path):
    pool, task = pool_dataset(40)
    config = RoseConfig(selection_dir=str(tmp_path), prefilter_fraction=0.1, selection_size=5)
    with pytest.raises(ValueError, match="prefilter_fraction=0.1 keeps 4 of the pool's 40 rows.*selection_size=5"):
        RoseDataSelector(pool, task.validation, config)
