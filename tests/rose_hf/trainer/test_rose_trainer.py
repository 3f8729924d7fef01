"""`RoseTrainer` end to end on a tiny model: warmup -> selection -> final training from the base, and resuming."""

import json
import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import pool_dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig

from rose_fixtures.tiny import build_model
from rose_hf.errors import CacheMismatchError
from rose_hf.rose_config import RoseConfig
from rose_hf.trainer.rose_trainer import RoseTrainer, warmup_indices

pytestmark = pytest.mark.slow

POOL_SIZE, WARMUP_FRACTION = 100, 0.16  # 16 warmup rows: 2 steps per epoch, checkpoints at steps 2 and 4


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")


def sft_args(output_dir, **changes):
    return SFTConfig(**{
        **dict(output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-3,
               logging_steps=1, report_to=[], use_cpu=True, bf16=False, max_length=64, disable_tqdm=True, seed=0),
        **changes,
    })


def rose_config(**kwargs):
    defaults = dict(projection_dim=64, warmup_fraction=WARMUP_FRACTION, chunk_size=32, feature_batch_size=8,
                    feature_max_length=64, report=False, scoring="paper")
    return RoseConfig(**{**defaults, **kwargs})


class StageProbe(TrainerCallback):
    """A user's callback: RoseTrainer passes it to both stages. Records what each stage starts from and evaluates."""

    def __init__(self):
        self.stages, self.evaluations = [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.stages.append(os.path.basename(args.output_dir))
        self.output_dir = args.output_dir  # the last stage's, i.e. the final one's
        self.start = {name: param.detach().clone() for name, param in model.named_parameters()}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((os.path.basename(args.output_dir), metrics))


def base_name(peft_name):
    """`base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight` -> `model.layers.0.self_attn.q_proj.weight`"""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


def rose_trainer(tokenizer, root, data, probe=None, eval_dataset=None, training=None, **config):
    pool, pairs = data
    model = build_model("llama", tokenizer, seed=0)
    base = {name: param.detach().clone() for name, param in model.named_parameters()}
    evaluation = dict(eval_strategy="epoch") if eval_dataset is not None else {}
    trainer = RoseTrainer(
        model=model, args=sft_args(root, **evaluation, **(training or {})), train_dataset=pool, preference_dataset=pairs,
        rose_config=rose_config(**config), peft_config=lora_config(), processing_class=tokenizer,
        callbacks=[probe] if probe else None, eval_dataset=eval_dataset,
    )
    return trainer, base


def files_with_mtimes(folder):
    return {
        os.path.join(base, name): os.stat(os.path.join(base, name)).st_mtime_ns
        for base, _, names in os.walk(folder)
        for name in names
    }


def copy_stages(source, target, stages=("warmup", "selection")):
    for stage in stages:
        shutil.copytree(os.path.join(source, stage), os.path.join(target, stage))
    return str(target)


@pytest.fixture(scope="module")
def data():
    pool, task = pool_dataset(POOL_SIZE)
    return pool, task.validation


@pytest.fixture(scope="module")
def full_run(tokenizer, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("rose_trainer")
    probe = StageProbe()
    held_out, _ = pool_dataset(8, seed=1)
    trainer, base = rose_trainer(tokenizer, root, data, probe, eval_dataset=held_out)
    output = trainer.train()
    return SimpleNamespace(root=str(root), trainer=trainer, base=base, probe=probe, output=output)


def test_stages_and_their_folders(full_run, data):
    pool, _ = data
    root, trainer = full_run.root, full_run.trainer
    assert sorted(os.listdir(root)) == ["final", "selection", "warmup"]
    for stage in ("warmup", "final"):
        assert os.path.exists(os.path.join(root, stage, "STAGE_DONE.json"))
    assert sorted(n for n in os.listdir(os.path.join(root, "warmup")) if n.startswith("checkpoint-")) == [
        "checkpoint-2", "checkpoint-4"
    ]
    selection_dir = os.path.join(root, "selection")
    assert trainer.rose_config.selection_dir == selection_dir
    assert sorted(os.listdir(os.path.join(selection_dir, "features"))) == ["checkpoint-2", "checkpoint-4"]
    for name in ("scores.npy", "selected_indices.json", "selected", "selected.jsonl", "selection.json", "run.json"):
        assert os.path.exists(os.path.join(selection_dir, name)), name

    # Warmup on the seeded random slice.
    indices = warmup_indices(POOL_SIZE, WARMUP_FRACTION, 0)
    assert trainer.warmup_indices == indices and len(indices) == 16 and indices != list(range(16))
    state = json.load(open(os.path.join(root, "warmup", "checkpoint-4", "trainer_state.json")))
    assert state["max_steps"] == 4  # 16 rows / batch 8 * 2 epochs

    # Selection: the top 5% of the scores.
    selection = trainer.selection
    assert len(selection.selected_indices) == 5 == round(0.05 * POOL_SIZE)
    assert selection.selected_indices == json.load(open(os.path.join(selection_dir, "selected_indices.json")))
    order = np.argsort(-selection.scores.astype(np.float64), kind="stable")
    assert selection.selected_indices == order[:5].tolist()


def test_user_callbacks_and_eval_set_run_in_both_stages(full_run):
    """The user's SFTConfig (here eval_strategy='epoch'), eval set and callbacks reach the warmup too."""
    assert full_run.probe.stages == ["warmup", "final"]
    by_stage = {}
    for stage, metrics in full_run.probe.evaluations:
        assert "eval_loss" in metrics and np.isfinite(metrics["eval_loss"])
        by_stage[stage] = by_stage.get(stage, 0) + 1
    assert by_stage == {"warmup": 2, "final": 2}  # one evaluation per epoch in each stage


def test_final_training_on_exactly_the_selected_rows(full_run, data):
    pool, _ = data
    trainer = full_run.trainer
    selected = trainer.selection.selected_indices
    assert len(trainer.train_dataset) == len(selected)
    assert trainer.train_dataset["prompt"] == [pool[i]["prompt"] for i in selected]
    assert trainer.train_dataset["completion"] == [pool[i]["completion"] + "<eos>" for i in selected]
    assert full_run.probe.output_dir == os.path.join(full_run.root, "final")
    assert full_run.output.global_step == trainer.state.global_step == 2  # 5 rows, batch 8, 2 epochs


def test_final_model_starts_from_the_base_with_a_fresh_adapter(full_run):
    start, base = full_run.probe.start, full_run.base
    lora_b = [name for name in start if "lora_B" in name]
    assert len(lora_b) == 8
    assert all(torch.count_nonzero(start[name]) == 0 for name in lora_b), "the final adapter must be fresh"
    non_lora = [name for name in start if "lora_" not in name]
    assert {base_name(name) for name in non_lora} == set(base)
    for name in non_lora:
        assert torch.equal(start[name], base[base_name(name)]), name

    after = dict(full_run.trainer.model.named_parameters())
    assert all(torch.count_nonzero(after[name]) > 0 for name in lora_b), "the final adapter did not train"
    for name in non_lora:  # LoRA training leaves the base untouched
        assert torch.equal(after[name].detach(), base[base_name(name)]), name
    # The warmup adapter is another one.
    from safetensors.torch import load_file

    warmup = load_file(os.path.join(full_run.root, "warmup", "checkpoint-4", "adapter_model.safetensors"))
    some_b = next(key for key in warmup if "lora_B" in key)
    assert torch.count_nonzero(warmup[some_b]) > 0


def test_second_train_call_reuses_every_finished_stage(full_run, tokenizer, data, tmp_path, caplog):
    root = copy_stages(full_run.root, tmp_path, ("warmup", "selection", "final"))
    cached = files_with_mtimes(root)
    trainer, _ = rose_trainer(tokenizer, root, data)
    with caplog.at_level(logging.INFO, logger="rose_hf"):
        trainer.run_warmup()
        trainer.train()
    # Said once, for the warmup a previous run finished; not again when train() passes the warmup this call checked.
    assert caplog.text.count("a previous run finished the warmup") == 1
    now = files_with_mtimes(root)
    for stage in ("warmup", "selection/features", "final/checkpoint-2"):
        unchanged = {f: t for f, t in cached.items() if f.startswith(os.path.join(root, stage))}
        assert unchanged and {f: now[f] for f in unchanged} == unchanged, f"{stage} was redone"
    assert sorted(n for n in os.listdir(os.path.join(root, "warmup")) if n.startswith("checkpoint-")) == [
        "checkpoint-2", "checkpoint-4"
    ]
    assert trainer.selection.loaded
    assert trainer.selection.selected_indices == full_run.trainer.selection.selected_indices
    np.testing.assert_array_equal(trainer.selection.scores, full_run.trainer.selection.scores)
    assert trainer.state.global_step == 2


@pytest.mark.parametrize("killed", ["before_last_features", "during_last_features"])
def test_interrupted_warmup_resumes_to_the_same_selection(full_run, tokenizer, data, tmp_path, killed):
    root = copy_stages(full_run.root, tmp_path)
    selection_dir = os.path.join(root, "selection")
    os.remove(os.path.join(root, "warmup", "STAGE_DONE.json"))
    last = os.path.join(selection_dir, "features", "checkpoint-4")
    if killed == "before_last_features":  # killed between the trainer's save and the selector's on_save
        shutil.rmtree(last)
    else:  # killed while writing the last checkpoint's features
        os.remove(os.path.join(last, "meta.json"))
        chunks = os.path.join(last, "chunks")
        os.remove(os.path.join(chunks, sorted(os.listdir(chunks))[-1]))
    for name in ("scores.npy", "valid.npy", "selection.json", "selected_indices.json", "selected.jsonl"):
        os.remove(os.path.join(selection_dir, name))
    shutil.rmtree(os.path.join(selection_dir, "selected"))
    warmup_files = files_with_mtimes(os.path.join(root, "warmup"))

    trainer, _ = rose_trainer(tokenizer, root, data)
    trainer.train()
    assert files_with_mtimes(os.path.join(root, "warmup", "checkpoint-4")) == {
        f: t for f, t in warmup_files.items() if "checkpoint-4" in f
    }, "the warmup must not train again"
    expected = full_run.trainer.selection
    assert trainer.selection.steps == [2, 4]
    np.testing.assert_allclose(trainer.selection.weights, expected.weights, rtol=1e-12)
    np.testing.assert_allclose(trainer.selection.scores, expected.scores, rtol=1e-5, atol=1e-7)
    assert trainer.selection.selected_indices == expected.selected_indices


@pytest.mark.parametrize(
    "change,differing",
    [({"beta": 0.5}, "beta"), ({"warmup_fraction": 0.2}, "warmup_indices"),
     ({"training": {"learning_rate": 5e-3}}, "training_args")],
)  # fmt: skip
def test_changed_settings_refuse_a_finished_warmup(full_run, tokenizer, data, tmp_path, change, differing):
    root = copy_stages(full_run.root, tmp_path)
    trainer, _ = rose_trainer(tokenizer, root, data, **change)
    with pytest.raises(CacheMismatchError, match=f"warmup stage .* other inputs .*{differing}: recorded.*overwrite=True") as info:
        trainer.train()
    assert differing in info.value.fields
    assert not os.path.exists(os.path.join(root, "final", "STAGE_INPUTS.json")), "the final stage must not start"
    assert json.load(open(os.path.join(root, "selection", "run.json")))["beta"] == 0.1


def test_other_selection_refuses_the_final_stage_unless_overwrite(full_run, tokenizer, data, tmp_path):
    root = copy_stages(full_run.root, tmp_path, ("warmup", "selection", "final"))
    warmup = files_with_mtimes(os.path.join(root, "warmup"))
    trainer, _ = rose_trainer(tokenizer, root, data, selection_fraction=0.1)
    with pytest.raises(ValueError, match="final stage .* other inputs .selected_indices: recorded"):
        trainer.train()
    trainer, _ = rose_trainer(tokenizer, root, data, selection_fraction=0.1, overwrite=True)
    trainer.train()
    assert files_with_mtimes(os.path.join(root, "warmup")) == warmup, "the warmup is still valid"
    assert len(trainer.selection.selected_indices) == len(trainer.train_dataset) == 10
    assert trainer.selection.selected_indices[:5] == full_run.trainer.selection.selected_indices
    assert trainer.state.global_step == 4  # 10 rows, batch 8, 2 epochs: trained again, not resumed


def test_full_final_training(full_run, tokenizer, data, tmp_path):
    root = copy_stages(full_run.root, tmp_path)
    probe = StageProbe()
    trainer, base = rose_trainer(tokenizer, root, data, probe, final_training="full")
    trainer.train()
    assert trainer.selection.selected_indices == full_run.trainer.selection.selected_indices
    assert not any("lora_" in name for name in probe.start), "no adapter in full fine-tuning"
    assert probe.start.keys() == base.keys()
    assert all(torch.equal(probe.start[name], base[name]) for name in base), "starts from the base"
    after = dict(trainer.model.named_parameters())
    assert all(param.requires_grad for param in after.values())
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"].detach(),
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert len(trainer.train_dataset) == 5


def test_final_num_train_epochs_sets_the_final_stage_only(full_run, tokenizer, data, tmp_path):
    root = copy_stages(full_run.root, tmp_path)
    warmup_epochs = full_run.trainer.args.num_train_epochs
    trainer, _ = rose_trainer(tokenizer, root, data, final_num_train_epochs=warmup_epochs + 2)
    trainer.train()  # the copied warmup and selection are reused: only the final stage runs
    assert trainer.warmup_trainer is None
    assert trainer.final_trainer.args.num_train_epochs == warmup_epochs + 2
    assert trainer.state.epoch == pytest.approx(warmup_epochs + 2)
    assert trainer.state.global_step > full_run.trainer.state.global_step  # more epochs over the same rows


def test_a_warmup_of_one_step_per_epoch_under_a_warmup_ratio_fails_before_training(tokenizer, data, tmp_path):
    # 8% of 100 rows = 8 rows at 8 a step: one step per epoch, and warmup_steps=0.03 gives the first step rate 0. The
    # selection then weighed the first checkpoint 0 (or, with one epoch, refused "All learning rates are 0").
    trainer, _ = rose_trainer(tokenizer, tmp_path, data, training={"warmup_steps": 0.03}, warmup_fraction=0.08)
    with pytest.raises(ValueError, match=r"steps 1-1\) has learning rate 0.*num_train_epochs=2, "
                                         r"per_device_train_batch_size=8.*warmup_steps=0.03.*Fix:.*warmup_fraction"):
        trainer.train()
    assert trainer.warmup_trainer.state.global_step == 0
    assert not [name for name in os.listdir(tmp_path / "warmup") if name.startswith("checkpoint-")]
