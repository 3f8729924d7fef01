"""Gradient features at one warmup checkpoint: the pool (Adam-preconditioned) and the validation pairs (DPO or SFT).

`Featurizer` turns batches into L2-normalised projected gradients; `compute_checkpoint_features` runs the distributed
pass over the pool in resumable chunks (TRL's `_precompute_ref_logps` template: fixed order, each process its own
chunks, accelerate's tqdm on the main process, a barrier at the end) and writes the validation features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import tqdm
from datasets import Dataset
from torch import nn

from ..cache.store import (
    STATUS_EMPTY,
    STATUS_NONFINITE,
    STATUS_OK,
    VALIDATION_FEATURES,
    CheckpointFeatures,
    quantize_int8,
    round_features,
)
from ..data import SFTCollator, preference_collator
from ..logs import get_logger
from ..rose_config import RoseConfig
from ..sharding import reshard, uses_fsdp2
from .dpo import dpo_pair_gradients
from .gradients import LoraGradientCollector, feature_mode, sft_per_example_loss
from .preconditioner import AdamState
from .projection import make_projector, resolve_projection

logger = get_logger(__name__)


def projection_cache_bytes(device: torch.device) -> int:
    """How much of the device may hold the projection matrix between batches.

    Regenerating a dense matrix costs ~1.5 ns per entry on every batch, so keeping it is worth a sizeable share of
    an accelerator's memory (a quarter leaves room for the model and the per-example gradients); on the CPU, 2 GiB.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return 2 << 30


