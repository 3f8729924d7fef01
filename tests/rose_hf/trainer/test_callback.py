"""`RoseDataSelector` attached to real `SFTTrainer`/`Trainer` warmups: fails fast, leaves the warmup unchanged, and
selects the rows that scores written out by hand from the cached features select."""

import glob
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from helpers import pool_dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf.cache.store import STATUS_EMPTY
from rose_hf.data import prepare_sft_dataset
from rose_hf.rose_config import RoseConfig
from rose_hf.scoring.similarity import INVALID_SCORE
from rose_hf.trainer.callback import RoseDataSelector

EXTRA_COLUMNS = ["family", "correct", "source", "id"]
LEARNING_RATE = 1e-3
LONG_ROW = 63  # its prompt fills max_length, so no completion token is left: no gradient, never selected


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")


def sft_args(output_dir, **kwargs):
    defaults = dict(
        num_train_epochs=2, per_device_train_batch_size=8, learning_rate=LEARNING_RATE, lr_scheduler_type="linear",
        save_strategy="epoch", logging_steps=1, report_to=[], use_cpu=True, bf16=False, max_length=64,
        disable_tqdm=True, seed=0,
    )
    return SFTConfig(output_dir=str(output_dir), **{**defaults, **kwargs})


def rose_config(output_dir, **kwargs):
    # The engine tests pin the paper scoring: features at every checkpoint, learning-rate weights.
    defaults = dict(projection_dim=64, chunk_size=16, feature_batch_size=8, feature_max_length=64, report=False, scoring="paper",
                    validation_objective="dpo", prefilter_fraction=None)  # fmt: skip
    return RoseConfig(selection_dir=str(output_dir), **{**defaults, **kwargs})


def warmup_rows(pool, n=16):
    return pool.select(range(n)).remove_columns(EXTRA_COLUMNS)


def sft_trainer(tokenizer, output_dir, pool, callbacks=(), **kwargs):
    torch.manual_seed(0)  # the adapter's initialisation
    return SFTTrainer(
        model=build_model("llama", tokenizer, seed=0), args=sft_args(output_dir, **kwargs),
        train_dataset=warmup_rows(pool), processing_class=tokenizer, peft_config=lora_config(),
        callbacks=list(callbacks),
    )


def plain_trainer(tokenizer, output_dir, pool, model, callbacks=(), **kwargs):
    """`transformers.Trainer` on pre-tokenized rows: no tokenizer reaches the callback from the trainer."""
    data = prepare_sft_dataset(pool.select(range(16)), tokenizer, 64).select_columns(["input_ids", "labels"])
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=LEARNING_RATE,
        save_strategy="epoch", logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **kwargs,
    )
    return Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorForSeq2Seq(tokenizer),
                   callbacks=list(callbacks))


def lora_weights(model):
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}


def feature_folders(output_dir):
    folders = glob.glob(os.path.join(output_dir, "features", "checkpoint-*"))
    return sorted(folders, key=lambda path: int(path.rsplit("-", 1)[1]))


def checkpoint_meta(folder):
    """What a checkpoint's features were computed from (layout.json) and what computing them found (meta.json)."""
    return {name: value for file in ("layout.json", "meta.json")
            for name, value in json.load(open(os.path.join(folder, file))).items()}


def brute_force_scores(output_dir, subtasks, aggregation=max, objective="dpo"):
    """s(z) = agg_subtask mean_{v in subtask} sum_c w_c <G_c(z), g_c(v)>, one dot product at a time."""
    folders = feature_folders(output_dir)
    metas = [json.load(open(os.path.join(folder, "layout.json"))) for folder in folders]
    means = np.array([np.mean(meta["learning_rates"]) for meta in metas])
    weights = means / means.sum()
    pools = [np.load(os.path.join(folder, "pool.npy")).astype(np.float64) for folder in folders]
    validations = [np.load(os.path.join(folder, f"validation_{objective}.npy")).astype(np.float64) for folder in folders]
    ok = np.all([np.load(os.path.join(folder, "pool_status.npy")) == 1 for folder in folders], axis=0)
    names = list(dict.fromkeys(subtasks))
    scores = np.full(len(pools[0]), INVALID_SCORE, dtype=np.float64)
    for z in range(len(scores)):
        if not ok[z]:
            continue
        per_subtask = []
        for name in names:
            pairs = [v for v, subtask in enumerate(subtasks) if subtask == name]
            total = 0.0
            for v in pairs:
                for c in range(len(folders)):
                    total += weights[c] * np.dot(pools[c][z], validations[c][v])
            per_subtask.append(total / len(pairs))
        scores[z] = aggregation(per_subtask)
    return scores, weights, ok


