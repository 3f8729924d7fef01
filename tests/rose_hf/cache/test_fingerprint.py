"""The cache can never serve stale features: each checkpoint's features are keyed on the adapter weights, the Adam
moments and the base model, the data on its content, and a warmup that differs in any of them gets new features
(equal, bit for bit, to those of a fresh run) while an identical one, or the same data loaded another way, does no
work."""

import json
import logging
import os
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, load_dataset, load_from_disk
from helpers import make_lora_model, pool_dataset
from peft import LoraConfig, get_peft_model
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf.cache.fingerprint import (
    BASE_SAMPLE,
    adapter_fingerprint,
    base_model_fingerprint,
    dataset_fingerprint,
    optimizer_fingerprint,
    pool_fingerprint,
)
from rose_hf.features.preconditioner import AdamState
from rose_hf.rose_config import RoseConfig
from rose_hf.trainer.callback import RoseDataSelector

EXTRA_COLUMNS = ["family", "correct", "source", "id"]


# --- data: content, not provenance --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    rows, _ = pool_dataset(40)
    rows = rows.to_list()
    rows[3]["completion"] = None  # a null survives every round trip
    return Dataset.from_list(rows)


def test_the_same_rows_loaded_any_way_have_the_same_fingerprint(pool, tmp_path):
    expected = pool_fingerprint(pool)
    pool.to_json(str(tmp_path / "pool.jsonl"), lines=True)
    pool.to_parquet(str(tmp_path / "pool.parquet"))
    pool.save_to_disk(str(tmp_path / "disk"))
    reread = load_dataset("json", data_files=str(tmp_path / "pool.jsonl"), split="train")
    assert reread._fingerprint != pool._fingerprint, "datasets' own fingerprint tells them apart: the old bug"
    assert pool_fingerprint(reread) == expected
    assert pool_fingerprint(Dataset.from_list(pool.to_list())) == expected
    parquet = load_dataset("parquet", data_files=str(tmp_path / "pool.parquet"), split="train")
    assert pool_fingerprint(parquet) == expected
    assert pool_fingerprint(load_from_disk(str(tmp_path / "disk"))) == expected
    # An indices mapping (select without flattening) and columns the features do not use change nothing.
    order = list(range(39, -1, -1))
    assert pool_fingerprint(pool.select(order)) == pool_fingerprint(pool.select(order).flatten_indices())
    assert pool_fingerprint(pool.map(lambda row: {"source": "elsewhere"})) == expected


def test_any_change_to_the_used_content_changes_the_fingerprint(pool):
    expected = pool_fingerprint(pool)
    rows = pool.to_list()

    def edited(index, column, value):
        copy = [dict(row) for row in rows]
        copy[index][column] = value
        return pool_fingerprint(Dataset.from_list(copy))

    assert edited(7, "completion", rows[7]["completion"] + " ") != expected  # one character
    assert edited(3, "completion", "") != expected  # None is not ""
    assert edited(0, "prompt", rows[0]["prompt"].upper()) != expected
    assert pool_fingerprint(pool.select([1, 0] + list(range(2, 40)))) != expected  # row order is pool order
    assert pool_fingerprint(pool.select(range(39))) != expected
    # Boundaries between rows are part of the content.
    split_a = Dataset.from_dict({"prompt": ["ab", "c"], "completion": ["x", "y"]})
    split_b = Dataset.from_dict({"prompt": ["a", "bc"], "completion": ["x", "y"]})
    assert pool_fingerprint(split_a) != pool_fingerprint(split_b)


def test_conversations_hash_by_content_whatever_the_field_order():
    def messages(first, answer="yes", extra=None):
        turn = {"role": "assistant", "content": answer, **(extra or {})}
        user = {"role": "user", "content": "hello"} if first == "role" else {"content": "hello", "role": "user"}
        return Dataset.from_list([{"messages": [user, turn]}] * 3)

    expected = pool_fingerprint(messages("role"))
    assert pool_fingerprint(messages("content")) == expected
    assert pool_fingerprint(messages("role", extra={"name": None})) == expected  # an all-null field is no content
    assert pool_fingerprint(messages("role", answer="no")) != expected
    assert dataset_fingerprint(Dataset.from_dict({"prompt": ["1"]}), ["prompt"]) != dataset_fingerprint(
        Dataset.from_dict({"prompt": [1]}), ["prompt"]
    )


