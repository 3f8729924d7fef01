"""The prefilter as a cached, resumable, distributed stage, and what the rest of a run reads from it.

Layout under `<selection_dir>/prefilter/` (the chunk store of `rose_hf.cache.store.CheckpointFeatures`):
```
key.json            what the cosines depend on (`rose_hf.cache.keys.prefilter_key`); another key is refused
pool.npy            (N, P) float32 cosine of each pool row to each validation pair, written chunk by chunk
pool_status.npy     (N,) int8: 1 ok, 2 no training target (never kept)
chunks/<id>.done    completion record of one chunk
layout.json, meta.json
kept.npy            the rows the feature run uses (written by the pipeline; its hash is in run.json)
```
Every per-row cosine is stored, so `prefilter_fraction` only changes which rows are kept, not the cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import tqdm
from datasets import Dataset
from torch import nn

from ..cache.fingerprint import json_hash
from ..cache.io import read_json
from ..cache.record import StageRecord
from ..cache.store import STATUS_EMPTY, STATUS_OK, CheckpointFeatures
from ..data import SFTCollator, preference_to_sft
from ..logs import get_logger
from ..sharding import reshard, uses_fsdp2, zero3_partitioned
from .keep import keep_count, round_robin_keep
from .representations import base_model_forward, mean_pooled

if TYPE_CHECKING:
    from ..rose_config import RoseConfig

logger = get_logger(__name__)

PREFILTER_DIR = "prefilter"
KEPT_FILE = "kept.npy"


@dataclass
class PrefilterResult:
    """What the prefilter found.

    Args:
        scores: `(N,)` float32 best cosine of each pool row over the validation pairs (for reports and logs).
        kept: the rows kept, ascending (`round_robin_keep`).
        cosines: `(N, P)` float32 cosine of each row to each pair (memory-mapped from the cache).
        eligible: `(N,)` bool, rows with a training target (the others are never kept).
        info: rows kept, fraction, seconds, whether it was cached.
    """

    scores: np.ndarray
    kept: np.ndarray
    cosines: np.ndarray
    eligible: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def kept_at(self, fraction: float) -> np.ndarray:
        """The rows another `prefilter_fraction` would keep, from the same cosines (no forward pass)."""
        return round_robin_keep(self.cosines, keep_count(fraction, len(self.scores)), self.eligible)


class PrefilterCache(CheckpointFeatures):
    """The prefilter's cache folder: the chunk store of the pool features, holding cosines instead of features."""

    def __init__(self, selection_dir: str):
        super().__init__(os.path.join(selection_dir, PREFILTER_DIR), step=0)

    @property
    def key_record(self) -> StageRecord:
        return StageRecord(self._file("key.json"), f"The prefilter cache in {self.path}")

    def cosines(self) -> np.ndarray:
        return self.pool_features()


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    # As the gradient features batch (features/featurizer.py): by length, so that little is padding; deterministic.
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _device(model: nn.Module) -> torch.device:
    # FSDP2 with CPU offload keeps the sharded parameters on the CPU and computes on the accelerator.
    return PartialState().device if uses_fsdp2(model) else next(p.device for p in model.parameters())


def _represent(model: nn.Module, rows: list[dict[str, Any]], collate: SFTCollator, device: torch.device):
    batch = collate(rows)
    return mean_pooled(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))


def validation_representations(model, pairs: Dataset, batch_size: int, pad_token_id: int, max_length: int | None):
    """`(P, H)` float32 unit representations of each pair's prompt + chosen reply, in pair order (every process)."""
    rows = [{"input_ids": ids, "labels": ids} for ids in preference_to_sft(pairs, max_length)["input_ids"]]
    collate, device = SFTCollator(pad_token_id), _device(model)
    out = None
    for group in _length_batches([len(r["input_ids"]) for r in rows], batch_size):
        pooled = _represent(model, [rows[i] for i in group], collate, device).cpu()
        out = torch.zeros(len(rows), pooled.shape[1]) if out is None else out
        out[group] = pooled
    return out


