"""Scores one on-disk pool with `score_pool` and prints one JSON line: the scoring benchmark's child process.

Run in a fresh process for each pool (`scoring.measure_scoring` does), so that its peak RSS is its own:
```
python -m benchmarks.speed.scoring_child POOL.npy VALIDATION.npy
```
POOL.npy is opened as a read-only `np.memmap`; VALIDATION.npy holds the validation features (alternate rows in two
subtasks). Only `rose_hf.scoring.similarity` and what it needs are imported (numpy; torch, through accelerate's logging), not
the trainers, so the process's memory beyond that baseline is what scoring uses.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from typing import Any

import numpy as np

from rose_hf.scoring.similarity import score_pool


def status_kb(*keys: str) -> dict[str, int]:
    """Fields of `/proc/self/status` in kB (no import of the benchmark's harness: it would grow this process)."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    return out


def score_file(pool_path: str, validation_path: str) -> dict[str, Any]:
    """Score the memmapped pool against the validation features; time it and record the memory it took."""
    pool = np.load(pool_path, mmap_mode="r")
    validation = np.load(validation_path)
    subtasks = ["a" if i % 2 == 0 else "b" for i in range(len(validation))]
    before = status_kb("VmRSS", "RssAnon", "RssFile", "VmHWM")
    peak = {"anon": before.get("RssAnon", 0)}
    done = threading.Event()

    def sample() -> None:  # VmHWM also counts the memmap's file pages; anonymous memory is sampled separately
        while not done.is_set():
            peak["anon"] = max(peak["anon"], status_kb("RssAnon").get("RssAnon", 0))
            done.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    scores, report = score_pool([pool], [validation], [1.0], subtasks)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    after = status_kb("VmRSS", "RssAnon", "RssFile", "VmHWM")
    peak["anon"] = max(peak["anon"], after.get("RssAnon", 0))
    return {
        "seconds": seconds,
        "rows": int(pool.shape[0]),
        "dim": int(pool.shape[1]),
        "scored_rows": int(len(scores)),
        "before_kb": before,
        "after_kb": after,
        "peak_anon_kb": peak["anon"],
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "num_invalid": report["num_invalid"],
        "finite": bool(np.isfinite(scores).all()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.speed.scoring_child POOL.npy VALIDATION.npy`: print the result as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed.scoring_child", description=__doc__.split("\n")[0]
    )
    parser.add_argument("pool", help="float16 .npy pool, opened as a memmap")
    parser.add_argument("validation", help=".npy validation features")
    args = parser.parse_args(argv)
    result = score_file(args.pool, args.validation)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
