"""The 8B cost table of docs/speed.md: an EXTRAPOLATION, regenerated from its parameters by `render_table()`.

What is measured (benchmarks/results/speed_h200.json, H200, bf16): rose_hf's feature pass costs 1.31x a plain LoRA
training forward+backward per example (`sjlt`, batch 16). What is assumed: the 8B floor's throughput (a plain LoRA
training step of Llama-3.1-8B at `mfu` of the H200's bf16 peak; the tiny benchmark model's own 244,497 tokens/s is
overhead-bound, 0.4% of the peak, and does not scale to 8B), the average tokens per row, the number of validation
pairs, and a forward-only pass at 1/3 of a forward+backward.

```
python -m benchmarks.scale.cost_table            # prints the markdown table
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

SPEED_JSON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "results", "speed_h200.json")


@dataclass(frozen=True)
class Setting:
    """One way of running the selection.

    Args:
        name: as the table shows it.
        warmup_epochs, warmup_fraction: the warmup (the paper: 4 epochs on 5%).
        checkpoints: feature passes (one per featurized checkpoint).
        prefilter_fraction: rows kept by a forward-only first stage over the whole pool (None: off).
        stored: pool features stored (`projection_dim` x `bytes_per_value` per row and checkpoint), or streamed
            (per row, `pairs` x 2 objectives float32 similarities per checkpoint).
    """

    name: str
    warmup_epochs: float = 4.0
    warmup_fraction: float = 0.05
    checkpoints: int = 4
    prefilter_fraction: float | None = None
    stored: bool = True
    projection_dim: int = 8192
    bytes_per_value: int = 2


PAPER = Setting("(a) paper: 4-epoch warmup on 5%, 4 checkpoints, stored float16 8192-dim")


def library_default() -> Setting:
    """rose_hf's default (`RoseConfig()`): its first stage and storage at every checkpoint of the paper's warmup."""
    from rose_hf import RoseConfig

    config = RoseConfig()
    share = "no first stage" if config.prefilter_fraction is None else f"first stage {config.prefilter_fraction:.0%}"
    storage = "stored" if config.store_pool_features else "streamed"
    return Setting(f"(b) default: {share}, 4 checkpoints, {storage}", prefilter_fraction=config.prefilter_fraction,
                   stored=config.store_pool_features)  # fmt: skip


CHEAPEST = Setting("(c) first stage 20%, 1 checkpoint, streamed", checkpoints=1, prefilter_fraction=0.2, stored=False)


@dataclass(frozen=True)
class Hardware:
    """Llama-3.1-8B LoRA on `gpus` H200s. `feature_over_floor` is measured; the rest is assumed."""

    parameters: float = 8.03e9
    gpus: int = 8
    peak_flops: float = 989e12  # H200 bf16 dense
    mfu: float = 0.35
    feature_over_floor: float = 1.31  # measured: speed_h200, sjlt, batch 16
    forward_only_cost: float = 1.0 / 3.0
    tokens_per_row: float = 512.0  # assumed average of LESS's mixture (Flan v2, CoT, Dolly, OASST1) after truncation
    pairs: int = 50

    @property
    def floor_tokens_per_second(self) -> float:
        """Plain LoRA training tokens/s of the whole machine (6 x parameters FLOPs per token)."""
        return self.gpus * self.mfu * self.peak_flops / (6 * self.parameters)


def measured_feature_over_floor(path: str = SPEED_JSON, projection: str = "sjlt", batch: str = "16") -> float:
    """The feature pass's time per example over the floor's, from the H200 speed benchmark."""
    with open(path) as handle:
        return float(json.load(handle)["ratios"]["extraction_vs_floor_per_example"][projection][batch])


def cost_row(rows: int, setting: Setting, hardware: Hardware = Hardware()) -> dict[str, float]:
    """Pool-epochs, hours and disk of `setting` on a pool of `rows` rows.

    Pool-epochs count forward+backward passes over the whole pool: the warmup (epochs x fraction), the first stage
    (`forward_only_cost`), the feature passes (checkpoints x featured share, each at `feature_over_floor`). Rows,
    passes and bytes are `rose_hf.SelectionPlan`'s, the plan a run logs before it starts.
    """
    from rose_hf import RoseConfig, SelectionPlan

    dtype = {2: "float16", 4: "float32", 1: "int8"}[setting.bytes_per_value]
    config = RoseConfig(prefilter_fraction=setting.prefilter_fraction, store_pool_features=setting.stored,
                        feature_dtype=dtype, projection_dim=setting.projection_dim, selection_fraction=None,
                        selection_size=1)  # fmt: skip
    # The library's own plan (what a run states before it starts): passes and the bytes its files take.
    plan = SelectionPlan.from_config(config, rows, setting.checkpoints, setting.projection_dim, hardware.pairs,
                                     warmup_rows=setting.warmup_fraction * rows, warmup_epochs=setting.warmup_epochs)  # fmt: skip
    cost = plan.pool_epochs()
    first_stage = hardware.forward_only_cost if setting.prefilter_fraction is not None else 0.0
    epochs = cost["warmup"] + first_stage + cost["features"]  # passes, in pool-epochs
    time_epochs = cost["warmup"] + first_stage + cost["features"] * hardware.feature_over_floor
    hours = time_epochs * rows * hardware.tokens_per_row / hardware.floor_tokens_per_second / 3600
    disk = plan.num_passes * sum(plan.checkpoint_bytes().values()) + plan.first_stage_bytes()
    return {"rows": rows, "featured_rows": plan.featured_rows, "pool_epochs": epochs, "pool_epochs_time": time_epochs,
            "hours": hours, "disk_bytes": disk, "disk_per_checkpoint": sum(plan.checkpoint_bytes().values())}  # fmt: skip


def render_table(sizes=(270_679, 1_000_000, 6_000_000), settings=None, hardware: Hardware | None = None) -> str:
    """The markdown table of docs/speed.md (default settings: the paper's, the library's default, the cheapest)."""
    hardware = hardware or Hardware(feature_over_floor=measured_feature_over_floor())
    settings = settings or (PAPER, library_default(), CHEAPEST)
    lines = [
        f"EXTRAPOLATION, not measured: Llama-3.1-8B LoRA on {hardware.gpus} H200s, {hardware.tokens_per_row:.0f} "
        f"tokens per row (assumed), floor {hardware.floor_tokens_per_second:,.0f} tokens/s ({hardware.mfu:.0%} MFU, "
        f"assumed), feature pass {hardware.feature_over_floor:.2f}x the floor per example (measured, speed_h200), "
        f"forward-only {hardware.forward_only_cost:.2f}x (assumed), {hardware.pairs} validation pairs.",
        "",
        "| setting | rows | rows with gradient features | passes (pool-epochs) | hours | disk |",
        "|---|---|---|---|---|---|",
    ]
    for setting in settings:
        for rows in sizes:
            row = cost_row(rows, setting, hardware)
            lines.append(f"| {setting.name} | {rows:,} | {row['featured_rows']:,} | {row['pool_epochs']:.2f} | "
                         f"{row['hours']:.1f} | {row['disk_bytes'] / 1e9:.2f} GB |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table())