def compute_prefilter(
    model: nn.Module,
    pool: Dataset,
    pairs: Dataset,
    cache: PrefilterCache,
    config: RoseConfig,
    pad_token_id: int,
    lockstep: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fill every pending chunk of `cache` with the cosines of its pool rows to the pairs; finalize it (main).

    The distributed pass of the pool features (`compute_pool_features`): each process takes every world_size-th
    pending chunk; `lockstep` repeats a batch where a process has less work, so that every process runs the same
    forward passes (needed under ZeRO-3 and FSDP2, whose parameter gathering is collective).
    """
    state = PartialState()
    collate, device = SFTCollator(pad_token_id), _device(model)
    batch_size = config.feature_batch_size
    start = time.perf_counter()
    with base_model_forward(model):
        validation = validation_representations(model, pairs, batch_size, pad_token_id, config.feature_max_length)
        pending = cache.pending_chunks()
        mine = pending[state.process_index :: state.num_processes]
        rounds = -(-len(pending) // state.num_processes) if lockstep else len(mine)
        batches_per_chunk = -(-cache.layout["chunk_size"] // batch_size)
        total = sum(len(cache.chunk_rows(c)) for c in pending)
        progress = tqdm(total=total, desc="rose_hf: prefilter representations", disable=not state.is_main_process)
        for round_index in range(rounds):
            chunk = mine[round_index] if round_index < len(mine) else None
            span = cache.chunk_rows(chunk if chunk is not None else pending[0])
            stop = span.stop if chunk is not None else span.start + 1
            columns = pool[span.start : stop]
            rows = [{"input_ids": ids, "labels": ids} for ids in columns["input_ids"]]
            cosines = np.zeros((len(rows), validation.shape[0]), dtype=np.float32)
            groups = _length_batches([len(r["input_ids"]) for r in rows], batch_size)
            real_batches = len(groups) if chunk is not None else 0
            if lockstep:  # pad with repeats of the last batch, so every process runs the same passes
                groups = groups + [groups[-1]] * (batches_per_chunk - len(groups))
            for index, group in enumerate(groups):
                pooled = _represent(model, [rows[i] for i in group], collate, device)
                cosines[group] = (pooled.cpu() @ validation.T).numpy()
                if index < real_batches:
                    progress.update(len(group))
            if chunk is not None:
                status = np.where(np.asarray(columns["rose_num_tokens"]) > 0, STATUS_OK, STATUS_EMPTY).astype(np.int8)
                cache.write_chunk(chunk, cosines, status)
                if on_chunk is not None:
                    on_chunk(chunk)
            round_chunks = pending[round_index * state.num_processes : (round_index + 1) * state.num_processes]
            progress.update(sum(len(cache.chunk_rows(c)) for c in round_chunks if c != chunk))
        progress.close()
    reshard(model)  # a forward without backward leaves FSDP2's root unsharded
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if state.is_main_process:
        cache.finalize({"seconds": seconds, "num_pairs": int(validation.shape[0])})
    state.wait_for_everyone()
    return {"seconds": seconds}


def run_prefilter(
    model: nn.Module,
    pool: Dataset,
    pairs: Dataset,
    config: RoseConfig,
    key: dict[str, Any],
    pad_token_id: int,
    lockstep: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> PrefilterResult:
    """The prefilter of tokenized `pool` and `pairs` (`rose_hf.data`), cached in `<config.selection_dir>/prefilter/`
    under `key` (`rose_hf.cache.keys.prefilter_key`). Collective: call on every process.

    A cache written for another key is refused (`CacheMismatchError`), or with `config.overwrite` discarded and
    computed again; a partial one is resumed.
    """
    if config.prefilter_fraction is None:
        raise ValueError("prefilter_fraction is None: set it in (0, 1] to run the prefilter.")
    state, cache = PartialState(), PrefilterCache(config.selection_dir)
    lockstep = lockstep or uses_fsdp2(model) or any(zero3_partitioned(p) for p in model.parameters())
    start = time.perf_counter()
    if state.is_main_process:
        fix = "set `overwrite=True` to compute it again, or choose another `selection_dir`."
        if cache.key_record.check(key, overwrite=config.overwrite, fix=fix):
            logger.warning(f"overwrite=True: discarding the prefilter cache in {cache.path} (its inputs changed).")
            cache.discard()
        if cache.key_record.read() is None:
            cache.key_record.write(key)
    state.wait_for_everyone()
    cached = cache.is_complete()
    if not cached:
        with state.main_process_first():
            if state.is_main_process:
                cache.create(len(pool), len(pairs), "float32", config.chunk_size)
        compute_prefilter(model, pool, pairs, cache, config, pad_token_id, lockstep, on_chunk)
    cosines, eligible = cache.cosines(), cache.pool_status() == STATUS_OK
    kept = round_robin_keep(cosines, keep_count(config.prefilter_fraction, len(pool)), eligible)
    scores = np.asarray(cosines.max(axis=1) if cosines.shape[1] else np.zeros(len(pool)), dtype=np.float32)
    seconds = time.perf_counter() - start
    info = {"num_rows": len(pool), "num_kept": int(len(kept)), "fraction": config.prefilter_fraction,
            "num_pairs": len(pairs), "num_without_target": int((~eligible).sum()), "seconds": seconds,
            "forward_seconds": cache.meta.get("seconds", 0.0), "cached": cached}  # fmt: skip
    logger.info(
        f"prefilter: kept {len(kept)} of {len(pool)} pool rows ({len(kept) / max(1, len(pool)):.1%}, "
        f"prefilter_fraction={config.prefilter_fraction}) by RDS+ round robin over {len(pairs)} validation pairs in "
        f"{seconds:.1f}s" + (" (representations cached)" if cached else "") + "; only these get gradient features.",
        main_process_only=True,
    )
    return PrefilterResult(scores, kept, cosines, eligible, info)


def prefilter_pool(
    model: nn.Module,
    tokenizer,
    pool: Dataset,
    pairs: Dataset,
    config: RoseConfig,
    training_args: Any = None,
    lockstep: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> PrefilterResult:
    """Forward-only first stage: keep the top `config.prefilter_fraction` of `pool` by RDS+ representation similarity
    to the preference `pairs` (mean-pooled last hidden states of the BASE model, round robin over pairs).

    The pipeline runs it once per run; benchmarks call it on a base model to measure recall. Cached in
    `<config.selection_dir>/prefilter/` (resumable; every fraction reuses it). Collective: call on every process.

    Args:
        model: a causal LM, or a PEFT model (its adapter is disabled for the forward passes).
        tokenizer: the tokenizer (or processor) of the model.
        pool: the instruction pool (TRL SFT formats), tokenized as for the gradient features.
        pairs: the preference pairs (TRL preference formats); each pair's prompt + chosen reply is its representation.
        config: `prefilter_fraction`, `feature_max_length`, `feature_batch_size`, `chunk_size`, `selection_dir`.
        training_args: the warmup's `SFTConfig`, if any (which tokens carry the loss: rows without any are never kept).
        lockstep: run the same number of forward passes on every process (found by itself under ZeRO-3 and FSDP2).
        on_chunk: called with each chunk id after it is written (tests use it to simulate kills).

    Returns:
        A `PrefilterResult`: `scores` `(N,)`, `kept` (ascending row indices), `cosines` `(N, P)`.

    Example:
    ```python
    >>> result = prefilter_pool(model, tokenizer, pool, pairs, RoseConfig(selection_dir="pf", prefilter_fraction=0.1))
    >>> pool.select(result.kept)
    ```
    """
    from ..cache.fingerprint import base_model_fingerprint, pool_fingerprint, preference_fingerprint
    from ..cache.keys import prefilter_key
    from ..cache.store import tokens_file
    from ..data import pad_token_id, prepare_preference_dataset, prepare_sft_dataset

    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    loss_tokens = {
        "assistant_only_loss": bool(getattr(training_args, "assistant_only_loss", False)),
        "completion_only_loss": getattr(training_args, "completion_only_loss", None),
    }
    pool_tokens = prepare_sft_dataset(pool, tokenizer, config.feature_max_length, **loss_tokens,
                                      cache_file_name=tokens_file(config.selection_dir))  # fmt: skip
    pair_tokens = prepare_preference_dataset(pairs, tokenizer, config.feature_max_length)
    fingerprints = {"pool_fingerprint": pool_fingerprint(pool), "validation_fingerprint": preference_fingerprint(pairs)}
    key = prefilter_key(fingerprints, len(pool), base_model_fingerprint(model), tokenizer, config)
    return run_prefilter(model, pool_tokens, pair_tokens, config, key, pad_token_id(tokenizer), lockstep, on_chunk)


# --- what the feature run and the scoring read -------------------------------------------------------------------
def kept_key(result: PrefilterResult) -> dict[str, Any]:
    """The feature run's record of its kept rows (in `run.json`): features for another kept set are never mixed."""
    return {"fraction": result.info["fraction"], "num_kept": int(len(result.kept)),
            "kept_hash": json_hash([int(i) for i in result.kept])}  # fmt: skip


def record_kept(selection_dir: str, kept: np.ndarray) -> None:
    """Main process: save the feature run's kept rows (`<selection_dir>/prefilter/kept.npy`), atomically."""
    path = os.path.join(selection_dir, PREFILTER_DIR, KEPT_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[: -len(".npy")] + ".tmp.npy"
    np.save(tmp, np.asarray(kept, dtype=np.int64))
    os.replace(tmp, path)


def kept_rows(selection_dir: str) -> tuple[np.ndarray, int] | None:
    """`(kept rows, pool size)` when the feature cache in `selection_dir` covers only the prefilter's rows (its
    `run.json` records them), else None."""
    run_file = os.path.join(selection_dir, "run.json")
    if not os.path.exists(run_file):
        return None
    run = read_json(run_file)
    recorded = run.get("prefilter")
    if recorded is None:
        return None
    path = os.path.join(selection_dir, PREFILTER_DIR, KEPT_FILE)
    kept = np.load(path) if os.path.exists(path) else None
    if kept is None or json_hash([int(i) for i in kept]) != recorded["kept_hash"]:
        raise ValueError(
            f"{selection_dir} holds features of the prefilter's kept rows, but {path} is missing or holds other rows: "
            "run the selection again with the same settings (it rewrites the file), or with `overwrite=True`."
        )
    return kept, int(run["pool_size"])


def expand_pool_scores(scored: Any, kept: np.ndarray, num_rows: int) -> Any:
    """`scored` (a `rose_hf.scoring.selection.PoolScores`, one entry per kept row) as one entry per pool row: the rows the prefilter dropped score
    `INVALID_SCORE`, are not valid and have no relevance or preference, so they are never selected."""
    from ..scoring.similarity import INVALID_SCORE

    def spread(values, fill):
        if values is None:
            return None
        out = np.full(num_rows, fill, dtype=np.asarray(values).dtype)
        out[kept] = values
        return out

    scored.scores, scored.valid = spread(scored.scores, INVALID_SCORE), spread(scored.valid, False)
    scored.relevance, scored.preference = spread(scored.relevance, np.nan), spread(scored.preference, np.nan)
    for name in ("half_scores", "objective_scores"):
        pair = getattr(scored, name)
        if pair is not None:
            setattr(scored, name, tuple(spread(values, INVALID_SCORE) for values in pair))
    scored.info["prefilter"] = {"num_kept": int(len(kept)), "num_pool": int(num_rows)}
    return scored
