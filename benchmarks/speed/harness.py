"""Timing and peak memory: `measure` (one call, repeated), `measure_interleaved` (several calls, round by round) and
`PeakMemory`.

Every measured call is run once to warm up, then `repeats` times or more (until the repeats add up to `min_seconds`);
the median is reported, with the minimum (CUDA work is synchronised before each clock read). Peak memory: on CUDA
`torch.cuda.max_memory_allocated`, reset per phase; on CPU the process's resident-set high-water mark (`VmHWM`), reset
per phase through `/proc/self/clear_refs` where the kernel allows it (else `ru_maxrss`, a per-process high-water mark
that can only grow).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def proc_status_kb(*keys: str) -> dict[str, int]:
    """Fields of `/proc/self/status` in kB (`VmRSS`, `VmHWM`, `RssAnon`...); empty where there is no /proc."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in keys:
                    values[name] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _reset_cpu_peak() -> bool:
    """Reset the kernel's per-process RSS high-water mark (`VmHWM`); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_kb() -> int:
    status = proc_status_kb("VmHWM")
    if "VmHWM" in status:
        return status["VmHWM"]
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kilobytes on Linux


class PeakMemory:
    """Peak memory of the code run inside the context, in MiB.

    On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. On CPU: the process's resident-set
    high-water mark, reset at entry where the kernel allows it (`method` says which was used).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = float("nan")
        self.start_mb = float("nan")
        self.method = ""

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "cuda_max_memory_allocated"
        else:
            reset = _reset_cpu_peak()
            self.start_mb = proc_status_kb("VmRSS").get("VmRSS", 0) / 1024
            self.method = "cpu_rss_high_water_per_phase" if reset else "cpu_ru_maxrss_process_high_water"
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _cpu_peak_kb() / 1024

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_memory_mb": round(self.peak_mb, 2),
            "memory_at_start_mb": round(self.start_mb, 2),
            "peak_increase_mb": round(max(self.peak_mb - self.start_mb, 0.0), 2),
            "memory_method": self.method,
        }


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_repeats: int = 25,
) -> dict[str, Any]:
    """Median wall time of `fn()` over at least `repeats` calls after `warmup` calls, with their peak memory.

    Args:
        fn: the work to time (its result is discarded).
        repeats: timed calls, at least.
        device: synchronised before each clock read when it is a CUDA device.
        warmup: untimed calls first (compilation, caches, lazily generated projection blocks).
        min_seconds: keep repeating (up to `max_repeats` calls) until the timed calls add up to this much, so that
            millisecond-scale work gets enough samples for its median to mean something on a shared machine.
        max_repeats: cap on the timed calls.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    with PeakMemory(device) as peak:
        while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(times),
        "seconds_min": min(times),  # less sensitive to other processes on a shared machine than the median
        "seconds_all": [round(t, 6) for t in times],
        **peak.as_dict(),
    }


def per_batch(timing: dict[str, Any], batch_size: int, seq_len: int) -> dict[str, Any]:
    """A `measure` result of one batch as per-batch, per-example and throughput figures."""
    seconds = timing["seconds"]
    return {
        "batch_size": batch_size,
        "seconds_per_batch": seconds,
        "seconds_per_example": seconds / batch_size,
        "seconds_per_example_min": timing["seconds_min"] / batch_size,
        "examples_per_s": batch_size / seconds,
        "tokens_per_s": batch_size * seq_len / seconds,
        **{k: v for k, v in timing.items() if k != "seconds"},
    }


def batch_row(rows: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """The `per_batch` row of `batch_size` in a list of them."""
    return next(row for row in rows if row["batch_size"] == batch_size)


def measure_interleaved(
    steps: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device,
    warmup: dict[str, int],
    min_seconds: float = 0.0,
    max_rounds: int = 25,
) -> dict[str, dict[str, Any]]:
    """Like `measure`, for several steps run in turn within each round (A B C, A B C, ...).

    Other processes on a shared machine then slow every step of a round alike, so per-round ratios between steps
    (`seconds_all` lists line up by round) stay meaningful when absolute times do not.
    """
    for name, fn in steps.items():
        for _ in range(warmup.get(name, 1)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, list[PeakMemory]] = {name: [] for name in steps}
    while len(times[next(iter(steps))]) < repeats or (
        sum(sum(t) for t in times.values()) < min_seconds and len(times[next(iter(steps))]) < max_rounds
    ):
        for name, fn in steps.items():
            with PeakMemory(device) as peak:
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
            peaks[name].append(peak)
    return {
        name: {
            "seconds": statistics.median(times[name]),
            "seconds_min": min(times[name]),
            "seconds_all": [round(t, 6) for t in times[name]],
            "peak_memory_mb": round(max(p.peak_mb for p in peaks[name]), 2),
            "memory_at_start_mb": round(peaks[name][0].start_mb, 2),
            "peak_increase_mb": round(max(max(p.peak_mb - p.start_mb, 0.0) for p in peaks[name]), 2),
            "memory_method": peaks[name][0].method,
        }
        for name in steps
    }
