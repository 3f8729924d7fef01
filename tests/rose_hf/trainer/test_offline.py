"""`select_from_checkpoints` on a plain warmup that logged its learning rate rarely (`logging_steps=50`): one
checkpoint needs no rate; several get every step's rate rebuilt from the saved scheduler, equal to a warmup that
logged every step, or an error that names the fix. And the pool-features progress bar of such a pass moves per batch."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import pool_dataset
from peft import LoraConfig, PeftModel
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf.features.checkpoint import saved_learning_rates
from rose_hf.offline import checkpoint_dirs, select_from_checkpoints
from rose_hf.rose_config import RoseConfig

STEPS_PER_EPOCH = 4  # 16 rows, 4 per step


def warmup(tokenizer, pool, output_dir, logging_steps, **kwargs):
    """A plain SFT LoRA warmup, nothing rose_hf-specific: 3 epochs, one checkpoint per epoch, a warmup then decay."""
    torch.manual_seed(0)  # the adapter's initialisation
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=3, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type="linear", warmup_steps=3, save_strategy="epoch", logging_steps=logging_steps, report_to=[],
        use_cpu=True, bf16=False, max_length=64, disable_tqdm=True, seed=0, activation_checkpointing=False, **kwargs,
    )  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    rows = pool.select(range(16)).select_columns(["prompt", "completion"])
    SFTTrainer(model=build_model("llama", tokenizer, seed=0), args=args, train_dataset=rows, processing_class=tokenizer,
               peft_config=lora).train()  # fmt: skip
    return checkpoint_dirs(str(output_dir))


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    pool, task = pool_dataset(16)
    dense = warmup(tokenizer, pool, root / "dense", logging_steps=1)
    sparse = warmup(tokenizer, pool, root / "sparse", logging_steps=50)
    partial = warmup(tokenizer, pool, root / "partial", logging_steps=5)
    return {"root": root, "pool": pool, "pairs": task.validation.select(range(4)), "dense": dense, "sparse": sparse,
            "partial": partial}


def dense_rates(checkpoint):
    with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    return [e["learning_rate"] for e in history if "learning_rate" in e]


def select(tokenizer, runs, checkpoints, output_dir, scoring="paper", **kwargs):
    model = PeftModel.from_pretrained(build_model("llama", tokenizer, seed=0), checkpoints[0], is_trainable=True)
    config = RoseConfig(selection_dir=str(output_dir), prefilter_fraction=None, projection_dim=64, chunk_size=16, feature_batch_size=8,
                        feature_max_length=64, report=False, scoring=scoring, selection_fraction=0.25, **kwargs)  # fmt: skip
    return select_from_checkpoints(model, checkpoints, runs["pool"], runs["pairs"], tokenizer, config)


def test_sparse_log_rates_are_rebuilt_exactly_from_the_saved_scheduler(runs):
    logged = dense_rates(runs["dense"][-1])  # every step's rate, as the Trainer used it
    assert len(logged) == 3 * STEPS_PER_EPOCH and len(set(logged)) > 3  # warmup and decay: the rates differ
    assert dense_rates(runs["sparse"][-1]) == []
    for start, checkpoint in zip((0, 4, 8), runs["sparse"]):
        end = start + STEPS_PER_EPOCH
        np.testing.assert_allclose(saved_learning_rates(checkpoint, start, end), logged[start:end], rtol=1e-6)
        assert saved_learning_rates(runs["dense"][end // STEPS_PER_EPOCH - 1], start, end) == logged[start:end]
        # A log of every 5th step holds one rate of steps 5-8: all four come from the schedule, which agrees with it.
        partial = runs["partial"][end // STEPS_PER_EPOCH - 1]
        np.testing.assert_allclose(saved_learning_rates(partial, start, end), logged[start:end], rtol=1e-6)


def test_a_schedule_that_disagrees_with_the_log_is_refused(runs, tmp_path):
    tampered = str(tmp_path / "checkpoint-8")
    shutil.copytree(runs["partial"][1], tampered)
    path = os.path.join(tampered, "trainer_state.json")
    state = json.load(open(path))
    for entry in state["log_history"]:
        if entry.get("step") == 5 and "learning_rate" in entry:
            entry["learning_rate"] *= 2  # as if another schedule had run
    json.dump(state, open(path, "w"))
    with pytest.raises(ValueError, match="at step 5, but the schedule rebuilt.*logging_steps=1"):
        saved_learning_rates(tampered, 4, 8)


def test_a_schedule_that_cannot_be_rebuilt_names_the_fix(runs, tmp_path):
    broken = str(tmp_path / "checkpoint-8")
    shutil.copytree(runs["sparse"][1], broken)
    os.remove(os.path.join(broken, "scheduler.pt"))
    with pytest.raises(ValueError, match=r"logs the learning rate of 0 of steps 5-8.*scheduler\.pt.*logging_steps=1"):
        saved_learning_rates(broken, 4, 8)


def test_one_checkpoint_needs_no_logged_rate(tokenizer, runs, tmp_path):
    for scoring in ("robust", "paper"):
        result = select(tokenizer, runs, runs["sparse"][-1:], tmp_path / scoring, scoring)
        assert result.weights.tolist() == [1.0] and len(result.selected_indices) == 4, scoring
    # Robust scoring given every checkpoint reads only the last one, so needs no rate either.
    result = select(tokenizer, runs, runs["sparse"], tmp_path / "robust_all", "robust")
    assert result.weights.tolist()[-1] == 1.0


def test_several_checkpoints_of_a_sparse_log_weigh_as_a_dense_one(tokenizer, runs, tmp_path):
    dense = select(tokenizer, runs, runs["dense"], tmp_path / "dense")
    sparse = select(tokenizer, runs, runs["sparse"], tmp_path / "sparse")
    logged = np.asarray(dense_rates(runs["dense"][-1])).reshape(3, STEPS_PER_EPOCH).mean(axis=1)
    np.testing.assert_allclose(dense.weights, logged / logged.sum(), rtol=1e-12)
    np.testing.assert_allclose(sparse.weights, dense.weights, rtol=1e-6)


def test_num_feature_checkpoints_reads_the_last_saves_weighted_since_the_save_before(tokenizer, runs, tmp_path):
    """2 of 3 saves: the 2nd and the 3rd (`featurized_saves`), each weighing the mean rate of its own epoch, as the
    live callback weighs them; their features are those of the run over every save."""
    every = select(tokenizer, runs, runs["dense"], tmp_path / "every")
    two = select(tokenizer, runs, runs["dense"], tmp_path / "two", num_feature_checkpoints=2)
    assert two.steps == every.steps[1:] == [8, 12]
    logged = np.asarray(dense_rates(runs["dense"][-1])).reshape(3, STEPS_PER_EPOCH).mean(axis=1)[1:]
    np.testing.assert_allclose(two.weights, logged / logged.sum(), rtol=1e-12)
    for step in (8, 12):
        np.testing.assert_array_equal(*(np.load(str(tmp_path / name / "features" / f"checkpoint-{step}" / "pool.npy"))
                                        for name in ("two", "every")))  # fmt: skip


def test_pool_features_bar_moves_per_batch(tokenizer, runs, tmp_path, monkeypatch):
    """On a pool smaller than one chunk the bar stood at 0 for the whole pass (it moved once per chunk)."""
    from tqdm.auto import tqdm

    import rose_hf.features.featurizer

    updates = []

    class RecordingBar(tqdm):
        def update(self, n=1):
            if "pool features" in (self.desc or ""):
                updates.append(n)
            return super().update(n)

    # accelerate's tqdm is tqdm.auto's bar, disabled off the main process; the same bar here, recording its steps.
    monkeypatch.setattr(rose_hf.features.featurizer, "tqdm", lambda *args, main_process_only=True, **kwargs: RecordingBar(
        *args, **kwargs))
    model = PeftModel.from_pretrained(build_model("llama", tokenizer, seed=0), runs["sparse"][-1], is_trainable=True)
    config = RoseConfig(selection_dir=str(tmp_path), prefilter_fraction=None, projection_dim=64, chunk_size=1024, feature_batch_size=4,
                        feature_max_length=64, report=False, scoring="robust")  # fmt: skip
    select_from_checkpoints(model, runs["sparse"][-1:], runs["pool"], runs["pairs"], tokenizer, config)
    assert [n for n in updates if n] == [4, 4, 4, 4] and sum(updates) == len(runs["pool"])