def test_a_pool_of_270k_rows_hashes_in_seconds():
    rng = np.random.default_rng(0)
    words = np.array(["sort", "the", "list", "answer", "is", "1", "2", "3", "count", "numbers"])
    prompts = [" ".join(rng.choice(words, size=40)) for _ in range(2000)]
    n = 270_000
    pool = Dataset.from_dict({"prompt": [prompts[i % 2000] for i in range(n)],
                              "completion": [prompts[(7 * i) % 2000][:60] for i in range(n)]})  # fmt: skip
    start = time.perf_counter()
    pool_fingerprint(pool)
    elapsed = time.perf_counter() - start
    # Through an indices mapping (a shuffle or select not flattened), rows come back one Arrow chunk each.
    shuffled = pool.select(np.random.default_rng(0).permutation(n))
    start = time.perf_counter()
    pool_fingerprint(shuffled)
    gathered = time.perf_counter() - start
    print(f"270k rows ({pool.data.nbytes / 1e6:.0f} MB): {elapsed:.2f}s, shuffled through indices {gathered:.2f}s")
    assert elapsed < 10 and gathered < 30


# --- model state ------------------------------------------------------------------------------------------------
def test_a_model_built_from_config_gets_a_real_fingerprint(tokenizer):
    model = build_model("llama", tokenizer, seed=0)
    fingerprint = base_model_fingerprint(model)
    assert fingerprint["config_hash"] and fingerprint["weights_hash"], "never empty for a model built from config"
    assert base_model_fingerprint(build_model("llama", tokenizer, seed=0)) == fingerprint
    other_seed = base_model_fingerprint(build_model("llama", tokenizer, seed=1))
    assert other_seed["weights_hash"] != fingerprint["weights_hash"]
    assert base_model_fingerprint(build_model("llama", tokenizer, seed=0, dtype=torch.bfloat16)) != fingerprint
    other_config = base_model_fingerprint(build_model("llama", tokenizer, seed=0, max_position_embeddings=256))
    assert other_config["config_hash"] != fingerprint["config_hash"]
    switched = build_model("llama", tokenizer, seed=0)
    switched.config.use_cache = False  # as the Trainer does: a runtime switch, the same base
    assert base_model_fingerprint(switched) == fingerprint
    # The same base under a LoRA adapter: the adapter is not the base.
    wrapped = make_lora_model(tokenizer, seed=0)
    assert base_model_fingerprint(wrapped)["weights_hash"] == fingerprint["weights_hash"]
    # Every element at the stride is read: changing one of them (element 0 of a tensor) changes the hash.
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    assert base_model_fingerprint(model)["weights_hash"] != fingerprint["weights_hash"]
    assert BASE_SAMPLE >= 256


def test_adapter_and_optimizer_fingerprints_see_every_value(tokenizer):
    model = make_lora_model(tokenizer, seed=0)
    expected = adapter_fingerprint(model)
    assert adapter_fingerprint(make_lora_model(tokenizer, seed=0)) == expected
    last = [p for n, p in model.named_parameters() if "lora_A" in n][-1]
    with torch.no_grad():
        last.view(-1)[-1] += 1e-6  # the last element of the last LoRA tensor
    changed = adapter_fingerprint(model)
    assert changed != expected
    with torch.no_grad():  # the base is not the adapter
        model.get_input_embeddings().weight[5, 5] += 1.0
    assert adapter_fingerprint(model) == changed

    m, v = torch.rand(100), torch.rand(100)
    reference = optimizer_fingerprint(AdamState(m, v, 0.9, 0.999, 1e-8))
    assert optimizer_fingerprint(AdamState(m.clone(), v.clone(), 0.9, 0.999, 1e-8)) == reference
    bumped = v.clone()
    bumped[50] = torch.nextafter(bumped[50], torch.tensor(2.0))  # one ulp
    assert optimizer_fingerprint(AdamState(m, bumped, 0.9, 0.999, 1e-8)) != reference
    assert optimizer_fingerprint(AdamState(m, v, 0.9, 0.99, 1e-8)) != reference
    assert optimizer_fingerprint(None) is None


# --- warmups: a changed input gives new features, an unchanged one does no work -----------------------------------
LEARNING_RATE = 2e-3


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip


def warmup(tokenizer, pool, pairs, output_dir, trainer_dir, learning_rate=LEARNING_RATE, adapter_seed=0, base_seed=0,
           epochs=2):  # fmt: skip
    """A tiny SFT warmup with the selector attached; returns the selector."""
    selector = RoseDataSelector(pool, pairs, RoseConfig(selection_dir=str(output_dir), projection_dim=64, chunk_size=16,
                                                        feature_batch_size=8, feature_max_length=64, report=False, scoring="paper",
                                                        prefilter_fraction=None))
    args = SFTConfig(output_dir=str(trainer_dir), num_train_epochs=epochs, per_device_train_batch_size=8,
                     learning_rate=learning_rate, save_strategy="epoch", logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, max_length=64, disable_tqdm=True, seed=0)  # fmt: skip
    base = build_model("llama", tokenizer, seed=base_seed)
    torch.manual_seed(adapter_seed)  # the adapter's initialisation (the Trainer seeds before it would wrap one)
    model = get_peft_model(base, lora_config())
    rows = pool.select(range(16)).remove_columns([c for c in EXTRA_COLUMNS if c in pool.column_names])
    SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[selector]).train()
    return selector


def features(output_dir):
    root = os.path.join(str(output_dir), "features")
    return {name: np.load(os.path.join(root, name, "pool.npy")) for name in sorted(os.listdir(root))}


def feature_files(output_dir):
    root = os.path.join(str(output_dir), "features")
    return {os.path.join(base, n): os.stat(os.path.join(base, n)).st_mtime_ns for base, _, names in os.walk(root)
            for n in names}  # fmt: skip


@pytest.fixture(scope="module")
def first(tokenizer, tmp_path_factory):
    """The first run: the cache every other test reuses (a copy of it) or must not reuse."""
    root = tmp_path_factory.mktemp("fingerprint")
    pool, task = pool_dataset(48)
    pairs = task.validation
    selector = warmup(tokenizer, pool, pairs, root / "rose", root / "sft")
    return SimpleNamespace(root=root, pool=pool, pairs=pairs, selector=selector, output_dir=root / "rose")


def copy_of(first, name):
    target = first.root / name
    shutil.copytree(first.output_dir, target)
    return target


def test_run_json_records_the_warmup_and_a_real_base_model(first):
    run = json.load(open(os.path.join(first.output_dir, "run.json")))
    training = run["warmup"]["training_args"]
    assert training["learning_rate"] == LEARNING_RATE and training["num_train_epochs"] == 2
    assert training["lr_scheduler_type"] == "linear" and training["optim"].startswith("adamw")
    assert training["examples_per_step"] == 8 and training["seed"] == 0
    base = run["warmup"]["base_model"]
    assert base["weights_hash"] and base["config_hash"] and "base_model" not in run
    meta = json.load(open(os.path.join(first.output_dir, "features", "checkpoint-2", "meta.json")))
    assert set(meta["fingerprint"]) == {"adapter", "optimizer", "base"} and all(meta["fingerprint"].values())


@pytest.mark.slow
def test_the_same_run_twice_does_no_work(tokenizer, first):
    output_dir = copy_of(first, "same")
    before = feature_files(output_dir)
    again = warmup(tokenizer, first.pool, first.pairs, output_dir, first.root / "same_sft")
    assert feature_files(output_dir) == before, "cached features were recomputed"
    assert again.result.loaded, "the finished selection is loaded, not recomputed"
    assert again.selected_indices == first.selector.selected_indices


