"""From cached checkpoint features to scores and a selected `datasets.Dataset` (the last, named, resumable stage).

Writes into the run's `output_dir`: `scores.npy` (one float32 per pool row, in pool order; rows without a usable
gradient hold the float32 minimum), `selected_indices.json`, `selected/` (`Dataset.save_to_disk`), `selected.jsonl`
and `selection.json` (what was selected with which settings, the checkpoint weights, the counts, the timings).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset

from ..cache.io import atomic_write_json, disk_errors, read_json
from ..cache.keys import selection_key
from ..cache.record import StageRecord
from ..cache.store import FeatureStore
from ..logs import get_logger, warn
from ..rose_config import RoseConfig
from .budget import select_top
from .health import pair_halves, selection_health
from .methods import ScoringInputs, scoring_method
from .similarity import INVALID_SCORE

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


@dataclass
class PoolScores:
    """What scoring a cache gives, before any row is selected.

    Args:
        scores: `(N,)` float32, `INVALID_SCORE` for rows without a usable gradient.
        valid: `(N,)` bool, rows with a usable gradient at every checkpoint scored.
        weights: checkpoint weights, one per cached checkpoint (robust: all on the last).
        steps: the cached checkpoints' steps.
        relevance, preference: `(N,)` parts of the health check (see `rose_hf.scoring.robust`); preference is None without
            a preference side.
        info: the scoring report (see `score_pool`), plus feature time per checkpoint.
        half_scores: the same scoring from each half of the validation pairs (`rose_hf.scoring.health.pair_halves`), or
            None when a half would be empty (one pair per subtask).
        objective_scores: the ranking by the DPO side alone and by the SFT side alone (paper: the two objectives'
            scores; robust: preference and relevance), or None without a preference side.
    """

    scores: np.ndarray
    valid: np.ndarray
    weights: np.ndarray
    steps: list[int]
    relevance: np.ndarray
    preference: np.ndarray | None
    info: dict[str, Any]
    half_scores: tuple[np.ndarray, np.ndarray] | None = None
    objective_scores: tuple[np.ndarray, np.ndarray] | None = None


def score_store(store: FeatureStore, subtasks: list[str], config: RoseConfig, num_rows: int | None = None):
    """Scores of every pool row from a run's cached features, without writing or selecting anything.

    The public way to score one cache several ways: both objectives' validation features are cached at every
    checkpoint, so `validation_objective="sft"` (LESS), `"dpo"` (ROSE) and `"dpo+sft"` (the mean rank of the two
    weighted by `dpo_weight`, `rose_hf.scoring.similarity.rank_average`) score the same pool features.

    Args:
        store: the run's feature cache (`FeatureStore(output_dir)`).
        subtasks: the subtask of each validation pair, in pair order.
        config: the scoring settings (`scoring`, `validation_objective`, `dpo_weight`, `subtask_aggregation`).
        num_rows: the pool size, checked against the cache when given.

    Returns:
        A `PoolScores`.
    """
    checkpoints = store.completed_checkpoints()
    if not checkpoints:
        raise ValueError(
            f"No completed checkpoint features in {store.features_dir}: run the warmup with RoseDataSelector "
            "attached (it writes features at every save), or point `output_dir` at the run that did."
        )
    metas = [c.meta for c in checkpoints]
    from ..prefilter.stage import expand_pool_scores, kept_rows

    prefiltered = kept_rows(store.root)  # the features cover only the prefilter's rows: scored, then spread back
    stored_rows = num_rows if prefiltered is None or num_rows is None else len(prefiltered[0])
    if prefiltered is not None and num_rows is not None and prefiltered[1] != num_rows:
        raise ValueError(f"The cache in {store.root} is for a pool of {prefiltered[1]} rows but the pool has "
                         f"{num_rows}: pass the same pool the features were computed for.")  # fmt: skip
    for meta in metas:
        if stored_rows is not None and meta["num_rows"] != stored_rows:
            raise ValueError(
                f"The cached features cover {meta['num_rows']} pool rows but the pool has {num_rows}: pass the "
                "same pool the features were computed for."
            )
    check_similarities(checkpoints, len(subtasks))
    method = scoring_method(config.scoring)
    weights, valid = method.checkpoint_weights(checkpoints), method.valid_rows(checkpoints)
    inputs = ScoringInputs(checkpoints, list(subtasks), config.validation_objective, config.subtask_aggregation,
                           weights, valid, config.dpo_weight)  # fmt: skip
    # Relevance and preference at the last checkpoint: the robust score, and the health check of either method.
    inputs.relevance, inputs.preference = inputs.relevance_and_preference()
    scores, info, parts = method.rank(inputs, progress=True)
    # The health check's signals (rose_hf.scoring.health): the ranking by each side alone, and by each half of the pairs.
    objective_scores = method.objective_scores(inputs, parts)
    halves = pair_halves(subtasks)
    half_scores = tuple(method.rank(inputs, half)[0] for half in halves) if all(halves) else None
    info["feature_seconds"] = {
        str(m["step"]): m.get("pool_seconds", 0.0) + m.get("validation_seconds", 0.0) for m in metas
    }
    steps = [c.step for c in checkpoints]
    scored = PoolScores(scores, valid & (scores != INVALID_SCORE), weights, steps, inputs.relevance,
                        inputs.preference, info, half_scores, objective_scores)  # fmt: skip
    return scored if prefiltered is None else expand_pool_scores(scored, *prefiltered)


def check_similarities(checkpoints: list, num_pairs: int) -> None:
    """A cache without pool features (`store_pool_features=False`) scores only the pairs it was computed with."""
    stored = {c.stores_pool_features for c in checkpoints}
    if len(stored) > 1:
        raise ValueError(
            f"The cached checkpoints {[c.step for c in checkpoints]} mix pool features and pool similarities "
            "(`store_pool_features` changed between them): compute the features again with one setting."
        )
    recorded = {c.layout["num_pairs"] for c in checkpoints if not c.stores_pool_features}
    if recorded and recorded != {num_pairs}:
        raise ValueError(
            f"The cache in {os.path.dirname(os.path.dirname(checkpoints[0].path))} was computed with "
            f"`store_pool_features=False` for {recorded.pop()} validation pairs, and holds only each pool row's "
            f"similarities to them, not its features: it cannot score {num_pairs} other pairs. Fix: compute the "
            "features again for the new pairs (a new `selection_dir`, or `overwrite=True`), with "
            "`store_pool_features=True` if you will rescore with new pairs again."
        )


def select_from_store(
    store: FeatureStore,
    pool: Dataset,
    subtasks: list[str],
    config: RoseConfig,
    write: bool = True,
    extra_info: dict[str, Any] | None = None,
) -> SelectionResult:
    """Score every pool row over all cached checkpoints (`score_store`) and select the top ones.

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
    args = selection_key(config, checkpoints)
    record = StageRecord(os.path.join(store.root, "selection.json"), f"The selection in {store.root}", section="args")
    if checkpoints and os.path.exists(os.path.join(store.root, "scores.npy")) and record.differing(args) == []:
        logger.info(f"selection already done in {store.root}; loading it.", main_process_only=True)
        return load_selection(store.root)

    start = time.perf_counter()
    scored = score_store(store, subtasks, config, num_rows=len(pool))
    scores, valid, weights, steps, score_info = scored.scores, scored.valid, scored.weights, scored.steps, scored.info
    selected = select_top(scores, **config.budget(), valid=valid)
    health = selection_health(scored.relevance, scored.preference, selected, len(selected), scored.half_scores,
                              scored.objective_scores)  # fmt: skip
    if health["verdict"] != "ok":
        warn(f"selection health: {health['message']}.")
    info = {
        "health": health,
        "args": args,
        "num_pool": len(pool),
        "num_selected": int(len(selected)),
        "num_invalid": int((~valid).sum()),
        "weights": [float(w) for w in weights],
        "steps": steps,
        "score_seconds": time.perf_counter() - start,
        "feature_bytes": {str(c.step): c.nbytes() for c in store.completed_checkpoints()},
        "config": config.to_dict(),
        **score_info,
        **(extra_info or {}),
    }
    result = SelectionResult(scores, [int(i) for i in selected], valid, weights, steps, info)
    if write:
        save_selection(store.root, result, pool)
    logger.info(
        f"scored {len(pool)} pool rows over {len(steps)} checkpoint(s) (weights "
        f"{np.round(weights, 3).tolist()}), {info['num_invalid']} without a usable gradient; selected "
        f"{len(selected)} in {info['score_seconds']:.1f}s -> {store.root}",
        main_process_only=True,
    )
    return result


