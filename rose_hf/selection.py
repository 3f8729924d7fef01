"""From cached checkpoint features to scores and a selected `datasets.Dataset` (the last, named, resumable stage).

Writes into the run's `output_dir`: `scores.npy` (one float32 per pool row, in pool order; rows without a usable
gradient hold the float32 minimum), `selected_indices.json`, `selected/` (`Dataset.save_to_disk`), `selected.jsonl`
and `selection.json` (what was selected with which settings, the checkpoint weights, the counts, the timings).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from accelerate.logging import get_logger
from datasets import Dataset

from .rose_config import RoseConfig
from .scoring import checkpoint_weights, score_pool, select_top
from .store import STATUS_OK, FeatureStore, atomic_write_json, disk_errors, read_json

logger = get_logger(__name__)


@dataclass
class SelectionResult:
    """Scores and selection of one run.

    Args:
        scores: `(N,)` float32 score per pool row, in pool order.
        selected_indices: pool rows selected, best first.
        valid: `(N,)` bool, rows that had a usable gradient at every checkpoint.
        weights: checkpoint weights (mean learning rate per checkpoint, normalised).
        steps: the warmup steps of the checkpoints used.
        info: counts, per-subtask contributions and timings (also in `selection.json`).
        loaded: whether the result was read back from a finished run instead of computed.
    """

    scores: np.ndarray
    selected_indices: list[int]
    valid: np.ndarray
    weights: np.ndarray
    steps: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    loaded: bool = False  # read back from disk rather than computed now


def _selection_args(config: RoseConfig, steps: list[int]) -> dict[str, Any]:
    return {
        "selection_fraction": config.selection_fraction,
        "selection_size": config.selection_size,
        "subtask_aggregation": config.subtask_aggregation,
        "steps": steps,
    }


def select_from_store(
    store: FeatureStore,
    pool: Dataset,
    subtasks: list[str],
    config: RoseConfig,
    write: bool = True,
    extra_info: dict[str, Any] | None = None,
) -> SelectionResult:
    """Score every pool row against the validation pairs over all cached checkpoints and select the top ones.

    A finished selection with the same settings and checkpoints is loaded instead of recomputed.

    Args:
        store: the run's feature cache (every checkpoint in it must be complete).
        pool: the original pool, all columns (the selected rows are taken from it).
        subtasks: the subtask of each validation pair, in pair order.
        config: the selection settings (recorded in `selection.json`, with `extra_info`).
        write: save the artifacts (main process only).
        extra_info: more to record in `selection.json` (e.g. the tokenization counts).
    """
    checkpoints = store.completed_checkpoints()
    if not checkpoints:
        raise ValueError(
            f"No completed checkpoint features in {store.features_dir}: run the warmup with RoseDataSelector "
            "attached (it writes features at every save), or point `output_dir` at the run that did."
        )
    steps = [c.step for c in checkpoints]
    # Keyed on each checkpoint's model state too: recomputed features must never meet a selection made from others.
    args = {**_selection_args(config, steps), "fingerprints": [c.meta.get("fingerprint") for c in checkpoints]}
    summary_path = os.path.join(store.root, "selection.json")
    if os.path.exists(summary_path) and os.path.exists(os.path.join(store.root, "scores.npy")):
        saved = read_json(summary_path)
        if saved.get("args") == json.loads(json.dumps(args)):
            logger.info(f"rose_hf: selection already done in {store.root}; loading it.", main_process_only=True)
            return load_selection(store.root)

    start = time.perf_counter()
    metas = [c.meta for c in checkpoints]
    for meta in metas:
        if meta["num_rows"] != len(pool):
            raise ValueError(
                f"The cached features cover {meta['num_rows']} pool rows but the pool has {len(pool)}: pass the "
                "same pool the features were computed for."
            )
    weights = checkpoint_weights([meta["learning_rates"] for meta in metas])
    valid = np.ones(len(pool), dtype=bool)
    for c in checkpoints:
        valid &= c.pool_status() == STATUS_OK
    scales = [c.pool_scales() for c in checkpoints]
    scores, score_info = score_pool(
        [c.pool_features() for c in checkpoints],
        [c.validation_features() for c in checkpoints],
        weights,
        subtasks,
        aggregation=config.subtask_aggregation,
        valid=valid,
        row_scales=scales if all(s is not None for s in scales) else None,
        progress=True,
    )
    selected = select_top(scores, fraction=None if config.selection_size else config.selection_fraction,
                          size=config.selection_size, valid=valid)
    if len(selected) < (config.selection_size or 0):
        logger.warning(f"rose_hf: only {len(selected)} pool rows have a usable gradient; selected them all.")
    info = {
        "args": args,
        "num_pool": len(pool),
        "num_selected": int(len(selected)),
        "num_invalid": int((~valid).sum()),
        "weights": [float(w) for w in weights],
        "steps": steps,
        "score_seconds": time.perf_counter() - start,
        "feature_seconds": {str(m["step"]): m.get("pool_seconds", 0.0) + m.get("validation_seconds", 0.0) for m in metas},
        "feature_bytes": {str(c.step): c.nbytes() for c in checkpoints},
        "config": config.to_dict(),
        **score_info,
        **(extra_info or {}),
    }
    result = SelectionResult(scores, [int(i) for i in selected], valid, weights, steps, info)
    if write:
        save_selection(store.root, result, pool)
    logger.info(
        f"rose_hf: scored {len(pool)} pool rows over {len(steps)} checkpoint(s) (weights "
        f"{np.round(weights, 3).tolist()}), {info['num_invalid']} without a usable gradient; selected "
        f"{len(selected)} in {info['score_seconds']:.1f}s -> {store.root}",
        main_process_only=True,
    )
    return result


def save_selection(output_dir: str, result: SelectionResult, pool: Dataset) -> None:
    """Write scores, indices, the selected subset (`save_to_disk` and JSON lines) and `selection.json`."""
    with disk_errors(output_dir):
        tmp = os.path.join(output_dir, "scores.tmp.npy")
        np.save(tmp, result.scores.astype(np.float32))
        os.replace(tmp, os.path.join(output_dir, "scores.npy"))
        np.save(os.path.join(output_dir, "valid.npy"), result.valid)
        subset = pool.select(result.selected_indices)
        subset.save_to_disk(os.path.join(output_dir, "selected"))
        subset.to_json(os.path.join(output_dir, "selected.jsonl"), lines=True)
    atomic_write_json(os.path.join(output_dir, "selected_indices.json"), result.selected_indices)
    # Written last: its presence (with matching args) is what marks the selection as done.
    atomic_write_json(os.path.join(output_dir, "selection.json"), result.info)


def load_selection(output_dir: str) -> SelectionResult:
    """Load a finished selection written by `select_from_store`."""
    info = read_json(os.path.join(output_dir, "selection.json"))
    return SelectionResult(
        scores=np.load(os.path.join(output_dir, "scores.npy")),
        selected_indices=read_json(os.path.join(output_dir, "selected_indices.json")),
        valid=np.load(os.path.join(output_dir, "valid.npy")),
        weights=np.asarray(info["weights"]),
        steps=info["steps"],
        info=info,
        loaded=True,
    )