def top(scores, ok, k):
    order = [int(i) for i in np.argsort(-scores, kind="stable") if ok[i]]
    return order[:k]


def assert_fails_before_training(trainer, match, error=ValueError):
    with pytest.raises(error, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    output_dir = trainer.args.output_dir
    assert not glob.glob(os.path.join(output_dir, "checkpoint-*"))


@pytest.fixture(scope="module")
def data():
    pool, task = pool_dataset(LONG_ROW)
    long_row = {**pool[0], "prompt": "count the numbers in the list " + "5 " * 80 + ".", "id": 10_000}
    return Dataset.from_list(list(pool) + [long_row]), task.validation


@pytest.fixture(scope="module")
def run(tokenizer, data, tmp_path_factory):
    """One warmup with the selector attached (shared by the tests that only read its results)."""
    root = tmp_path_factory.mktemp("callback")
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(root / "rose"))
    trainer = sft_trainer(tokenizer, root / "sft", pool, callbacks=[selector])
    trainer.train()
    return SimpleNamespace(root=root, selector=selector, trainer=trainer, output_dir=str(root / "rose"))


def copy_of(run, name):
    target = str(run.root / name)
    shutil.copytree(run.output_dir, target)
    return target


# --- (a) fail fast ------------------------------------------------------------------------------------------------
def test_model_without_lora_fails_before_training(tokenizer, data, tmp_path):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose"), tokenizer=tokenizer)
    trainer = plain_trainer(tokenizer, tmp_path / "out", pool, build_model("llama", tokenizer), [selector])
    assert_fails_before_training(trainer, "no trainable LoRA adapter.*peft_config=")


@pytest.mark.parametrize(
    "args,match",
    [
        ({"save_strategy": "no"}, "save_strategy='no'.*save_strategy='epoch'"),
        ({"save_strategy": "steps", "save_steps": 50}, "save_steps=50 exceeds the 4 training steps"),
        ({"optim": "sgd"}, "not an Adam-family optimizer.*preconditioner='sgd'"),
    ],
    ids=["save_strategy_no", "save_steps_too_large", "sgd_optimizer"],
)
def test_training_arguments_fail_before_training(tokenizer, data, tmp_path, args, match):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose"))
    assert_fails_before_training(sft_trainer(tokenizer, tmp_path / "out", pool, [selector], **args), match)


def test_unwritable_output_dir_fails_when_the_selector_is_built(data, tmp_path):
    pool, pairs = data
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match="selection_dir=.*cannot be a folder: its parent .*a_file.* is a file"):
        RoseDataSelector(pool, pairs, rose_config(tmp_path / "a_file" / "rose"))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_missing_tokenizer_fails_before_training(tokenizer, data, tmp_path):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose"))
    model = get_peft_model(build_model("llama", tokenizer), lora_config())
    trainer = plain_trainer(tokenizer, tmp_path / "out", pool, model, [selector])
    assert_fails_before_training(trainer, "No tokenizer.*tokenizer=")


def test_bad_data_fails_at_construction(data, tmp_path):
    pool, pairs = data
    config = rose_config(tmp_path / "rose")
    renamed = pool.rename_columns({"prompt": "question", "completion": "answer"})
    with pytest.raises(ValueError, match="train_dataset.*none of TRL's SFT formats.*`prompt` \\+ `completion`"):
        RoseDataSelector(renamed, pairs, config)
    with pytest.raises(ValueError, match=r"preference_dataset.*lacks column\(s\) \['rejected'\]"):
        RoseDataSelector(pool, pairs.remove_columns("rejected"), config)
    with pytest.raises(ValueError, match="selection_size=65.*64"):
        RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose", selection_size=65))
    assert not os.path.exists(tmp_path / "rose"), "nothing is written before training starts"