def describe_selection(result: SelectionResult, output_dir: str, report: str | None = None) -> str:
    """The one-line summary of a selection: rows selected, health verdict (when computed), where the report is."""
    num_pool = len(result.scores)
    parts = [f"selected {len(result.selected_indices)} of {num_pool} pool rows "
             f"({len(result.selected_indices) / max(1, num_pool):.1%}) from {len(result.steps)} checkpoint(s)"]
    health = result.info.get("health")
    if health:
        parts.append(f"health: {health['verdict']} ({health['message']})")
    parts.append(f"report: {report}" if report else f"artifacts in {output_dir}")
    return "; ".join(parts)


def selection_log_metrics(result: SelectionResult, pool: Dataset | None = None, source_column: str | None = None):
    """The figures of a selection as a trainer logs them (`Trainer.log`: TensorBoard, W&B... through `report_to`):
    rows selected, feature and scoring time, score quantiles, and per-source shares when a source column exists."""
    valid = result.scores[result.valid] if result.valid.any() else np.zeros(1, np.float32)
    metrics = {
        "rose/num_selected": float(len(result.selected_indices)),
        "rose/num_invalid": float(result.info.get("num_invalid", 0)),
        "rose/feature_seconds": float(sum(result.info.get("feature_seconds", {}).values())),
        "rose/score_seconds": float(result.info.get("score_seconds", 0.0)),
        **{f"rose/score_q{q}": float(np.quantile(valid, q / 100)) for q in (5, 50, 95)},
    }
    if result.selected_indices:
        metrics["rose/selected_score_min"] = float(result.scores[result.selected_indices[-1]])
    if pool is not None and source_column and source_column in pool.column_names:
        sources = pool.select(result.selected_indices)[source_column]
        for name in sorted(set(sources)):
            metrics[f"rose/share/{name}"] = sources.count(name) / len(sources)
    health = result.info.get("health")
    if health:
        metrics.update({f"rose/health/{k}": float(v) for k, v in health.get("signals", {}).items()})
    return metrics


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
