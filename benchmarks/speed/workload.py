"""What every section measures: the Llama-style LoRA model, the synthetic batches, the Adam state, and a record of
the machine they run on."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import SpeedBenchConfig


def resolve_device(name: str) -> torch.device:
    """`config.device` as a torch device ('auto': CUDA when available)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was requested but CUDA is not available: use --device cpu or auto.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`config.dtype` as a torch dtype ('auto': bfloat16 on CUDA, float32 on CPU)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def build_lora_model(config: SpeedBenchConfig, tokenizer: Any, device: torch.device, dtype: torch.dtype, attn: str):
    """The benchmark's Llama-style LoRA model (LoRA on q, k, v, o; B initialised non-zero so A gets gradients)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rose_fixtures.tiny import build_model, lora_target_modules

    base = build_model(
        "llama",
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=max(512, config.seq_len),
        attn_implementation=attn,
        dtype=dtype,
        seed=config.seed,
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=lora_target_modules("llama"),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would make every gradient of A zero
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.to(device)


def synthetic_batch(num: int, seq_len: int, vocab_size: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Random token ids, full attention mask, loss on the last half of each sequence (the 'completion')."""
    import torch

    from rose_fixtures.tiny import SPECIAL_TOKENS
    from rose_hf.data import IGNORE_INDEX

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (num, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : seq_len // 2] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


def slice_batch(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows `start:stop` of every tensor of `batch`."""
    return {key: value[start:stop] for key, value in batch.items()}


def random_adam_state(num_params: int, seed: int):
    """Adam moments as a warmup would leave them: m small and signed, v positive."""
    import torch

    from rose_hf.features.preconditioner import AdamState

    generator = torch.Generator().manual_seed(seed + 2)
    exp_avg = torch.randn(num_params, generator=generator) * 1e-4
    exp_avg_sq = (torch.rand(num_params, generator=generator) * 0.9 + 0.1) * 1e-6
    return AdamState(exp_avg, exp_avg_sq, beta1=0.9, beta2=0.999, eps=1e-8)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows, as `Featurizer` does (zero or non-finite rows become zero)."""
    import torch

    norms = x.norm(dim=1)
    ok = torch.isfinite(x).all(dim=1) & torch.isfinite(norms) & (norms > 0)
    return torch.where(ok[:, None], x / norms.clamp(min=1e-30)[:, None], torch.zeros_like(x))


def model_summary(config: SpeedBenchConfig, model: Any, tokenizer: Any, collector: Any, featurizers: dict) -> dict:
    """The sizes of the measured model, for the report (`speed.json`'s "model")."""
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {
        "architecture": "llama",
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_key_value_heads": max(1, config.num_heads // 2),
        "intermediate_size": config.intermediate_size,
        "vocab_size": len(tokenizer),
        "base_parameters": base_params,
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lora_parameters": collector.num_params,
        "seq_len": config.seq_len,
        "completion_tokens_per_example": config.seq_len - config.seq_len // 2,
        "attention": "sdpa",
        "projection_dims": {kind: f.dim for kind, f in featurizers.items()},
    }


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Device, library versions, threads and the load average: what a reader needs to judge the timings."""
    import numpy as np
    import peft
    import torch
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as handle:
                name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
        except OSError:
            pass
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable_cpus = os.cpu_count()
    return {
        "device": str(device),
        "device_name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "cuda_version": torch.version.cuda,
        # Other processes on a shared machine distort CPU timings: a load above the number of usable CPUs at the
        # start or the end of the run says so.
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not available on this platform
        return None
