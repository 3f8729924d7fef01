"""Shared builders for the tests: tiny LoRA models, tokenizer, small datasets. Offline."""

from __future__ import annotations

import os

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from rose_fixtures.tasks import vocabulary
from rose_fixtures.tiny import build_model, build_tokenizer, lora_target_modules
from rose_hf.cache.store import FeatureStore

# The repository root (tests, benchmarks and fixtures all live under it).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXTRA_WORDS = ["hello", "world", "what", "is", "the", "answer", "yes", "no", "good", "bad", "question"]


def make_tokenizer():
    return build_tokenizer(vocabulary() + EXTRA_WORDS)


def make_lora_model(tokenizer, architecture="llama", attn_implementation="sdpa", seed=0, r=4, randomize_b=True, **kw):
    """A tiny LoRA model whose B matrices are non-zero (PEFT initialises B to 0, which would zero A's gradient)."""
    model = build_model(architecture, tokenizer, attn_implementation=attn_implementation, seed=seed, **kw)
    return add_lora(model, lora_target_modules(architecture), seed=seed, r=r, randomize_b=randomize_b)


def add_lora(model, target_modules, seed=0, r=4, randomize_b=True):
    """`model` with a LoRA adapter (dropout 0.1, which feature mode turns off); B non-zero unless `randomize_b=False`."""
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if randomize_b:
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=generator) * 0.1
    return model


def pool_dataset(n=12, seed=0):
    """Prompt-completion rows of mixed lengths."""
    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task

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


DISTRIBUTED_ROSE = dict(projection_dim=256, chunk_size=7, feature_batch_size=4, feature_max_length=64, report=False,
                        scoring="paper", validation_objective="dpo")


def distributed_setup(output_dir, zero_stage=0, prefilter_fraction=None):
    """The tiny warmup of the distributed tests, identical in every process count (data, seeds, LoRA); with
    `prefilter_fraction`, the prefilter keeps that share of the pool for the features."""
    from trl import SFTConfig, SFTTrainer

    from rose_hf import RoseConfig, RoseDataSelector

    tokenizer = make_tokenizer()
    pool, task = pool_dataset(45)  # 45 rows / chunks of 7 = 7 chunks: uneven across 2 processes
    pairs = task.validation.select(range(6))
    model = build_model("llama", tokenizer, hidden_size=32, seed=0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_target_modules("llama"),
                      task_type="CAUSAL_LM")
    rose = dict(prefilter_fraction=prefilter_fraction, **DISTRIBUTED_ROSE)
    selector = RoseDataSelector(pool, pairs, RoseConfig(selection_dir=os.path.join(output_dir, "rose"), **rose))
    # The same warmup's checkpoints without stored pool features, in the same launch (one launch, both settings).
    streamed = RoseConfig(selection_dir=os.path.join(output_dir, "rose_streamed"), store_pool_features=False, **rose)
    streamed_selector = RoseDataSelector(pool, pairs, streamed)
    deepspeed = None
    # Under `accelerate launch` with a DeepSpeed config, the Trainer takes DeepSpeed from accelerate's plugin.
    if zero_stage and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true":
        deepspeed = {
            "zero_optimization": {"stage": zero_stage},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
        }
    args = SFTConfig(
        output_dir=os.path.join(output_dir, "warmup"),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        save_strategy="epoch",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=64,
        seed=0,
        gradient_checkpointing=False,
        deepspeed=deepspeed,
        disable_tqdm=True,
    )
    warmup = pool.select(range(16)).remove_columns(["family", "correct", "source", "id"])

    def make_trainer(callbacks):
        return SFTTrainer(model=model, args=args, train_dataset=warmup, processing_class=tokenizer, peft_config=lora,
                          callbacks=callbacks)

    return {"tokenizer": tokenizer, "pool": pool, "pairs": pairs, "lora": lora, "selector": selector,
            "streamed_selector": streamed_selector, "make_trainer": make_trainer}


def unit_rows(rng, rows, dim):
    x = rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_feature_store(root, subtasks, checkpoints=2, rows=40, dim=24):
    """A finished feature cache of random unit features, written through the store's own API."""
    rng = np.random.default_rng(1)
    store, pool, validation, learning_rates = FeatureStore(str(root)), [], [], []
    for c in range(checkpoints):
        checkpoint = store.checkpoint(5 * (c + 1))
        rates = [1e-3 * (1 - c / checkpoints)] * 5
        checkpoint.create(num_rows=rows, dim=dim, dtype="float32", chunk_size=16, learning_rates=rates)
        pool.append(unit_rows(rng, rows, dim))
        for chunk in range(checkpoint.num_chunks()):
            span = checkpoint.chunk_rows(chunk)
            checkpoint.write_chunk(chunk, pool[-1][span.start:span.stop], np.ones(len(span), np.int8))
        validation.append({name: unit_rows(rng, len(subtasks), dim) for name in ("dpo", "sft")})
        checkpoint.write_validation(validation[-1])
        checkpoint.finalize({})
        learning_rates.append(rates)
    return store, pool, validation, learning_rates
