"""The selection stage alone at 10k-1M rows: score, select, write the report, and reload, from a finished feature
cache of random unit features written through the store's own API (no feature pass, so 1M rows take a minute).

Each pool size runs in its own process, so that each peak RSS is its own. Measures the time to score and select (with
the report), the time to reload the finished selection, and the peak RSS beyond the process's RSS once the pool and the
cache exist (the cache's pages are released as scoring reads them).

```
OMP_NUM_THREADS=1 python -m benchmarks.scale.selection --sizes 10000 100000 1000000 --output_dir outputs/bench_scale
```
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--output_dir", default="outputs/bench_scale")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def write_cache(root: str, rows: int, dim: int, checkpoints: int, pairs: int, chunk_size: int = 1024) -> None:
    """A finished cache of random unit float16 features, chunk by chunk (memory: one chunk)."""
    import numpy as np

    from rose_hf import FeatureStore

    rng = np.random.default_rng(0)
    store = FeatureStore(root)
    for c in range(checkpoints):
        checkpoint = store.checkpoint(10 * (c + 1))
        checkpoint.create(rows, dim, "float16", chunk_size, learning_rates=[1e-3 * (checkpoints - c)] * 4)
        for chunk in range(checkpoint.num_chunks()):
            span = checkpoint.chunk_rows(chunk)
            x = rng.standard_normal((len(span), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            checkpoint.write_chunk(chunk, x.astype(np.float16), np.ones(len(span), np.int8))
        validation = {}
        for objective in ("dpo", "sft"):
            v = rng.standard_normal((pairs, dim), dtype=np.float32)
            validation[objective] = v / np.linalg.norm(v, axis=1, keepdims=True)
        checkpoint.write_validation(validation)
        checkpoint.finalize({})


def child(args) -> dict:
    from rose_hf import RoseConfig
    from rose_hf.cache.store import FeatureStore
    from rose_hf.scoring.selection import select_from_store

    from .pool import scale_pool
    from .run import PeakRSS

    rows = args.child
    root = os.path.join(args.output_dir, f"selection_{rows}")
    shutil.rmtree(root, ignore_errors=True)
    memory = PeakRSS()
    pool = scale_pool(rows)
    write_cache(root, rows, args.dim, args.checkpoints, args.pairs)
    subtasks = ["first_half", "second_half"] * (args.pairs // 2)
    config = RoseConfig(selection_dir=root, report=True, prefilter_fraction=None)  # the written cache holds every row
    baseline = memory.rss()
    memory.reset()
    start = time.perf_counter()
    store = FeatureStore(root)
    result = select_from_store(store, pool, subtasks, config)
    from rose_hf.report import write_report

    write_report(root, pool, result, config, store)
    select_seconds = time.perf_counter() - start
    peak_select = memory.peak()
    memory.reset()
    start = time.perf_counter()
    again = select_from_store(FeatureStore(root), pool, subtasks, config)
    reload_seconds = time.perf_counter() - start
    assert again.loaded and again.selected_indices == result.selected_indices
    peak_reload = memory.peak()
    memory.stop()
    shutil.rmtree(os.path.join(root, "features"))
    return {"rows": rows, "dim": args.dim, "checkpoints": args.checkpoints, "pairs": args.pairs,
            "score_select_report_seconds": select_seconds, "reload_seconds": reload_seconds,
            "rss_baseline_mb": baseline / 2**20, "peak_select_beyond_baseline_mb": (peak_select - baseline) / 2**20,
            "peak_reload_beyond_baseline_mb": (peak_reload - baseline) / 2**20,
            "pool_arrow_mb": pool.data.nbytes / 2**20}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    args = make_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.child is not None:
        print(json.dumps(child(args)))
        return []
    results = []
    for rows in args.sizes:
        command = [sys.executable, "-m", "benchmarks.scale.selection", "--child", str(rows)] + [
            f"--{k}={v}" for k, v in (("output_dir", args.output_dir), ("dim", args.dim),
                                       ("checkpoints", args.checkpoints), ("pairs", args.pairs))]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    lines = ["| rows | score + select + report s | per 1k rows s | reload s | peak RSS beyond baseline MB (select / "
             "reload) | pool Arrow MB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['score_select_report_seconds']:.2f} | "
                     f"{1000 * r['score_select_report_seconds'] / r['rows']:.4f} | {r['reload_seconds']:.2f} | "
                     f"{r['peak_select_beyond_baseline_mb']:.0f} / {r['peak_reload_beyond_baseline_mb']:.0f} | "
                     f"{r['pool_arrow_mb']:.1f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "selection_scale.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(args.output_dir, "selection_scale.md"), "w") as handle:
        handle.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
