"""What the trust benchmark (`python -m benchmarks.quality.trust`) runs and reads: seeds, warmups, methods, and the
benchmark configuration; shared by its collection, analysis and rendering."""

from __future__ import annotations

DEFAULT_OUTPUT = "outputs/bench_trust"
DEV_OUTPUT = "outputs/bench_real"
HELD_OUT_SEEDS = (3, 4, 5)
DEV_SEEDS = (0, 1, 2)
SECOND_SEED_OFFSET = 100
# name -> (seed offset, warmup epochs): the design's warmup, a second warmup seed, a deliberately short warmup.
WARMUPS = {"A": (0, None), "B": (SECOND_SEED_OFFSET, None), "bad_1epoch": (0, 1)}
FINAL_METHODS = ("random", "less", "rose", "dpo+sft", "oracle")
OBJECTIVE_OF = {"rose": "dpo", "less": "sft", "dpo+sft": "dpo+sft"}


def bench_config(output_dir: str, smoke: bool = False):
    from .run import QualityBenchConfig

    smaller = dict(pool_size=120, warmup_fraction=0.1, n_test_pairs=6, n_test_prompts=6) if smoke else {}
    return QualityBenchConfig.real(output_dir=output_dir, **smaller)


DEFAULT = "dpo+sft"  # the library's default ranking (RoseConfig.validation_objective)