@pytest.mark.slow
def test_a_re_read_pool_reuses_the_cache(tokenizer, first, tmp_path):
    output_dir = copy_of(first, "reread")
    first.pool.to_json(str(tmp_path / "pool.jsonl"), lines=True)
    reread = load_dataset("json", data_files=str(tmp_path / "pool.jsonl"), split="train")
    pairs = Dataset.from_list(first.pairs.to_list())
    before = feature_files(output_dir)
    again = warmup(tokenizer, reread, pairs, output_dir, first.root / "reread_sft")
    assert feature_files(output_dir) == before
    assert again.result.loaded and again.selected_indices == first.selector.selected_indices


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,words",
    [({"learning_rate": 5e-3}, "adapter weights, optimizer state"),
     ({"adapter_seed": 1}, "adapter weights, optimizer state"),
     ({"base_seed": 1}, "adapter weights, optimizer state (Adam moments), base model weights differ")],
    ids=["learning_rate", "adapter_init", "base_model"],
)  # fmt: skip
def test_a_changed_warmup_gets_new_features_equal_to_a_fresh_run(tokenizer, first, caplog, change, words):
    name = next(iter(change))
    fresh = warmup(tokenizer, first.pool, first.pairs, first.root / f"fresh_{name}", first.root / f"fresh_{name}_sft",
                   **change)  # fmt: skip
    expected = features(first.root / f"fresh_{name}")
    old = features(first.output_dir)
    assert expected.keys() == old.keys() == {"checkpoint-2", "checkpoint-4"}
    assert all(not np.array_equal(expected[k], old[k]) for k in old), "the change must change the features"

    output_dir = copy_of(first, f"changed_{name}")
    with caplog.at_level(logging.WARNING):
        rerun = warmup(tokenizer, first.pool, first.pairs, output_dir, first.root / f"changed_{name}_sft", **change)
    got = features(output_dir)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert not rerun.result.loaded
    np.testing.assert_array_equal(rerun.scores, fresh.scores)
    assert rerun.selected_indices == fresh.selected_indices
    warnings = [r.getMessage() for r in caplog.records if "computed from another model state" in r.getMessage()]
    assert len(warnings) == 2 and all(words in message for message in warnings), warnings
    if name == "learning_rate":
        assert "learning_rate 0.002 -> 0.005" in warnings[0]
        run = json.load(open(os.path.join(output_dir, "run.json")))
        assert run["warmup"]["training_args"]["learning_rate"] == 5e-3


@pytest.mark.slow
def test_checkpoints_of_a_longer_earlier_warmup_are_not_used(tokenizer, first, caplog):
    output_dir = copy_of(first, "shorter")
    with caplog.at_level(logging.WARNING):
        shorter = warmup(tokenizer, first.pool, first.pairs, output_dir, first.root / "shorter_sft", epochs=1)
    assert list(features(output_dir)) == ["checkpoint-2"]
    assert shorter.result.steps == [2] and shorter.result.weights.tolist() == [1.0]
    assert any("this warmup did not produce" in r.getMessage() for r in caplog.records)
    # Its checkpoint 2 is that of a 1-epoch schedule, not the 2-epoch one's: recomputed, not reused.
    assert not np.array_equal(features(output_dir)["checkpoint-2"], features(first.output_dir)["checkpoint-2"])


@pytest.mark.slow
def test_a_partial_checkpoint_of_another_state_is_not_resumed(tokenizer, first):
    """A run killed mid-checkpoint leaves finished chunks; a run with another learning rate must not keep them."""
    output_dir = first.root / "partial"
    selector = RoseDataSelector(first.pool, first.pairs, RoseConfig(selection_dir=str(output_dir), projection_dim=64,
                                chunk_size=16, feature_batch_size=8, feature_max_length=64, report=False, scoring="paper",
                                prefilter_fraction=None))  # fmt: skip

    def killed(chunk):
        raise KeyboardInterrupt

    original = selector.pipeline.featurize
    selector.pipeline.featurize = lambda *a, **k: original(*a, **{**k, "on_chunk": killed})
    args = SFTConfig(output_dir=str(first.root / "partial_sft"), num_train_epochs=2, per_device_train_batch_size=8,
                     learning_rate=LEARNING_RATE, save_strategy="epoch", logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, max_length=64, disable_tqdm=True, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = get_peft_model(build_model("llama", tokenizer, seed=0), lora_config())
    rows = first.pool.select(range(16)).remove_columns(EXTRA_COLUMNS)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[selector])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    partial = output_dir / "features" / "checkpoint-2"
    assert (partial / "chunks" / "000000.done").exists() and not (partial / "meta.json").exists()

    warmup(tokenizer, first.pool, first.pairs, output_dir, first.root / "partial_sft2", learning_rate=5e-3)
    fresh_dir = first.root / "fresh_learning_rate"
    if not fresh_dir.exists():
        warmup(tokenizer, first.pool, first.pairs, fresh_dir, first.root / "fresh_lr_sft2", learning_rate=5e-3)
    for key, value in features(fresh_dir).items():
        np.testing.assert_array_equal(features(output_dir)[key], value)