# --- (b) the warmup is unchanged ----------------------------------------------------------------------------------
def test_warmup_is_unchanged_by_the_selector(tokenizer, data, run, tmp_path):
    pool, _ = data
    baseline = sft_trainer(tokenizer, tmp_path / "baseline", pool)
    baseline.train()
    with_selector, without = lora_weights(run.trainer.model), lora_weights(baseline.model)
    assert with_selector.keys() == without.keys() and len(without) == 16
    for name in without:
        assert torch.equal(with_selector[name], without[name]), name

    def losses(trainer):
        return [(e["step"], e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e]

    assert len(losses(baseline)) == 4
    assert losses(run.trainer) == losses(baseline)
    # The features were computed in the middle of this run (step 2 of 4), so epoch 2 did see the selector.
    assert [os.path.basename(f) for f in feature_folders(run.output_dir)] == ["checkpoint-2", "checkpoint-4"]


# --- (c) the selection --------------------------------------------------------------------------------------------
def test_scores_equal_dot_products_of_the_cached_features(data, run):
    pool, pairs = data
    selector = run.selector
    expected, weights, ok = brute_force_scores(run.output_dir, pairs["subtask"])
    assert len(set(pairs["subtask"])) > 1, "the max over subtasks must be exercised"
    assert selector.scores.shape == (len(pool),) and selector.scores.dtype == np.float32
    assert np.isfinite(selector.scores).all()
    assert ok.tolist() == selector.result.valid.tolist() == [i != LONG_ROW for i in range(len(pool))]
    assert selector.scores[LONG_ROW] == INVALID_SCORE
    np.testing.assert_allclose(selector.scores[ok], expected[ok], rtol=1e-5, atol=1e-7)
    assert np.all(np.abs(selector.scores[ok]) <= 1), "cosine similarities"
    np.testing.assert_allclose(selector.result.weights, weights, rtol=1e-12)

    for folder in feature_folders(run.output_dir):  # unit vectors on both sides
        norms = np.linalg.norm(np.load(os.path.join(folder, "pool.npy")).astype(np.float64), axis=1)
        np.testing.assert_allclose(norms[ok], 1, atol=2e-3)
        assert np.load(os.path.join(folder, "pool_status.npy"))[LONG_ROW] == STATUS_EMPTY
        np.testing.assert_allclose(np.linalg.norm(np.load(os.path.join(folder, "validation_dpo.npy")), axis=1), 1,
                                   atol=1e-5)

    k = round(0.05 * len(pool))
    assert selector.selected_indices == top(expected, ok, k)
    assert len(selector.selected_indices) == k == 3


def test_selected_dataset_and_files(data, run):
    pool, _ = data
    selector, output_dir = run.selector, run.output_dir
    indices = selector.selected_indices
    selected = selector.selected_dataset
    assert selected.column_names == pool.column_names
    assert selected.to_list() == [pool[i] for i in indices]
    np.testing.assert_array_equal(np.load(os.path.join(output_dir, "scores.npy")), selector.scores)
    assert json.load(open(os.path.join(output_dir, "selected_indices.json"))) == indices
    assert load_from_disk(os.path.join(output_dir, "selected")).to_list() == selected.to_list()
    with open(os.path.join(output_dir, "selected.jsonl")) as handle:
        assert [json.loads(line)["id"] for line in handle] == [pool[i]["id"] for i in indices]


def test_plain_trainer_with_pretokenized_warmup(tokenizer, data, tmp_path):
    pool, pairs = data
    config = rose_config(tmp_path / "rose", selection_size=5, subtask_aggregation="mean")
    selector = RoseDataSelector(pool, pairs, config, tokenizer=tokenizer)
    torch.manual_seed(0)
    model = get_peft_model(build_model("llama", tokenizer), lora_config())
    trainer = plain_trainer(tokenizer, tmp_path / "out", pool, model, [selector])
    trainer.train()
    expected, _, ok = brute_force_scores(config.selection_dir, pairs["subtask"], aggregation=np.mean)
    np.testing.assert_allclose(selector.scores[ok], expected[ok], rtol=1e-5, atol=1e-7)
    assert selector.selected_indices == top(expected, ok, 5)
    assert selector.selected_dataset.column_names == pool.column_names


# --- (d) checkpoint weights from the learning rates ---------------------------------------------------------------
def test_checkpoint_weights_are_mean_learning_rates(run):
    logged = {e["step"]: e["learning_rate"] for e in run.trainer.state.log_history if "learning_rate" in e}
    by_hand = {k: LEARNING_RATE * (1 - (k - 1) / 4) for k in range(1, 5)}  # linear decay over 4 steps, no warmup
    metas = [checkpoint_meta(f) for f in feature_folders(run.output_dir)]
    assert [meta["step"] for meta in metas] == [2, 4]
    for meta, steps in zip(metas, ([1, 2], [3, 4])):
        assert meta["learning_rates"] == [logged[k] for k in steps]
        np.testing.assert_allclose(meta["learning_rates"], [by_hand[k] for k in steps], rtol=1e-12)
    means = np.array([np.mean([by_hand[1], by_hand[2]]), np.mean([by_hand[3], by_hand[4]])])
    np.testing.assert_allclose(run.selector.result.weights, means / means.sum(), rtol=1e-12)
    np.testing.assert_allclose(run.selector.result.weights, [0.7, 0.3], rtol=1e-12)
    summary = json.load(open(os.path.join(run.output_dir, "selection.json")))
    assert summary["weights"] == pytest.approx([0.7, 0.3], rel=1e-12) and summary["steps"] == [2, 4]


def test_learning_rates_with_gradient_accumulation_and_warmup(tokenizer, data, tmp_path):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose", preconditioner="sgd"))
    trainer = sft_trainer(tokenizer, tmp_path / "out", pool, [selector], per_device_train_batch_size=4,
                          gradient_accumulation_steps=2, warmup_steps=1)
    trainer.train()
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert len(logged) == 4 and logged[0] == 0.0
    metas = [checkpoint_meta(f) for f in feature_folders(str(tmp_path / "rose"))]
    assert [meta["learning_rates"] for meta in metas] == [logged[:2], logged[2:]]


@pytest.mark.parametrize(
    "args,match",
    [
        ({"num_train_epochs": 2}, r"checkpoint at step 1 \(steps 1-1\) has learning rate 0, so that checkpoint would weigh 0"),
        ({"num_train_epochs": 1}, r"at step 1 \(steps 1-1\) has learning rate 0, so the warmup would not train"),
        ({"num_train_epochs": 1, "per_device_train_batch_size": 8, "save_strategy": "steps", "save_steps": 1},
         r"steps 1-1\) has learning rate 0, so that checkpoint would weigh 0"),
    ],
    ids=["first_epoch_of_two", "only_epoch", "save_every_step"],
)
def test_a_warmup_too_short_for_its_schedule_fails_before_training(tokenizer, data, tmp_path, args, match):
    """16 rows at 16 a step: one optimizer step per epoch, and a warmup ratio makes the first step's rate 0 (the
    weights then failed with "All learning rates are 0" after the whole warmup, or weighed a checkpoint 0)."""
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose"))
    args = {"per_device_train_batch_size": 16, "warmup_steps": 0.03, **args}
    trainer = sft_trainer(tokenizer, tmp_path / "out", pool, [selector], **args)
    assert_fails_before_training(trainer, match + r".*num_train_epochs=.*per_device_train_batch_size=.*warmup_steps=0.03"
                                 r".*Fix: more optimizer steps per checkpoint.*warmup_fraction.*warmup_steps=0")


def test_a_warmup_whose_first_step_alone_has_rate_0_still_trains(tokenizer, data, tmp_path):
    # Two steps per epoch (the second above 0), and robust scoring, whose one checkpoint needs no learning rate.
    pool, pairs = data
    for name, batch, scoring in (("two_steps", 8, "paper"), ("robust", 16, "robust")):
        selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / name / "rose", scoring=scoring))
        trainer = sft_trainer(tokenizer, tmp_path / name / "out", pool, [selector], per_device_train_batch_size=batch,
                              warmup_steps=0.03)  # fmt: skip
        trainer.train()
        assert selector.result is not None and selector.result.weights[-1] > 0, name


