"""The headline measurement: a plain LoRA training step (the floor) against rose_hf's feature extraction of every
projection kind, interleaved round by round at each batch size, plus the amortised feature-store write.

The floor and the extraction of each kind run in turn within each round, so each round also gives a paired ratio that
load from other processes on a shared machine disturbs less than the absolute times.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

from .harness import measure, measure_interleaved, per_batch
from .workload import slice_batch

if TYPE_CHECKING:
    import numpy as np


def measure_write(
    kind: str, dim: int, rows: int, features: np.ndarray, folder: str, repeats: int, device, min_seconds: float
) -> dict[str, Any]:
    """Time `CheckpointFeatures.write_chunk` of one float16 chunk (what the pipeline does per chunk), per row."""
    import numpy as np

    from rose_hf.cache.store import STATUS_OK, CheckpointFeatures

    checkpoint = CheckpointFeatures(os.path.join(folder, f"write-{kind}"), step=0)
    checkpoint.create(rows, dim, "float16", rows)
    chunk = np.resize(features.astype(np.float32), (rows, dim))  # repeats the measured rows
    status = np.full(rows, STATUS_OK, dtype=np.int8)
    # astype included: the pipeline converts float32 features to the storage dtype right before writing.
    timing = measure(
        lambda: checkpoint.write_chunk(0, chunk.astype(np.float16), status), repeats, device, min_seconds=min_seconds
    )
    return {
        "rows_per_chunk": rows,
        "dim": dim,
        "bytes_per_row": dim * 2,
        "seconds_per_chunk": timing["seconds"],
        "seconds_per_row": timing["seconds"] / rows,
        **{k: v for k, v in timing.items() if k != "seconds"},
    }


def measure_throughput(model, lora_params, featurizers, adam, batch, write, config, device) -> dict[str, Any]:
    """The floor and rose_hf's extraction of every projection kind, interleaved round by round per batch size.

    Floor: a plain batched LoRA training step, batch mean loss, `loss.backward()` into `.grad`, no optimizer.
    Extraction: `Featurizer.pool_features` (hooks + Adam + projection + normalise + to host) plus the amortised write.
    """
    floor_rows: list[dict[str, Any]] = []
    extraction: dict[str, list[dict[str, Any]]] = {kind: [] for kind in featurizers}
    for index, batch_size in enumerate(config.batch_sizes):
        part = slice_batch(batch, 0, batch_size)

        def floor_step(part=part) -> None:
            out = model(
                input_ids=part["input_ids"],
                attention_mask=part["attention_mask"],
                labels=part["labels"],
                use_cache=False,
            )
            out.loss.backward()
            for param in lora_params:
                param.grad = None

        steps: dict[str, Callable[[], Any]] = {"floor": floor_step}
        for kind, featurizer in featurizers.items():
            steps[kind] = lambda part=part, f=featurizer: f.pool_features(part, adam)
        # Extraction's first call builds the projector's cache; on CUDA every new shape also gets its own warm-up.
        warmup = {kind: 1 if index == 0 or device.type == "cuda" else 0 for kind in featurizers}
        timings = measure_interleaved(steps, config.repeats, device, warmup, config.min_seconds)

        floor = per_batch(timings["floor"], batch_size, config.seq_len)
        floor_rows.append(floor)
        line = [f"floor {floor['examples_per_s']:.2f}"]
        for kind, featurizer in featurizers.items():
            row = per_batch(timings[kind], batch_size, config.seq_len)
            per_row_write = write[kind]["seconds_per_row"]
            row["featurize_seconds_per_example"] = row["seconds_per_example"]
            row["write_seconds_per_example"] = per_row_write
            row["seconds_per_example"] += per_row_write
            row["seconds_per_example_min"] += per_row_write
            row["examples_per_s"] = 1.0 / row["seconds_per_example"]
            row["tokens_per_s"] = row["examples_per_s"] * config.seq_len
            row["feature_dim"] = featurizer.dim
            # Per-round ratio to the floor step run just before it: robust to load from other processes.
            row["vs_floor_paired"] = statistics.median(
                (t / batch_size + per_row_write) / (f / batch_size)
                for t, f in zip(timings[kind]["seconds_all"], timings["floor"]["seconds_all"])
            )
            extraction[kind].append(row)
            line.append(f"{kind} {row['examples_per_s']:.2f}")
        log(f"batch {batch_size:3d} examples/s: " + ", ".join(line))
    return {"floor": floor_rows, "extraction": extraction}
