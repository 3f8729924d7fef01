"""Data and model loading of the `rose-hf` commands: what the recipe names, nothing bundled."""

from __future__ import annotations

import os

from .arguments import RoseScriptArguments


def load_data(script_args: RoseScriptArguments):
    """The pool and the preference pairs named by `script_args`."""
    pool = load_any(script_args.dataset_name, script_args.dataset_train_split)
    pairs = load_any(script_args.preference_dataset_name, script_args.preference_dataset_split)
    return pool, pairs


def load_any(name: str, split: str):
    """A `datasets.Dataset` from a `save_to_disk` folder, a data file, or the Hub (offline: from its cache)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(os.path.join(name, "dataset_dict.json"))
    ):
        dataset = load_from_disk(name)
        return dataset[split] if isinstance(dataset, DatasetDict) else dataset
    extension = os.path.splitext(name)[1].lstrip(".")
    if os.path.isfile(name):
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"{name}: unsupported data file type {extension!r}; use .json, .jsonl, .parquet or .csv.")
        return load_dataset(builder, data_files=name, split="train")
    dataset = load_dataset(name, split=split)
    assert isinstance(dataset, Dataset)
    return dataset


def load_model_and_tokenizer(model_args, gguf_file: str | None = None):
    """The base model name/path and its tokenizer (pad token = EOS when it has none, as TRL does).

    With `gguf_file`, the folder and no tokenizer: `RoseTrainer(gguf_file=...)` loads both from the float copy."""
    from transformers import AutoTokenizer

    name = model_args.model_name_or_path
    if gguf_file is not None:
        return name, None
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return name, tokenizer


def peft_config(model_args):
    from trl import get_peft_config

    if not model_args.use_peft:
        raise ValueError("ROSE features are LoRA gradients: set `use_peft: true` (and lora_r, lora_target_modules...).")
    return get_peft_config(model_args)


def model_init_kwargs(model_args) -> dict | None:
    """`from_pretrained` kwargs of the recipe's base model: its `dtype` and, for QLoRA (`load_in_4bit: true`), TRL's
    bitsandbytes config. It goes into `model_init_kwargs` (as a dict, which `from_pretrained` accepts and JSON
    keeps) so that the warmup and the final training both load the base in 4 bits."""
    from trl import get_quantization_config

    kwargs = {}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization.to_dict()
    return kwargs or None


def build_trainer(script_args, rose_config, training_args, model_args):
    """The `RoseTrainer` of a recipe."""
    from ..trainer.rose_trainer import RoseTrainer

    pool, pairs = load_data(script_args)
    model_name, tokenizer = load_model_and_tokenizer(model_args, script_args.gguf_file)
    if training_args.model_init_kwargs is None:
        training_args.model_init_kwargs = model_init_kwargs(model_args)
    return RoseTrainer(
        model=model_name,
        args=training_args,
        train_dataset=pool,
        preference_dataset=pairs,
        rose_config=rose_config,
        peft_config=peft_config(model_args),
        processing_class=tokenizer,
        gguf_file=script_args.gguf_file,
    )