# --- (e) a rerun reuses the cache ---------------------------------------------------------------------------------
def test_rerun_reuses_cached_features(tokenizer, data, run):
    pool, pairs = data
    output_dir = copy_of(run, "rerun")
    for name in ("scores.npy", "selection.json"):  # make the rerun score again, from the cache
        os.remove(os.path.join(output_dir, name))
    features = os.path.join(output_dir, "features")
    files = [os.path.join(base, name) for base, _, names in os.walk(features) for name in names]
    assert any(f.endswith("pool.npy") for f in files) and any(f.endswith(".done") for f in files)
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}

    selector = RoseDataSelector(pool, pairs, rose_config(output_dir))
    sft_trainer(tokenizer, run.root / "rerun_sft", pool, [selector]).train()
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes, "cached features were recomputed"
    assert not selector.result.loaded
    np.testing.assert_array_equal(selector.scores, run.selector.scores)
    assert selector.selected_indices == run.selector.selected_indices

    # A finished selection with the same settings is loaded, and other budgets are cut from the same scores.
    loaded = RoseDataSelector(pool, pairs, rose_config(output_dir)).select()
    assert loaded.loaded and loaded.selected_indices == run.selector.selected_indices
    bigger = RoseDataSelector(pool, pairs, rose_config(output_dir, selection_size=10)).select()
    assert not bigger.loaded and bigger.selected_indices[:3] == run.selector.selected_indices
    assert bigger.selected_indices == top(run.selector.scores.astype(np.float64), run.selector.result.valid, 10)


