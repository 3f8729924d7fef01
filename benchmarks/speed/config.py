"""Settings of the speed benchmark: `SpeedBenchConfig`, its full and quick size presets, and the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Sizes of the two modes. Fields of `SpeedBenchConfig` left at `None` take these values.
FULL_SIZES: dict[str, Any] = dict(
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    intermediate_size=688,
    lora_r=16,
    lora_alpha=32,
    seq_len=256,
    projection_dim=8192,
    batch_sizes=(1, 4, 16, 32),
    repeats=3,
    reference_examples=3,
    quality_pool_size=512,
    quality_validation_size=8,
    pool_sizes=(10_000, 50_000, 200_000),
    scoring_dim=8192,
    write_chunk_rows=1024,
    min_seconds=0.5,
)
QUICK_SIZES: dict[str, Any] = dict(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=172,
    lora_r=8,
    lora_alpha=16,
    seq_len=64,
    projection_dim=1024,
    batch_sizes=(1, 4, 16),
    repeats=3,
    reference_examples=2,
    quality_pool_size=64,
    quality_validation_size=4,
    pool_sizes=(2_000, 8_000, 32_000),
    scoring_dim=1024,
    write_chunk_rows=256,
    min_seconds=0.1,
)
# The targets, checked in `ratios`.
TARGET_RATIO_VS_FLOOR = 1.5
AIM_RATIO_VS_FLOOR = 1.25
TARGET_SPEEDUP_VS_REFERENCE_GPU = 10.0
TOP_FRACTION = 0.05


def _rose_default_projection() -> str:
    from rose_hf import RoseConfig

    return RoseConfig().projection


def _rose_projections() -> tuple[str, ...]:
    # The library's list, so that a new projection kind is benchmarked without touching this file. Imported here,
    # not at the top: rose_hf.rose_config pulls in torch, and `--help` stays instant.
    from rose_hf.rose_config import PROJECTIONS

    return PROJECTIONS


@dataclass
class SpeedBenchConfig:
    """Settings of the speed benchmark. Size fields left at `None` take the full or the quick preset.

    Example:
    ```python
    >>> config = SpeedBenchConfig(output_dir="outputs/bench_speed", quick=True)
    >>> config.batch_sizes
    (1, 4, 16)
    ```
    """

    output_dir: str = field(default="outputs/bench_speed", metadata={"help": "Folder for speed.json and speed.md."})
    quick: bool = field(
        default=False, metadata={"help": "Tiny sizes (about a minute on 2 CPU cores), for tests and smoke runs."}
    )
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cpu' or 'cuda[:i]'."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Model dtype: 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'."},
    )
    projections: tuple[str, ...] = field(
        default_factory=lambda: _rose_projections(),
        metadata={"help": "Projection kinds to time (rose_hf's: 'rademacher', 'sjlt', 'none')."},
    )
    default_projection: str = field(
        default_factory=lambda: _rose_default_projection(),
        metadata={"help": "The kind the headline ratios use (RoseConfig's default)."},
    )
    target_batch_size: int = field(
        default=16, metadata={"help": "Batch size of the headline ratios and the phase split (always measured)."}
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (full: 256, quick: 64)."})
    num_layers: int | None = field(default=None, metadata={"help": "Decoder layers (full: 4, quick: 2)."})
    num_heads: int | None = field(default=None, metadata={"help": "Attention heads (key/value heads: half)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (full: 688, quick: 172)."})
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank on q, k, v, o (full: 16, quick: 8)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (full: 32, quick: 16)."})
    seq_len: int | None = field(
        default=None, metadata={"help": "Tokens per example; the loss is on the last half (full: 256, quick: 64)."}
    )
    projection_dim: int | None = field(default=None, metadata={"help": "Projected dimension (full: 8192)."})
    batch_sizes: tuple[int, ...] | None = field(
        default=None, metadata={"help": "Feature-extraction batch sizes (full: 1 4 16 32, quick: 1 4 16)."}
    )
    repeats: int | None = field(default=None, metadata={"help": "Timed repeats after one warm-up (median reported)."})
    reference_examples: int | None = field(
        default=None, metadata={"help": "Examples timed through the LESS-style batch-size-1 loop (after one warm-up)."}
    )
    quality_pool_size: int | None = field(
        default=None, metadata={"help": "Pool examples for the projection-quality comparison (full: 512)."}
    )
    quality_validation_size: int | None = field(
        default=None, metadata={"help": "Validation directions (two subtasks) for the quality comparison."}
    )
    pool_sizes: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "Rows of the on-disk pools scored in subprocesses (full: 10000 50000 200000, quick: 2000 "
            "8000 32000)."
        },
    )
    scoring_dim: int | None = field(
        default=None, metadata={"help": "Feature dimension of the scored pools (float16 on disk; full: 8192)."}
    )
    write_chunk_rows: int | None = field(
        default=None, metadata={"help": "Rows per store chunk when timing the feature write (RoseConfig.chunk_size)."}
    )
    min_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Repeat each timed call until the repeats add up to this many seconds (at most 25 calls): "
            "more samples for millisecond-scale work on a shared machine (full: 0.5, quick: 0.1)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the model, the data and the Adam state."})

    def __post_init__(self) -> None:
        preset = QUICK_SIZES if self.quick else FULL_SIZES
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.projections = tuple(self.projections)
        self.batch_sizes = tuple(sorted(set(self.batch_sizes) | {self.target_batch_size}))
        self.pool_sizes = tuple(sorted(set(self.pool_sizes)))
        for kind in self.projections:
            if kind not in _rose_projections():
                raise ValueError(f"projections holds {kind!r}; use kinds from {list(_rose_projections())}.")
        if self.default_projection not in self.projections:
            raise ValueError(
                f"default_projection={self.default_projection!r} must be one of projections={list(self.projections)}: "
                "add it to `projections`."
            )
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} is not valid: use 'auto', 'float32' or 'bfloat16'.")
        for name in (
            "target_batch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "lora_r",
            "lora_alpha", "projection_dim", "repeats", "reference_examples", "quality_validation_size",
            "scoring_dim", "write_chunk_rows",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if any(b < 1 for b in self.batch_sizes) or any(n < 1 for n in self.pool_sizes) or not self.pool_sizes:
            raise ValueError("batch_sizes and pool_sizes must be non-empty lists of positive integers.")
        if self.seq_len < 4:
            raise ValueError(f"seq_len={self.seq_len} must be >= 4 (half prompt, half completion).")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}.")
        if self.quality_pool_size < 20:
            raise ValueError(f"quality_pool_size={self.quality_pool_size} must be >= 20 for a meaningful top 5%.")
