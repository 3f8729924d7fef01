"""What a selection will cost, said before it is paid: rows, passes, pool-epochs, bytes on disk, and a time estimate.

`SelectionPlan` is built once the model's LoRA (hence the feature dimension) and the warmup's checkpoints are known,
before the first feature pass; `describe()` is the line the log states, `check_disk()` refuses a disk that cannot hold
it (before anything is written), and `SelectionClock` turns the first finished rows into an estimate of the rest.

The byte counts come from the store's own layout (`rose_hf.cache.store.checkpoint_file_bytes`), so they are what a run
writes, not a guess. Two settings may be absent from `RoseConfig` (read with `getattr`):
- `prefilter_fraction` (None: off): one forward-only pass over the whole pool keeps `ceil(fraction x rows)` rows for
  gradient features;
- `store_pool_features` (True): False keeps, per checkpoint, only each row's similarity to each validation pair for
  each objective (float32) instead of its `projection_dim` features.

Example:
```python
>>> plan = SelectionPlan.from_config(RoseConfig(), pool_rows=270_679, num_passes=4, dim=8192, num_pairs=50)
>>> print(plan.describe())
>>> plan.check_disk("rose_output")
```
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cache.store import (
    STATUS_DTYPE,
    VALIDATION_FEATURES,
    checkpoint_file_bytes,
    npy_nbytes,
)
from .errors import DiskSpaceError
from .logs import summary

# Cost of a forward-only pass relative to a forward+backward one, for the pool-epoch count of the first stage: the
# usual rule of thumb (a backward costs about two forwards), until the first stage's own cost is measured.
FORWARD_ONLY_COST = 1.0 / 3.0
# The JSON records a run writes besides the arrays (run.json; per checkpoint layout, fingerprint and meta; the
# selection's record, indices and report): small, their size depends on timings, so they are bounded, not counted.
RECORD_BYTES_PER_CHECKPOINT = 64 << 10
RECORD_BYTES_PER_RUN = 4 << 20
# A filesystem allocates whole blocks: small files take at least this much (counted by `check_disk` only).
BLOCK_BYTES = 4096


def _human(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num_bytes) < 1000 or unit == "TB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.2f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.2f} TB"  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class SelectionPlan:
    """The work and the disk of one selection, known before its first feature pass.

    Args:
        pool_rows: rows in the pool.
        num_passes: gradient-feature passes (warmup checkpoints that get features).
        dim: feature dimension (`projection_dim`, or the LoRA's size when that is smaller).
        num_pairs: validation preference pairs.
        feature_dtype: storage of pool features (`RoseConfig.feature_dtype`).
        chunk_size: rows per resumable chunk.
        prefilter_fraction: share of the pool kept for gradient features by the forward-only first stage (None: off).
        store_pool_features: whether pool features are stored (False: only per-pair similarities).
        warmup_rows, warmup_epochs: the warmup's size, for the pool-epoch count (None: not known here).
        selection_fraction: the budget's share of the pool (for the selected rows' copies; None: unknown).
        pool_bytes: the pool's own Arrow data, for the selected rows' copies.
    """

    pool_rows: int
    num_passes: int
    dim: int
    num_pairs: int
    feature_dtype: str = "float16"
    chunk_size: int = 1024
    prefilter_fraction: float | None = None
    store_pool_features: bool = True
    warmup_rows: int | None = None
    warmup_epochs: float | None = None
    selection_fraction: float | None = None
    pool_bytes: int = 0

    @classmethod
    def from_config(cls, config: Any, pool_rows: int, num_passes: int, dim: int, num_pairs: int, **kwargs):
        """The plan of `config` (a `RoseConfig`) for a pool of `pool_rows` rows and `num_passes` feature passes."""
        fraction = config.selection_fraction
        if getattr(config, "selection_size", None) is not None:
            fraction = config.selection_size / max(1, pool_rows)
        return cls(
            pool_rows=pool_rows, num_passes=num_passes, dim=dim, num_pairs=num_pairs,
            feature_dtype=config.feature_dtype, chunk_size=config.chunk_size,
            prefilter_fraction=getattr(config, "prefilter_fraction", None),
            store_pool_features=bool(getattr(config, "store_pool_features", True)),
            selection_fraction=fraction, **kwargs,
        )  # fmt: skip

    # --- rows and passes -----------------------------------------------------------------------------------------
    @property
    def featured_rows(self) -> int:
        """Rows that get gradient features: the whole pool, or the first stage's `ceil(fraction x rows)`."""
        if self.prefilter_fraction is None:
            return self.pool_rows
        return min(self.pool_rows, math.ceil(self.prefilter_fraction * self.pool_rows))

    def pool_epochs(self) -> dict[str, float]:
        """The cost in pool-epochs (one forward+backward over every pool row) of each stage, and their total.

        The warmup is counted when its size is known; the forward-only first stage at `FORWARD_ONLY_COST`.
        """
        rows = max(1, self.pool_rows)
        cost = {}
        if self.warmup_rows is not None and self.warmup_epochs is not None:
            cost["warmup"] = self.warmup_rows * self.warmup_epochs / rows
        if self.prefilter_fraction is not None:
            cost["first_stage"] = FORWARD_ONLY_COST
        cost["features"] = self.featured_rows * self.num_passes / rows
        cost["total"] = sum(cost.values())
        return cost

    # --- bytes ---------------------------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> dict[str, int]:
        """Bytes of each file one feature pass writes (JSON records excluded)."""
        return checkpoint_file_bytes(self.featured_rows, self.dim, self.feature_dtype, self.num_pairs, self.chunk_size,
                                     self.store_pool_features)  # fmt: skip

    def first_stage_bytes(self) -> int:
        """The forward-only first stage (`rose_hf.prefilter`): every row's float32 cosine to every pair, its status,
        and the kept rows' indices."""
        if self.prefilter_fraction is None:
            return 0
        return (npy_nbytes((self.pool_rows, self.num_pairs), np.float32) + npy_nbytes((self.pool_rows,), STATUS_DTYPE)
                + npy_nbytes((self.featured_rows,), np.int64))  # fmt: skip

    def selection_bytes(self) -> int:
        """`scores.npy`, `valid.npy`, and the selected rows' two copies (`selected/`, `selected.jsonl`)."""
        arrays = npy_nbytes((self.pool_rows,), np.float32) + npy_nbytes((self.pool_rows,), np.bool_)
        return arrays + int(2 * (self.selection_fraction or 0.0) * self.pool_bytes)

    @property
    def array_bytes(self) -> int:
        """Everything counted exactly: the feature passes' arrays and chunk records, the first stage, the scores."""
        return (self.num_passes * sum(self.checkpoint_bytes().values()) + self.first_stage_bytes()
                + self.selection_bytes())  # fmt: skip

    @property
    def total_bytes(self) -> int:
        """`array_bytes` plus a bound on the JSON records and the report."""
        return self.array_bytes + self.num_passes * RECORD_BYTES_PER_CHECKPOINT + RECORD_BYTES_PER_RUN

    def num_files(self) -> int:
        """Files the run writes (for the filesystem's per-file block rounding)."""
        chunks = -(-self.featured_rows // max(1, self.chunk_size))
        return self.num_passes * (len(self.checkpoint_bytes()) + chunks + 3) + 64

    # --- what the user reads -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The plan in one line, for the log before the first feature pass."""
        cost = self.pool_epochs()
        rows = f"{self.pool_rows:,} pool rows"
        if self.prefilter_fraction is not None:
            rows += (f"; first stage: one forward-only pass over all of them (~{cost['first_stage']:.2f} pool-epoch, "
                     f"{cost['first_stage'] / cost['total']:.0%} of the selection's compute) keeps "
                     f"{self.featured_rows:,} ({self.prefilter_fraction:.0%}) for gradient features")  # fmt: skip
        else:
            rows += " all get gradient features"
        stored = (f"{self.dim}-dim {self.feature_dtype} features" if self.store_pool_features
                  else f"{self.num_pairs} pairs x {len(VALIDATION_FEATURES)} objectives float32 similarities")  # fmt: skip
        per_pass = sum(self.checkpoint_bytes().values())
        parts = [
            rows,
            f"{self.num_passes} feature pass(es) of {self.featured_rows:,} rows (forward+backward each)",
            "cost " + ", ".join(f"{name} {value:.2f}" for name, value in cost.items()) + " pool-epochs",
            f"disk ~{_human(self.total_bytes)} ({_human(per_pass)} per pass: {stored}; "
            f"{_human(per_pass / max(1, self.featured_rows))} per row)",
        ]
        return "selection plan: " + "; ".join(parts) + "."

    def check_disk(self, selection_dir: str) -> dict[str, int]:
        """Refuse, before anything is written, a disk without room for what remains of the plan.

        What the folder already holds (a resumed run's finished passes) counts as written. The free space is that
        of `selection_dir`'s nearest existing parent. Raises `DiskSpaceError` naming the settings that shrink the
        plan; returns `{"needed": ..., "free": ...}` otherwise.
        """
        path = os.path.abspath(selection_dir)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        free = shutil.disk_usage(path).free
        needed = max(0, self.total_bytes + self.num_files() * BLOCK_BYTES - allocated_bytes(selection_dir))
        if needed > free:
            per_pass = sum(self.checkpoint_bytes().values())
            raise DiskSpaceError(
                f"selection_dir={selection_dir!r}: the selection needs ~{_human(needed)} more on disk "
                f"({self.num_passes} pass(es) x {_human(per_pass)} for {self.featured_rows:,} rows of "
                f"{self.dim}-dim {self.feature_dtype} features, plus scores and records) but {path!r} has "
                f"{_human(free)} free. Shrink it: feature_dtype='int8' (half of float16), a smaller projection_dim "
                f"(now {self.dim}), prefilter_fraction (gradient features for only that share of the pool), or "
                "store_pool_features=False (per-pair similarities instead of features); or free space, or choose "
                "a selection_dir on a larger disk. Nothing was written."
            )
        return {"needed": needed, "free": free}


def allocated_bytes(folder: str) -> int:
    """Bytes the files under `folder` occupy on disk (a sparse, partly written feature file counts what it holds)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_blocks * 512
            except OSError:  # removed meanwhile
                pass
    return total


class SelectionClock:
    """Estimates the rest of a selection's time from the first rows of its first feature pass.

    `start_pass(rows, remaining_passes)` at each pass; `rows_done(n)` after each written chunk. The first time at least
    `min_rows` rows (or the whole pass) are done, it logs rows/s and the time left: the rows left in this pass plus
    `featured_rows x` the passes after it, at that rate (times the number of processes, each of which measures its
    own share).
    """

    def __init__(self, plan: SelectionPlan, num_processes: int = 1, min_rows: int = 1):
        self.plan = plan
        self.num_processes = num_processes
        self.min_rows = min_rows
        self.estimate: dict[str, float] | None = None
        self._start = self._rows = self._pass_rows = self._passes_after = 0

    def start_pass(self, rows: int, passes_after: int) -> None:
        self._start, self._rows, self._pass_rows, self._passes_after = time.perf_counter(), 0, rows, passes_after

    def rows_done(self, rows: int) -> None:
        self._rows += rows
        if self.estimate is not None or self._rows < min(self.min_rows, self._pass_rows // self.num_processes):
            return
        seconds = max(time.perf_counter() - self._start, 1e-9)
        rate = self._rows * self.num_processes / seconds
        left = max(0, self._pass_rows - self._rows * self.num_processes) + self.plan.featured_rows * self._passes_after
        self.estimate = {"rows_per_second": rate, "remaining_rows": left, "remaining_seconds": left / rate}
        summary(
            f"selection estimate: {rate:,.1f} rows/s over the first {self._rows * self.num_processes:,} rows "
            f"({seconds:.1f} s); {left:,} feature rows left in this and {self._passes_after} more pass(es) -> "
            f"~{_duration(left / rate)} more (scoring and selection not included)."
        )