# --- (f) refusing to mix runs -------------------------------------------------------------------------------------
def test_other_data_refuses_to_mix_and_another_objective_reuses_the_features(tokenizer, data, run):
    pool, pairs = data
    output_dir = copy_of(run, "mixed")
    other_pool = RoseDataSelector(pool.select(range(60)), pairs, rose_config(output_dir))
    assert_fails_before_training(sft_trainer(tokenizer, run.root / "mixed_pool", pool, [other_pool]),
                                 "other inputs .pool_fingerprint: recorded.*overwrite=True")
    with pytest.raises(ValueError, match="other inputs .pool_fingerprint: recorded.*Fix: pass the pool and the preference pairs"):
        RoseDataSelector(pool.select(range(60)), pairs, rose_config(output_dir)).select()
    # Both objectives' validation features are cached at every checkpoint: LESS's scores need no new features.
    features = {f: os.stat(f).st_mtime_ns for folder in feature_folders(output_dir) for f in
                (os.path.join(folder, name) for name in os.listdir(folder)) if os.path.isfile(f)}
    sft = RoseDataSelector(pool, pairs, rose_config(output_dir, validation_objective="sft"))
    sft_trainer(tokenizer, run.root / "reused_sft", pool, [sft]).train()
    assert {f: os.stat(f).st_mtime_ns for f in features} == features, "the cached features were recomputed"
    assert not sft.result.loaded and sft.result.info["args"]["validation_objective"] == "sft"
    assert not np.allclose(sft.scores, run.selector.scores)
    expected, _, ok = brute_force_scores(output_dir, pairs["subtask"], objective="sft")
    np.testing.assert_allclose(sft.scores[ok], expected[ok], rtol=1e-5, atol=1e-7)
    # "dpo+sft" ranks both scores of the same features: each row's mean rank, the DPO side weighted `dpo_weight`,
    # written out here, again without new features.
    both = RoseDataSelector(pool, pairs, rose_config(output_dir, validation_objective="dpo+sft"))
    sft_trainer(tokenizer, run.root / "reused_both", pool, [both]).train()
    assert {f: os.stat(f).st_mtime_ns for f in features} == features, "the cached features were recomputed"
    dpo_scores, sft_scores = run.selector.scores[ok].astype(np.float64), sft.scores[ok].astype(np.float64)
    ranks = [np.array([((s < x).sum() + 1 + ((s == x).sum() - 1) / 2) / ok.sum() for x in s])
             for s in (dpo_scores, sft_scores)]  # fmt: skip
    weight = rose_config(output_dir).dpo_weight
    np.testing.assert_allclose(both.scores[ok], weight * ranks[0] + (1 - weight) * ranks[1], rtol=1e-6)
    assert both.selected_indices == top(both.scores.astype(np.float64), ok, len(both.selected_indices))
    assert set(both.result.info["objectives"]) == {"dpo", "sft"}


# --- (g) what a user sees -------------------------------------------------------------------------------------------
def test_summary_line_is_printed_and_figures_are_ready_for_the_trainer_log(run, capsys, data):
    pool, _ = data
    again = RoseDataSelector(pool, data[1], rose_config(run.output_dir))
    again.select()
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("[rose_hf] selected"))
    assert f"selected {len(again.selected_indices)} of {len(pool)} pool rows" in line
    metrics = again.metrics
    assert metrics["rose/num_selected"] == len(again.selected_indices)
    valid = again.scores[again.result.valid]
    assert metrics["rose/score_q50"] == pytest.approx(float(np.quantile(valid, 0.5)))
    shares = {k: v for k, v in metrics.items() if k.startswith("rose/share/")}
    assert shares and sum(shares.values()) == pytest.approx(1.0)


