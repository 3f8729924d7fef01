"""The selection plan: its bytes are what a run writes, it is stated before the first feature pass with a time
estimate after the first rows, and a disk too small for it is refused before any training step, writing nothing."""

import collections
import glob
import os

import numpy as np
import pytest
import torch
from helpers import pool_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf.cache.store import checkpoint_file_bytes, npy_nbytes
from rose_hf.errors import DiskSpaceError
from rose_hf.plan import SelectionPlan
from rose_hf.rose_config import RoseConfig
from rose_hf.trainer.callback import RoseDataSelector

EXTRA_COLUMNS = ["family", "correct", "source", "id"]


def _trainer(tokenizer, root, pool, selector, epochs=2, **kwargs):
    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(root / "sft"), num_train_epochs=epochs, per_device_train_batch_size=8,
                     learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, bf16=False, max_length=64,
                     disable_tqdm=True, seed=0, **{"save_strategy": "epoch", **kwargs})  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip
    return SFTTrainer(model=build_model("llama", tokenizer, seed=0), args=args,
                      train_dataset=pool.select(range(16)).remove_columns(EXTRA_COLUMNS), processing_class=tokenizer,
                      peft_config=lora, callbacks=[selector])  # fmt: skip


def _config(root, **kwargs):
    defaults = dict(prefilter_fraction=None, projection_dim=48, chunk_size=7, feature_batch_size=4, feature_max_length=64, report=False)
    return RoseConfig(selection_dir=str(root / "rose"), **{**defaults, **kwargs})


def _files(folder):
    return {os.path.relpath(path, folder): os.path.getsize(path)
            for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(path)}


@pytest.mark.parametrize(
    "dtype,prefilter,stored",
    [("float16", None, True), ("int8", None, True), ("float16", 0.5, False)],
    ids=["float16", "int8", "prefilter-streamed"],
)
def test_plan_bytes_equal_the_bytes_a_tiny_run_writes(tokenizer, tmp_path, capsys, dtype, prefilter, stored):
    pool, task = pool_dataset(30)
    pairs = task.validation.select(range(5))
    config = _config(tmp_path, feature_dtype=dtype, prefilter_fraction=prefilter, store_pool_features=stored)
    selector = RoseDataSelector(pool, pairs, config)
    _trainer(tokenizer, tmp_path, pool, selector).train()
    plan = selector.pipeline.plan
    featured = 30 if prefilter is None else 15
    assert (plan.pool_rows, plan.featured_rows, plan.num_passes, plan.num_pairs) == (30, featured, 2, 5)
    files = _files(str(tmp_path / "rose"))
    steps = sorted({path.split(os.sep)[1] for path in files if path.startswith("features")})
    assert len(steps) == 2
    per_pass = plan.checkpoint_bytes()
    for step in steps:
        written = collections.Counter()
        for path, size in files.items():
            if path.startswith(os.path.join("features", step)):
                name = os.path.relpath(path, os.path.join("features", step))
                if name.startswith("chunks"):
                    name = "chunks/*.done"
                elif name.startswith("similarities"):
                    name = name.split("-")[0] + "-*.npy"
                written[name] += size
        # Every array file and the chunk records, byte for byte; the JSON records besides them are bounded.
        assert {name: written[name] for name in per_pass} == per_pass
    assert sum(files.values()) <= plan.total_bytes
    if prefilter is None:
        arrays = sum(size for path, size in files.items() if path.endswith(".npy") or path.endswith(".done"))
        assert arrays == plan.array_bytes - plan.selection_bytes() + npy_nbytes((30,), np.float32) + npy_nbytes(
            (30,), np.bool_
        )
        # the arithmetic itself: rows x dim x dtype bytes per pass, as stated
        assert per_pass["pool.npy"] - 128 == 30 * 48 * np.dtype(dtype).itemsize
    else:  # the first stage's arrays: every row's cosine to every pair, its status, the kept rows
        first = sum(files[os.path.join("prefilter", name)] for name in ("pool.npy", "pool_status.npy", "kept.npy"))
        assert plan.first_stage_bytes() == first
        assert "pool.npy" not in per_pass  # streamed: only (rows, pairs) similarities per objective
        assert per_pass["similarities/dpo-*.npy"] == sum(128 + rows * 5 * 4 for rows in (7, 7, 1))


