"""One selection run, independent of how the checkpoints arrive (live Trainer callback or saved checkpoints).

`SelectionPipeline` validates the inputs, tokenizes pool and pairs once, guards the cache against mixing runs, turns
each checkpoint (model + Adam state + learning rates) into cached features, and finally scores and selects.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from torch import nn

from .cache.fingerprint import (
    base_model_fingerprint,
    describe_argument_changes,
    describe_change,
    pool_fingerprint,
    preference_fingerprint,
    warmup_arguments,
)
from .cache.io import jsonable
from .cache.keys import checkpoint_key, data_key, feature_run_key, prefilter_key
from .cache.store import RUN_INFO_KEY, FeatureStore, check_output_dir, check_writable, tokens_file
from .data import (
    DEFAULT_SUBTASK,
    SUBTASK_COLUMN,
    check_preference_dataset,
    check_sft_dataset,
    pad_token_id,
    prepare_preference_dataset,
    prepare_sft_dataset,
)
from .features.checkpoint import TrainingCheckpoint
from .features.featurizer import Featurizer, checkpoint_features
from .features.gradients import LoraParameter
from .features.preconditioner import AdamState
from .logs import get_logger, summary
from .plan import SelectionClock, SelectionPlan
from .prefilter.stage import kept_key, record_kept, run_prefilter
from .rose_config import RoseConfig
from .scoring.selection import SelectionResult, describe_selection, select_from_store

logger = get_logger(__name__)


@contextmanager
def preserved_rng():
    """Feature computation must not change the training run: restore every RNG afterwards."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class SelectionPipeline:
    """The state of one ROSE selection run.

    Args:
        pool: the instruction pool to select from (TRL SFT format).
        pairs: the preference pairs of the target task (TRL preference format, optional `subtask` column).
        config: selection settings; `config.selection_dir` holds the cache.
    """

    def __init__(self, pool: Dataset, pairs: Dataset, config: RoseConfig):
        check_sft_dataset(pool, "train_dataset")
        check_preference_dataset(pairs, "preference_dataset")
        check_output_dir(config.selection_dir, "selection_dir")  # read-only: nothing is created before the run starts
        # Otherwise `select_top` would refuse the budget only after the whole warmup.
        if config.selection_size is not None and config.selection_size > len(pool):
            raise ValueError(
                f"selection_size={config.selection_size} exceeds the pool's {len(pool)} rows: lower `selection_size`, "
                "or use `selection_fraction`."
            )
        if config.prefilter_fraction is not None:
            from .prefilter.keep import keep_count

            kept = keep_count(config.prefilter_fraction, len(pool))
            if config.selection_size is not None and config.selection_size > kept:
                raise ValueError(
                    f"prefilter_fraction={config.prefilter_fraction} keeps {kept} of the pool's {len(pool)} rows, fewer "
                    f"than selection_size={config.selection_size}: raise `prefilter_fraction` or lower `selection_size`."
                )
        self.pool = pool
        self.pairs = pairs
        self.config = config
        self.store = FeatureStore(config.selection_dir)
        self.featurizer: Featurizer | None = None
        self.pool_tokens: Dataset | None = None
        self.pair_tokens: Dataset | None = None
        self.pad_token_id: int | None = None
        self.stats: dict[str, Any] = {}
        self.base_fingerprint: dict[str, Any] | None = None
        self.training_args: dict[str, Any] | None = None
        self._data_fingerprints: dict[str, str] | None = None
        self.prefilter = None  # the prefilter's `PrefilterResult`, when `prefilter_fraction` is set (after `prepare`)
        self.feature_rows: Dataset | None = None  # the tokenized rows that get gradient features: the kept ones
        self.plan: SelectionPlan | None = None
        self.clock: SelectionClock | None = None

    @property
    def subtasks(self) -> list[str]:
        """The subtask of each preference pair, in pair order (one group, "all", without a `subtask` column)."""
        if SUBTASK_COLUMN in self.pairs.column_names:
            return [str(value) for value in self.pairs[SUBTASK_COLUMN]]
        return [DEFAULT_SUBTASK] * len(self.pairs)

    def prepare(self, model: nn.Module, tokenizer, training_args: Any = None, num_passes: int | None = None,
                **plan: Any) -> None:
        """Validate the model, tokenize, and open (or check) the cache. Collective: call on every process.

        `training_args` (the warmup's `SFTConfig`) decides which tokens carry the pool's loss, as in `SFTTrainer`
        (`assistant_only_loss`, `completion_only_loss`; without it, TRL's defaults), and the arguments that shape
        the warmup (`fingerprint.warmup_arguments`) are recorded in `run.json` for the report. `num_passes` (the
        feature passes expected, default 1) and `plan` (`SelectionPlan`'s `warmup_rows`, `warmup_epochs`) make the
        plan that is logged, and checked against the free disk before anything is written.
        """
        state = PartialState()
        config = self.config
        self.featurizer = Featurizer(model, config)
        self.plan = SelectionPlan.from_config(config, len(self.pool), num_passes or 1, self.featurizer.dim,
                                              len(self.pairs), pool_bytes=self.pool.data.nbytes, **plan)  # fmt: skip
        self.clock = SelectionClock(self.plan, state.num_processes, min_rows=min(config.chunk_size, 256))
        if state.is_main_process:
            self.plan.check_disk(config.selection_dir)  # before anything is written: nothing to clean up
            summary(self.plan.describe())
            check_writable(config.selection_dir)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        if tokenizer is None:
            raise ValueError(
                "No tokenizer: pass `processing_class=tokenizer` to the trainer, or `tokenizer=` to RoseDataSelector."
            )
        self.pad_token_id = pad_token_id(tokenizer)
        start = time.perf_counter()
        self.loss_tokens = {
            "assistant_only_loss": bool(getattr(training_args, "assistant_only_loss", False)),
            "completion_only_loss": getattr(training_args, "completion_only_loss", None),
        }
        self.pool_tokens = prepare_sft_dataset(self.pool, tokenizer, config.feature_max_length, **self.loss_tokens,
                                               cache_file_name=tokens_file(config.selection_dir))  # fmt: skip
        self.pair_tokens = prepare_preference_dataset(self.pairs, tokenizer, config.feature_max_length)
        counts = self.pool_tokens.select_columns(["rose_truncated", "rose_num_tokens"]).with_format("numpy")[:]
        truncated, empty = int(np.sum(counts["rose_truncated"])), int(np.sum(counts["rose_num_tokens"] == 0))
        self.stats = {
            "pool_truncated": truncated,
            "pool_without_completion": empty,
            "pairs_truncated": int(np.sum(self.pair_tokens["rose_truncated"])),
            "tokenize_seconds": time.perf_counter() - start,
        }
        logger.info(
            f"{len(self.pool)} pool rows ({truncated} truncated to "
            f"feature_max_length={config.feature_max_length}, {empty} "
            f"without a training target (blank or missing completion or assistant turn, or none left after "
            f"truncation): scored lowest, never selected), {len(self.pairs)} preference pairs in "
            f"{len(set(self.subtasks))} subtask(s); {self.featurizer.collector.num_params} LoRA parameters -> "
            f"{self.featurizer.projector.describe()['kind']} projection to {self.featurizer.dim} dims.",
            main_process_only=True,
        )
        self.training_args = warmup_arguments(training_args) if training_args is not None else None
        # The base model keys each checkpoint's features with the adapter and Adam state (`featurize`), not run.json.
        self.base_fingerprint = base_model_fingerprint(model)
        self.feature_rows = self.pool_tokens
        if config.prefilter_fraction is not None:
            self._run_prefilter(model, tokenizer)
        kept = None if self.prefilter is None else kept_key(self.prefilter)
        run_args = {
            **feature_run_key(self.data_key(), getattr(model, "peft_config", {}), tokenizer, self.loss_tokens, kept),
            RUN_INFO_KEY: {"base_model": self.base_fingerprint, "training_args": self.training_args},
        }
        self.store = FeatureStore(config.selection_dir, run_args, overwrite=config.overwrite)
        if state.is_main_process:
            self.store.prepare()
        state.wait_for_everyone()

    def _run_prefilter(self, model: nn.Module, tokenizer) -> None:
        """The forward-only first stage, once per run: only the rows it keeps get gradient features."""
        key = prefilter_key(self.data_fingerprints, len(self.pool), self.base_fingerprint, tokenizer, self.config)
        with preserved_rng():
            self.prefilter = run_prefilter(model, self.pool_tokens, self.pair_tokens, self.config, key,
                                           self.pad_token_id)  # fmt: skip
        self.feature_rows = self.pool_tokens.select(self.prefilter.kept)
        if PartialState().is_main_process:
            record_kept(self.config.selection_dir, self.prefilter.kept)

    @property
    def data_fingerprints(self) -> dict[str, str]:
        """Content hashes of the pool and the pairs (the same rows loaded any way give the same ones)."""
        if self._data_fingerprints is None:
            self._data_fingerprints = {
                "pool_fingerprint": pool_fingerprint(self.pool),
                "validation_fingerprint": preference_fingerprint(self.pairs),
            }
        return self._data_fingerprints

    def data_key(self) -> dict[str, Any]:
        """The part of `run.json` known before any model: the data and the feature settings (`keys.data_key`)."""
        return data_key(self.data_fingerprints, len(self.pool), self.config)

    @property
    def lora_parameters(self) -> list[LoraParameter]:
        """The hooked LoRA weights, in feature order (after `prepare`)."""
        if self.featurizer is None:
            raise RuntimeError("Call `prepare(model, tokenizer)` first.")
        return self.featurizer.collector.parameters

    def completed_steps(self) -> list[int]:
        """Steps whose features are cached and complete."""
        return [c.step for c in self.store.completed_checkpoints()]

    def recorded_learning_rates(self, step: int) -> list[float] | None:
        """The learning rates recorded when the features of `step` were started (None if they never were)."""
        return self.store.checkpoint(step).recorded_learning_rates()

    def open_checkpoint(self, model: nn.Module, step: int, adam: AdamState | None) -> dict[str, Any]:
        """Key the features of `step` on the model state, and discard any cached there for another state.

        Features cached at `step` (finished or partial) whose recorded fingerprint differs from this model's adapter
        weights, Adam moments and base model are deleted, with a warning naming what changed, and are recomputed by
        `featurize`. Returns the fingerprint. Collective: call on every process.
        """
        if self.base_fingerprint is None:
            raise RuntimeError("Call `prepare(model, tokenizer)` first.")
        fingerprint = checkpoint_key(model, adam, self.base_fingerprint)
        state, checkpoint = PartialState(), self.store.checkpoint(step)
        if state.is_main_process:
            record = checkpoint.fingerprint_record
            recorded = record.read()
            if checkpoint.exists() and recorded != jsonable(fingerprint):
                previous = self.store.previous_info.get("training_args")
                arguments = describe_argument_changes(previous, self.training_args)
                logger.warning(
                    f"the features cached for step {step} in {checkpoint.path} were computed from another "
                    f"model state ({describe_change(recorded, fingerprint)}"
                    + (f"; the warmup's arguments changed: {arguments}" if arguments else "")
                    + "): discarding them and computing them again for this run.",
                    main_process_only=True,
                )
                checkpoint.discard()
            if recorded != jsonable(fingerprint):
                record.write(fingerprint)
        state.wait_for_everyone()
        return fingerprint

    def discard_other_checkpoints(self, keep) -> list[int]:
        """Delete the cached checkpoints for which `keep(step)` is false (left by another warmup in this folder, so
        that a selection only ever weighs this warmup's checkpoints). Returns their steps. Collective."""
        state = PartialState()
        stale = [c for c in self.store.completed_checkpoints() if not keep(c.step)]
        if stale and state.is_main_process:
            logger.warning(
                f"{self.config.selection_dir} holds features of checkpoint(s) {[c.step for c in stale]} that "
                "this warmup did not produce (another run in the same folder): discarding them.",
                main_process_only=True,
            )
            for checkpoint in stale:
                checkpoint.discard()
        state.wait_for_everyone()
        return [c.step for c in stale]

    def featurize(
        self,
        model: nn.Module,
        checkpoint: TrainingCheckpoint,
        lockstep: bool = False,
        on_chunk=None,
        fingerprint: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Cache pool and validation features of `checkpoint` (resumable; a finished one with the same fingerprint
        is skipped). `fingerprint` is `open_checkpoint`'s, if the caller already opened it."""
        if self.featurizer is None:
            raise RuntimeError("Call `prepare(model, tokenizer)` first.")
        if fingerprint is None:
            fingerprint = self.open_checkpoint(model, checkpoint.step, checkpoint.adam)
        on_chunk = self._timed(checkpoint.step, on_chunk)
        with preserved_rng():
            return checkpoint_features(
                model,
                self.config,
                self.feature_rows,
                self.pair_tokens,
                self.store.checkpoint(checkpoint.step),
                checkpoint.adam,
                self.pad_token_id,
                learning_rates=checkpoint.learning_rates,
                fingerprint=fingerprint,
                featurizer=self.featurizer,
                lockstep=lockstep,
                on_chunk=on_chunk,
            )

    def _timed(self, step: int, on_chunk=None):
        """`on_chunk`, also telling the clock (`plan.SelectionClock`) the rows of each finished chunk: the first
        chunks of the first pass computed here give the time estimate of the rest."""
        clock = self.clock
        if clock is None or clock.estimate is not None:
            return on_chunk
        passes_after = max(0, self.plan.num_passes - len(self.completed_steps()) - 1)
        clock.start_pass(self.plan.featured_rows, passes_after)
        features = self.store.checkpoint(step)

        def timed(chunk: int) -> None:
            clock.rows_done(len(features.chunk_rows(chunk)))
            if on_chunk is not None:
                on_chunk(chunk)

        return timed

    def _check_same_data(self) -> None:
        if not os.path.exists(self.store.run_file):
            raise ValueError(
                f"{self.config.selection_dir} holds no features (no run.json): run the warmup with RoseDataSelector "
                "attached first, or point `selection_dir` at the folder where it ran."
            )
        self.store.record.check(self.data_fingerprints, overwrite=False, fields=self.data_fingerprints,
                                fix="pass the pool and the preference pairs the features were computed for, or "
                                    "compute features for these in a new `selection_dir`."
                                    + self.store.similarities_note())  # fmt: skip

    def select(self) -> SelectionResult:
        """Scores and selection from every cached checkpoint; the main process writes them, then all load them."""
        state = PartialState()
        self._check_same_data()
        if state.is_main_process:
            result = select_from_store(
                self.store, self.pool, self.subtasks, self.config, extra_info={"tokenization": self.stats,
                **({"prefilter": self.prefilter.info} if self.prefilter is not None else {})}
            )
            report = os.path.join(self.config.selection_dir, "report.md")
            if self.config.report and not result.loaded:
                from .report import write_report

                report = write_report(self.config.selection_dir, self.pool, result, self.config, self.store)
            summary(describe_selection(result, self.config.selection_dir, report if os.path.exists(report) else None))
        state.wait_for_everyone()
        if not state.is_main_process:
            from .scoring.selection import load_selection

            result = load_selection(self.config.selection_dir)
        return result