def test_one_process_log_lines_carry_no_rank_prefix(run, data, caplog, monkeypatch):
    import logging

    from accelerate import PartialState

    from rose_hf.logs import get_logger

    pool, pairs = data
    with caplog.at_level(logging.INFO, logger="rose_hf"):
        RoseDataSelector(pool, pairs, rose_config(run.output_dir)).select()  # reuses the run's selection, and says so
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("rose_hf")]
    assert any("selection already done" in m for m in messages), messages
    assert not [m for m in messages if "[RANK" in m]
    # With several processes the prefix tells them apart, and stays.
    monkeypatch.setitem(PartialState._shared_state, "num_processes", 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rose_hf"):
        get_logger("rose_hf.test").info("hello")
    assert [r.getMessage() for r in caplog.records] == ["[RANK 0] hello"]


def test_log_level_follows_the_trainer(tokenizer, data, tmp_path):
    import logging

    from rose_hf.logs import LOGGER_NAME, follow_trainer_verbosity

    follow_trainer_verbosity(TrainingArguments(output_dir=str(tmp_path), log_level="info", report_to=[]))
    assert logging.getLogger(LOGGER_NAME).getEffectiveLevel() == logging.INFO
    follow_trainer_verbosity(TrainingArguments(output_dir=str(tmp_path), log_level="warning", report_to=[]))
    assert not logging.getLogger("rose_hf.pipeline").isEnabledFor(logging.INFO)
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)  # a program's own choice survives log_level="passive"
    follow_trainer_verbosity(TrainingArguments(output_dir=str(tmp_path), report_to=[]))
    assert logging.getLogger("rose_hf.pipeline").isEnabledFor(logging.INFO)
    logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)


def test_robust_scoring_featurizes_the_end_of_the_warmup_only(tokenizer, data, tmp_path):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose", scoring="robust"))
    trainer = sft_trainer(tokenizer, tmp_path / "out", pool, [selector])
    trainer.train()
    assert [os.path.basename(f) for f in feature_folders(str(tmp_path / "rose"))] == [
        f"checkpoint-{trainer.state.global_step}"
    ]
    assert selector.result.weights.tolist() == [1.0] and selector.result.info["health"]["verdict"]


def test_num_feature_checkpoints_featurizes_evenly_spaced_saves_ending_with_the_last(tokenizer, data, tmp_path):
    """Two selectors on one 4-save warmup: every save, and 2 of them. The second computes features at saves 2 and 4
    only, equal to the first's there, weighted by the learning rates since the save before each (so its scores are
    the brute-force scores of the first's features at those saves with those weights)."""
    pool, pairs = data
    every = RoseDataSelector(pool, pairs, rose_config(tmp_path / "every"))
    two = RoseDataSelector(pool, pairs, rose_config(tmp_path / "two", num_feature_checkpoints=2))
    trainer = sft_trainer(tokenizer, tmp_path / "out", pool, [every, two], num_train_epochs=4)
    trainer.train()
    saves = [int(f.rsplit("-", 1)[1]) for f in feature_folders(str(tmp_path / "every"))]
    assert len(saves) == 4
    assert [int(f.rsplit("-", 1)[1]) for f in feature_folders(str(tmp_path / "two"))] == [saves[1], saves[3]]
    for step in (saves[1], saves[3]):
        ours, theirs = (checkpoint_meta(str(tmp_path / name / "features" / f"checkpoint-{step}")) for name in ("two", "every"))
        assert ours["learning_rates"] == theirs["learning_rates"]  # the steps since the previous SAVE, not featurized one
        np.testing.assert_array_equal(*(np.load(str(tmp_path / name / "features" / f"checkpoint-{step}" / "pool.npy"))
                                        for name in ("two", "every")))  # fmt: skip
    for step in (saves[0], saves[2]):
        shutil.rmtree(str(tmp_path / "every" / "features" / f"checkpoint-{step}"))
    expected, _, ok = brute_force_scores(str(tmp_path / "every"), list(pairs["subtask"]))
    np.testing.assert_allclose(two.result.scores[ok], expected[ok], atol=1e-5)
    assert two.result.selected_indices == top(expected, ok, len(two.result.selected_indices))


def test_num_feature_checkpoints_needs_saves_known_before_training(tokenizer, data, tmp_path):
    pool, pairs = data
    selector = RoseDataSelector(pool, pairs, rose_config(tmp_path / "rose", num_feature_checkpoints=2))
    trainer = sft_trainer(tokenizer, tmp_path / "out", pool, [selector])
    trainer.args.save_strategy = "best"  # saves that depend on evaluation: not known before training
    trainer.args.metric_for_best_model = "loss"
    assert_fails_before_training(trainer, "num_feature_checkpoints=2 needs the warmup's saves before training")
