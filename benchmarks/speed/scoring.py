"""Scoring memory: `score_pool` over float16 `np.memmap` pools of growing size, each scored in a fresh subprocess
(`benchmarks.speed.scoring_child`) so that each peak RSS is its own. Memory should stay flat while rows grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

if TYPE_CHECKING:
    from .config import SpeedBenchConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_environment() -> dict[str, str]:
    """This process's environment, with the repository root first on PYTHONPATH (the child imports `benchmarks` and
    the same `rose_hf` as this process)."""
    import rose_hf

    env = dict(os.environ)
    rose_parent = os.path.dirname(os.path.dirname(os.path.abspath(rose_hf.__file__)))
    paths = [REPO_ROOT, rose_parent, env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_scoring_child(pool_path: str, validation_path: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Score `pool_path` in a fresh `python -m benchmarks.speed.scoring_child` process; its JSON result."""
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed.scoring_child", pool_path, validation_path],
        capture_output=True,
        text=True,
        env=env if env is not None else child_environment(),
        cwd=REPO_ROOT,
        check=False,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"The scoring subprocess for {pool_path} failed:\n{process.stderr[-2000:]}")
    return json.loads(lines[-1])


def write_pool_file(path: str, rows: int, dim: int, seed: int) -> None:
    """An `.npy` float16 pool of unit rows, written with plain file writes (no mapping in this process)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    block = min(rows, 4096)
    base = rng.standard_normal((block, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    base = base.astype(np.float16)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
        "fortran_order": False,
        "shape": (rows, dim),
    }
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, rows, block):
            count = min(block, rows - start)
            chunk = base[rng.permutation(block)[:count]]
            chunk *= rng.choice(np.array([-1, 1], dtype=np.float16), size=(count, 1))
            handle.write(chunk.tobytes())


def measure_scoring(config: SpeedBenchConfig) -> dict[str, Any]:
    """`score_pool` over float16 `np.memmap` pools of growing size, each scored in a fresh subprocess."""
    import numpy as np

    dim = config.scoring_dim
    runs = []
    env = child_environment()
    with tempfile.TemporaryDirectory(prefix="rose_speed_scoring_") as folder:
        validation = np.random.default_rng(config.seed + 7).standard_normal((8, dim)).astype(np.float32)
        validation /= np.linalg.norm(validation, axis=1, keepdims=True)
        validation_path = os.path.join(folder, "validation.npy")
        np.save(validation_path, validation)
        for rows in config.pool_sizes:
            path = os.path.join(folder, f"pool-{rows}.npy")
            start = time.perf_counter()
            write_pool_file(path, rows, dim, config.seed + rows)
            write_seconds = time.perf_counter() - start
            child = run_scoring_child(path, validation_path, env)
            os.remove(path)
            if child["rows"] != rows or child["scored_rows"] != rows:  # else its memory figures are not this pool's
                raise RuntimeError(f"The scoring subprocess scored {child['scored_rows']} rows of {rows}: {child}")
            file_mb = rows * dim * 2 / 2**20
            run = {
                "rows": child["rows"],
                "dim": child["dim"],
                "dtype": "float16",
                "file_mb": file_mb,
                "create_seconds": write_seconds,
                "seconds": child["seconds"],
                "rows_per_s": rows / child["seconds"],
                "gb_per_s": rows * dim * 2 / 1e9 / child["seconds"],
                # Whole process: interpreter, numpy, torch (imported by accelerate) and the memmap's resident pages.
                "peak_rss_mb": child["after_kb"]["VmHWM"] / 1024,
                "rss_before_scoring_mb": child["before_kb"]["VmRSS"] / 1024,
                # Anonymous (heap) memory only: what score_pool allocates; the file pages are reclaimable cache.
                "peak_anon_mb": child["peak_anon_kb"] / 1024,
                "anon_increase_mb": (child["peak_anon_kb"] - child["before_kb"]["RssAnon"]) / 1024,
                "file_pages_mapped_after_mb": (child["after_kb"]["RssFile"] - child["before_kb"]["RssFile"]) / 1024,
                "scores_finite": child["finite"],
            }
            runs.append(run)
            log(
                f"scoring {rows:7d} x {dim}: {run['seconds']:.2f}s, peak RSS {run['peak_rss_mb']:.0f} MB "
                f"(anonymous {run['peak_anon_mb']:.0f} MB, memmap pages {run['file_pages_mapped_after_mb']:.0f} MB)"
            )
    smallest, largest = runs[0], runs[-1]
    anon_ratio = largest["peak_anon_mb"] / smallest["peak_anon_mb"]
    return {
        "runs": runs,
        "rows_ratio": largest["rows"] / smallest["rows"],
        "peak_rss_ratio_largest_vs_smallest": largest["peak_rss_mb"] / smallest["peak_rss_mb"],
        "peak_anon_ratio_largest_vs_smallest": anon_ratio,
        "anon_memory_flat": anon_ratio <= 1.25,
        "note": "peak_rss_mb is VmHWM of the scoring process and counts the memmap's file pages that stay resident "
        "after being read (reclaimable page cache); peak_anon_mb is the sampled peak of its heap memory.",
    }