def test_plan_is_logged_before_the_first_pass_and_the_estimate_after_its_first_rows(tokenizer, tmp_path, capsys,
                                                                                      monkeypatch):
    import rose_hf.features.featurizer as featurizer

    pool, task = pool_dataset(30)
    selector = RoseDataSelector(pool, task.validation.select(range(4)), _config(tmp_path))
    seen = []
    original = featurizer.compute_pool_features

    def spy(*args, **kwargs):  # what the log held when each feature pass began
        seen.append(capsys.readouterr().out)
        return original(*args, **kwargs)

    monkeypatch.setattr(featurizer, "compute_pool_features", spy)
    _trainer(tokenizer, tmp_path, pool, selector).train()
    rest = capsys.readouterr().out
    assert len(seen) == 2
    assert "selection plan: 30 pool rows all get gradient features; 2 feature pass(es) of 30 rows" in seen[0]
    assert "selection estimate" not in seen[0]
    # After the first chunk (7 rows) of the first pass: 23 rows of it and 30 of the second remain.
    assert "selection estimate:" in seen[1] and "53 feature rows left in this and 1 more pass(es)" in seen[1]
    assert "selection estimate" not in rest  # once per run
    assert selector.pipeline.clock.estimate["remaining_rows"] == 53


def test_a_disk_too_small_fails_before_any_training_step_and_writes_nothing(tokenizer, tmp_path, monkeypatch):
    import shutil

    pool, task = pool_dataset(30)
    selector = RoseDataSelector(pool, task.validation.select(range(4)), _config(tmp_path / "sub"))
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    trainer = _trainer(tokenizer, tmp_path, pool, selector)
    with pytest.raises(DiskSpaceError, match="feature_dtype='int8'") as error:
        trainer.train()
    for setting in ("projection_dim", "prefilter_fraction", "store_pool_features=False", "1.00 KB free"):
        assert setting in str(error.value)
    assert trainer.state.global_step == 0
    assert not os.path.exists(tmp_path / "sub" / "rose")
    assert not glob.glob(str(tmp_path / "sft" / "checkpoint-*"))


def test_plan_counts_the_save_at_the_end_of_a_steps_strategy(tokenizer, tmp_path):
    pool, task = pool_dataset(20)
    selector = RoseDataSelector(pool, task.validation.select(range(4)), _config(tmp_path))
    # 16 rows in batches of 8 for 2 epochs: 4 steps, saved at step 3 and, at the end, step 4
    _trainer(tokenizer, tmp_path, pool, selector, save_strategy="steps", save_steps=3).train()
    assert selector.pipeline.plan.num_passes == len(selector.pipeline.completed_steps()) == 2


class _Config:
    """The two settings landing in parallel, present on a config (the plan reads them with getattr)."""

    selection_fraction, selection_size, feature_dtype, chunk_size = 0.05, None, "float16", 1024

    def __init__(self, prefilter_fraction=None, store_pool_features=True):
        self.prefilter_fraction, self.store_pool_features = prefilter_fraction, store_pool_features


def test_plan_arithmetic_with_prefilter_and_without_stored_features():
    stored = SelectionPlan.from_config(RoseConfig(prefilter_fraction=None), pool_rows=1000, num_passes=4, dim=8192, num_pairs=10,
                                       warmup_rows=50, warmup_epochs=4)  # fmt: skip
    assert stored.checkpoint_bytes()["pool.npy"] == 128 + 1000 * 8192 * 2
    assert stored.pool_epochs() == pytest.approx({"warmup": 0.2, "features": 4.0, "total": 4.2})
    config = RoseConfig(prefilter_fraction=0.2, store_pool_features=False)
    prefiltered = SelectionPlan.from_config(config, pool_rows=1001, num_passes=2, dim=8192, num_pairs=10,
                                            warmup_rows=50, warmup_epochs=4)  # fmt: skip
    assert prefiltered.featured_rows == 201  # ceil(0.2 x 1001)
    assert prefiltered.checkpoint_bytes()["similarities/sft-*.npy"] == 128 + 201 * 10 * 4  # one chunk of 1,024 rows
    assert "pool.npy" not in prefiltered.checkpoint_bytes()
    cost = prefiltered.pool_epochs()
    assert cost["first_stage"] == pytest.approx(1 / 3) and cost["features"] == pytest.approx(2 * 201 / 1001)
    line = prefiltered.describe()
    assert "first stage: one forward-only pass" in line and "keeps 201 (20%)" in line
    assert checkpoint_file_bytes(10, 4, "int8", 2, 4)["pool_scales.npy"] == 128 + 40