class Featurizer:
    """Per-example gradient features of a PEFT LoRA model.

    Args:
        model: the PEFT model (not a DDP/DeepSpeed wrapper; its LoRA layers are hooked).
        config: selection settings (objective, projection, DPO loss...).
        device: where batches and the projection live; defaults to the model's device.
    """

    def __init__(self, model: nn.Module, config: RoseConfig, device: torch.device | None = None):
        self.model = model
        self.config = config
        self.collector = LoraGradientCollector(model)
        # FSDP2 with CPU offload keeps the sharded parameters on the CPU and computes on the accelerator.
        if device is None:
            device = PartialState().device if uses_fsdp2(model) else next(p.device for p in model.parameters())
        self.device = device
        kind, dim = resolve_projection(config.projection, self.collector.num_params, config.projection_dim)
        self.projector = make_projector(
            kind,
            self.collector.num_params,
            dim,
            seed=config.projection_seed,
            device=self.device,
            cache_bytes=projection_cache_bytes(self.device),
        )
        self.dim = dim

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}

    def _normalise(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project, then L2-normalise each row; rows that are non-finite or zero become zero and are flagged."""
        projected = self.projector(grads)
        norms = projected.norm(dim=1)
        ok = torch.isfinite(projected).all(dim=1) & torch.isfinite(norms) & (norms > 0)
        features = torch.where(ok[:, None], projected / norms.clamp(min=1e-30)[:, None], torch.zeros_like(projected))
        return features, ok

    def pool_features(self, batch: dict[str, torch.Tensor], adam: AdamState | None) -> tuple[np.ndarray, np.ndarray]:
        """Features `(B, d)` float32 and status `(B,)` of a batch of SFT examples (their own mean completion loss)."""
        batch = self._to_device(batch)
        with self.collector.capture():
            loss, num_tokens = sft_per_example_loss(self.model, batch)
            self.collector.backward(loss.sum())
            grads = self.collector.flat_gradients()
        if adam is not None:
            grads = self.config.scoring_method.pool_gradients(adam, grads)
        features, ok = self._normalise(grads)
        # Adam turns an example's zero gradient into b1*m/sqrt(b2*v+eps): store zeros, the mark of "no feature".
        empty = num_tokens == 0
        features[empty] = 0.0
        status = np.full(len(loss), STATUS_OK, dtype=np.int8)
        status[~ok.cpu().numpy()] = STATUS_NONFINITE
        status[empty.cpu().numpy()] = STATUS_EMPTY
        return features.cpu().numpy(), status

    def validation_features(self, batch: dict[str, torch.Tensor], objective: str) -> np.ndarray:
        """Features `(P, d)` of preference pairs (`"dpo"`) or of (prompt, chosen) SFT rows (`"sft"`)."""
        batch = self._to_device(batch)
        if objective == "sft":
            with self.collector.capture():
                loss, _ = sft_per_example_loss(self.model, batch)
                self.collector.backward(loss.sum())
                grads = self.collector.flat_gradients()
        else:
            config = self.config
            grads = dpo_pair_gradients(
                self.model, self.collector, batch, config.beta, config.dpo_loss_type, config.label_smoothing
            )
        features, ok = self._normalise(grads)
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten().tolist()
            raise ValueError(
                f"The validation gradient of pair(s) {bad} is zero or not finite: check those pairs (chosen and "
                "rejected must differ in their completions after truncation to `max_length`)."
            )
        return features.cpu().numpy()


def _batches(rows: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Positions of `rows` grouped into batches of similar length (less padding); deterministic."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]["input_ids"]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def compute_pool_features(
    featurizer: Featurizer,
    pool: Dataset,
    checkpoint: CheckpointFeatures,
    adam: AdamState | None,
    batch_size: int,
    pad_token_id: int,
    lockstep: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    validation: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Fill every pending chunk of `checkpoint` with pool features; each process takes every world_size-th chunk.

    Args:
        pool: the tokenized pool (`input_ids`, `labels`), in pool order.
        lockstep: make every process run the same number of forward/backward passes (needed under ZeRO-3, whose
            parameter gathering is collective) by repeating a batch where a process has less work.
        on_chunk: called with each chunk id after it is written (tests use it to simulate kills).
        validation: `{objective: (V, d)}` validation features: write each chunk's similarities to them instead of
            its features (`store_pool_features=False`).
    """
    state = PartialState()
    collate = SFTCollator(pad_token_id)
    pending = checkpoint.pending_chunks()
    mine = pending[state.process_index :: state.num_processes]
    rounds = -(-len(pending) // state.num_processes) if lockstep else len(mine)
    batches_per_chunk = -(-checkpoint.layout["chunk_size"] // batch_size)
    total_rows = sum(len(checkpoint.chunk_rows(c)) for c in pending)
    timings = {"pool_seconds": 0.0, "pool_rows": 0}
    start = time.perf_counter()
    progress = tqdm(
        total=total_rows, desc=f"rose_hf: pool features @ step {checkpoint.step}", disable=not state.is_main_process
    )
    for round_index in range(rounds):
        chunk = mine[round_index] if round_index < len(mine) else None
        rows_range = checkpoint.chunk_rows(chunk if chunk is not None else pending[0])
        stop = rows_range.stop if chunk is not None else rows_range.start + 1
        columns = pool[rows_range.start : stop]
        rows = [{"input_ids": ids, "labels": labels} for ids, labels in zip(columns["input_ids"], columns["labels"])]
        features = np.zeros((len(rows), featurizer.dim), dtype=np.float32)
        status = np.zeros(len(rows), dtype=np.int8)
        groups = _batches(rows, batch_size)
        real_batches = len(groups) if chunk is not None else 0
        if lockstep:  # pad with repeats of the last batch, so every process runs the same passes
            groups = groups + [groups[-1]] * (batches_per_chunk - len(groups))
        for index, group in enumerate(groups):
            batch_features, batch_status = featurizer.pool_features(collate([rows[i] for i in group]), adam)
            features[group], status[group] = batch_features, batch_status
            if index < real_batches:
                progress.update(len(group))  # per batch: one chunk (1,024 rows by default) can take minutes
        if chunk is not None:
            if validation is None:
                _write_chunk(checkpoint, chunk, features, status, featurizer.config.feature_dtype)
            else:
                _write_similarities(checkpoint, chunk, features, status, featurizer.config.feature_dtype, validation)
            timings["pool_rows"] += len(rows)
            if on_chunk is not None:
                on_chunk(chunk)
        # Only the main process shows the bar: it adds the rows the other processes finished this round.
        round_chunks = pending[round_index * state.num_processes : (round_index + 1) * state.num_processes]
        progress.update(sum(len(checkpoint.chunk_rows(c)) for c in round_chunks if c != chunk))
    progress.close()
    timings["pool_seconds"] = time.perf_counter() - start
    state.wait_for_everyone()
    return timings


def _write_chunk(checkpoint: CheckpointFeatures, chunk: int, features: np.ndarray, status: np.ndarray, dtype: str):
    if dtype == "int8":
        quantized, scales = quantize_int8(features)
        checkpoint.write_chunk(chunk, quantized, status, scales)
    else:
        checkpoint.write_chunk(chunk, features.astype(dtype), status)


def _write_similarities(
    checkpoint: CheckpointFeatures, chunk: int, features: np.ndarray, status: np.ndarray, dtype: str,
    validation: dict[str, np.ndarray],
):  # fmt: skip
    # Rounded as the store would hold them, so that these are the cosines scoring reads from stored features.
    rounded = round_features(features, dtype)
    similarities = {objective: rounded @ np.asarray(values, np.float32).T for objective, values in validation.items()}
    checkpoint.write_similarity_chunk(chunk, similarities, status)


def compute_validation_features(
    featurizer: Featurizer, pairs: Dataset, batch_size: int, pad_token_id: int, max_length: int | None, objective: str
) -> np.ndarray:
    """Validation features `(P, d)` of `objective` in pair order. Every process computes the same (small) set."""
    state = PartialState()
    if objective == "sft":
        from ..data import preference_to_sft

        rows = list(preference_to_sft(pairs, max_length))
        collate = SFTCollator(pad_token_id)
    else:
        rows = list(pairs)
        collate = preference_collator(pad_token_id, max_length)
    out = np.zeros((len(rows), featurizer.dim), dtype=np.float32)
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc=f"rose_hf: validation gradients ({objective})", disable=not state.is_main_process):
        index = list(range(start, min(start + batch_size, len(rows))))
        out[index] = featurizer.validation_features(collate([rows[i] for i in index]), objective)
    return out


def _validation_agreement(validation: dict[str, np.ndarray]) -> float:
    """Every process computes the validation features and the main one writes them: check they agree.

    Returns the largest absolute difference from the main process's features (0.0 in one process).
    """
    state = PartialState()
    if state.num_processes == 1:
        return 0.0
    from accelerate.utils import gather_object

    everyone = gather_object([validation])
    diff = max(float(np.abs(other[key] - everyone[0][key]).max()) for other in everyone for key in validation)
    if diff > 1e-3:
        raise RuntimeError(
            f"The validation features differ across processes by up to {diff:.2e}: the processes do not hold the "
            "same model. Check that every process loads the same checkpoint and adapter."
        )
    return diff


def _validation(featurizer: Featurizer, pairs: Dataset, pad_token_id: int) -> dict[str, np.ndarray]:
    """Every objective's validation features, so that any scoring can be computed from the cache (one more backward
    per pair)."""
    config = featurizer.config
    return {
        objective: compute_validation_features(
            featurizer, pairs, config.feature_batch_size, pad_token_id, config.feature_max_length, objective
        )
        for objective in VALIDATION_FEATURES
    }


def _stored_validation(
    featurizer: Featurizer, pairs: Dataset, checkpoint: CheckpointFeatures, pad_token_id: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The validation features written before the pool pass (`store_pool_features=False`), and their timings.

    Computed and written (main process) unless a killed run already did, then read back by every process: every chunk,
    whichever process or run computes it, is compared with the same vectors, the main process's, which stored
    features are scored with too. Collective."""
    state = PartialState()
    start, diff = time.perf_counter(), 0.0
    # Every process sees the same files here: the main process writes only after the gather in `_validation_agreement`.
    if not all(checkpoint.has_validation(objective) for objective in VALIDATION_FEATURES):
        validation = _validation(featurizer, pairs, pad_token_id)
        diff = _validation_agreement(validation)
        if state.is_main_process:
            checkpoint.write_validation(validation)
    state.wait_for_everyone()
    validation = {objective: checkpoint.validation_features(objective) for objective in VALIDATION_FEATURES}
    return validation, {"validation_seconds": time.perf_counter() - start, "validation_rank_max_diff": diff}


def checkpoint_features(
    model: nn.Module,
    config: RoseConfig,
    pool: Dataset,
    pairs: Dataset,
    checkpoint: CheckpointFeatures,
    adam: AdamState | None,
    pad_token_id: int,
    learning_rates: list[float],
    fingerprint: dict[str, Any] | None = None,
    featurizer: Featurizer | None = None,
    lockstep: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Everything for one checkpoint: allocate (main), pool chunks (all), validation (main writes), finalize (main).

    Resumable: finished chunks are skipped, a finished checkpoint is left as it is.
    """
    state = PartialState()
    if checkpoint.is_complete():
        logger.info(f"features @ step {checkpoint.step} already cached in {checkpoint.path}; skipping.")
        return checkpoint.meta
    featurizer = featurizer or Featurizer(model, config)
    # FSDP2 all-gathers parameters in every forward and backward (collectives), as ZeRO-3 does.
    lockstep = lockstep or uses_fsdp2(model)
    streamed = not config.store_pool_features
    with state.main_process_first():
        if state.is_main_process:
            checkpoint.create(len(pool), featurizer.dim, config.feature_dtype, config.chunk_size, learning_rates,
                              num_pairs=len(pairs) if streamed else None)  # fmt: skip
    with feature_mode(model):
        if streamed:  # the validation side first: each chunk of the pool is reduced to its similarities to it
            validation, validation_timings = _stored_validation(featurizer, pairs, checkpoint, pad_token_id)
        timings = compute_pool_features(
            featurizer, pool, checkpoint, adam, config.feature_batch_size, pad_token_id, lockstep, on_chunk,
            validation=validation if streamed else None,
        )  # fmt: skip
        if not streamed:
            start = time.perf_counter()
            validation = _validation(featurizer, pairs, pad_token_id)
            timings["validation_seconds"] = time.perf_counter() - start
    reshard(model)  # leave FSDP2's parameters sharded, as the optimizer expects them
    if streamed:
        timings.update(validation_timings)
    else:
        timings["validation_rank_max_diff"] = _validation_agreement(validation)
    if state.is_main_process:
        if not streamed:
            checkpoint.write_validation(validation)
        checkpoint.finalize({**timings, "projection": featurizer.projector.describe(), "fingerprint": fingerprint})
    state.wait_for_everyone()
    result = checkpoint.meta
    logger.info(
        f"features @ step {checkpoint.step}: {result['num_ok']} ok, {result['num_empty']} without completion "
        f"tokens, {result['num_nonfinite']} non-finite (both scored lowest); {len(pairs)} validation pairs; "
        f"pool {timings['pool_seconds']:.1f}s, validation {timings['validation_seconds']:.1f}s.",
        main_process_only=True,
    )
    return result

