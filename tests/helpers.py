"""Shared builders for the tests: tiny LoRA models, tokenizer, small datasets. Offline."""

from __future__ import annotations

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from rose_hf.bench.synthetic import vocabulary
from rose_hf.tiny import build_model, build_tokenizer, lora_target_modules

EXTRA_WORDS = ["hello", "world", "what", "is", "the", "answer", "yes", "no", "good", "bad", "question"]


def make_tokenizer():
    return build_tokenizer(vocabulary() + EXTRA_WORDS)


def make_lora_model(tokenizer, architecture="llama", attn_implementation="sdpa", seed=0, r=4, randomize_b=True, **kw):
    """A tiny LoRA model whose B matrices are non-zero (PEFT initialises B to 0, which would zero A's gradient)."""
    model = build_model(architecture, tokenizer, attn_implementation=attn_implementation, seed=seed, **kw)
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=lora_target_modules(architecture),
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if randomize_b:
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=generator) * 0.1
    return model


def pool_dataset(n=12, seed=0):
    """Prompt-completion rows of mixed lengths."""
    from rose_hf.bench.synthetic import SyntheticTaskConfig, make_synthetic_task

    task = make_synthetic_task(SyntheticTaskConfig(pool_size=max(n, 200), seed=seed))
    return task.pool.select(range(n)), task


def preference_dataset(n=4, seed=0):
    _, task = pool_dataset(seed=seed)
    return task.validation.select(range(n))


def tiny_pairs():
    return Dataset.from_dict(
        {
            "prompt": ["what is the answer ?", "hello world", "is the question good ?"],
            "chosen": [" yes", " hello", " no it is bad"],
            "rejected": [" no", " world world", " yes"],
        }
    )
