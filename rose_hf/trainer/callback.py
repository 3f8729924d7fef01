"""`RoseDataSelector`: ROSE data selection as ONE line added to an existing `Trainer`/`SFTTrainer` warmup script."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..features.checkpoint import TrainingCheckpoint, featurized_saves, logged_learning_rates
from ..features.gradients import find_lora_parameters
from ..features.preconditioner import check_adam_optimizer
from ..logs import follow_trainer_verbosity, get_logger
from ..pipeline import SelectionPipeline
from ..rose_config import RoseConfig
from ..scoring.selection import SelectionResult, selection_log_metrics
from ..sharding import check_fsdp_version

logger = get_logger(__name__)


def check_distributed_type(distributed_type: str, model=None) -> None:
    """Refuse, before training, the settings whose features could be wrong: FSDP1 (FSDP2 works; see sharding.py)."""
    check_fsdp_version(distributed_type, model)


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return is_deepspeed_zero3_enabled()


def _steps_per_epoch(args: TrainingArguments, dataloader) -> int | None:
    if dataloader is None or not hasattr(dataloader, "__len__"):
        return None
    batches, accumulation = len(dataloader), args.gradient_accumulation_steps  # as Trainer.set_initial_training_values
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def planned_saves(args: TrainingArguments, state: TrainerState, dataloader) -> list[int] | None:
    """The steps at which the warmup will save, known at the start of training (None when they are not)."""
    strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
    if state.max_steps <= 0:
        return None
    if strategy == "steps":  # every `save_steps`, and at the end of training (transformers' DefaultFlowCallback)
        every = int(state.save_steps or args.save_steps)
        return sorted(set(range(every, state.max_steps + 1, every)) | {state.max_steps})
    steps_per_epoch = _steps_per_epoch(args, dataloader)
    if strategy == "epoch" and steps_per_epoch is not None:
        return sorted(set(range(steps_per_epoch, state.max_steps, steps_per_epoch)) | {state.max_steps})
    return None


class RoseDataSelector(TrainerCallback):
    r"""
    Turns every checkpoint of a LoRA warmup run into cached gradient features and, when training ends, into ROSE
    scores and a selected subset of the pool.

    At each save it computes, from the LIVE model and optimizer, the Adam-preconditioned per-example gradient
    features of the whole pool and the DPO-loss (and SFT-loss) gradients of the preference pairs; the warmup itself
    is left unchanged (model mode, parameter gradients and RNG state are restored). At the end it weights checkpoints
    by their mean learning rate, scores every pool row (by default its weighted mean rank under the DPO and the SFT gradients;
    `validation_objective="dpo"` is the paper's ranking) and keeps the top `selection_fraction`, with a health verdict.
    One warmup is all it sees: it cannot compare warmup seeds (run it twice and compare `selected_indices`).

    Args:
        train_dataset: the instruction pool to select from (TRL SFT formats: prompt/completion, messages, text).
        preference_dataset: preference pairs of the target task (TRL preference formats, optional `subtask`).
        config: selection settings (`RoseConfig`).
        tokenizer: defaults to the trainer's `processing_class`.

    Example:
    ```python
    >>> selector = RoseDataSelector(train_dataset=pool, preference_dataset=pairs, config=RoseConfig(selection_dir="rose"))
    >>> trainer = SFTTrainer(model=model, args=sft_args, train_dataset=warmup_slice, peft_config=lora,
    ...                      processing_class=tokenizer, callbacks=[selector])
    >>> trainer.train()
    >>> selector.selected_dataset  # the selected pool rows, every column kept
    ```
    """

    def __init__(
        self,
        train_dataset: Dataset,
        preference_dataset: Dataset,
        config: RoseConfig | None = None,
        tokenizer: Any = None,
    ):
        self.config = config or RoseConfig()
        # Validate the data now, before the user builds (and waits for) a trainer.
        self.pipeline = SelectionPipeline(train_dataset, preference_dataset, self.config)
        self.tokenizer = tokenizer
        self.result: SelectionResult | None = None
        self._learning_rates: list[float] = []
        self._last_step = 0
        self._start_step = 0
        self._steps: set[int] = set()  # checkpoints whose features this warmup computed or found cached for its state
        self._feature_steps: set[int] | None = None  # the saves that get features (None: every save)

    # --- results -------------------------------------------------------------------------------------------------
    @property
    def scores(self) -> np.ndarray | None:
        """One score per pool row, in pool order (rows without a usable gradient hold the float32 minimum)."""
        return None if self.result is None else self.result.scores

    @property
    def selected_indices(self) -> list[int] | None:
        """Selected pool rows, best first."""
        return None if self.result is None else self.result.selected_indices

    @property
    def metrics(self) -> dict[str, float] | None:
        """The selection's figures for a trainer's logs: `trainer.log(selector.metrics)` sends them to `report_to`
        (RoseTrainer does it for you). Rows selected, feature time, score quantiles, per-source shares."""
        if self.result is None:
            return None
        return selection_log_metrics(self.result, self.pipeline.pool, self.config.source_column)

    @property
    def selected_dataset(self) -> Dataset | None:
        """The selected pool rows with every original column, best first."""
        return None if self.result is None else self.pipeline.pool.select(self.result.selected_indices)

    # --- trainer events ------------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # Fail before the first training step on anything that would waste the warmup.
        follow_trainer_verbosity(args)
        model = kwargs.get("model")
        check_distributed_type(PartialState().distributed_type, model)
        find_lora_parameters(model)  # raises with the fix when there is no usable LoRA adapter
        self._check_saves(args, state)
        self._plan_feature_steps(args, state, kwargs.get("train_dataloader"))
        self._check_learning_rates(args, state, kwargs.get("lr_scheduler"), kwargs.get("train_dataloader"))
        optimizer = kwargs.get("optimizer")
        if self.config.preconditioner == "adam" and optimizer is not None:
            check_adam_optimizer(optimizer)
        # The plan (rows, passes, bytes) is logged, and checked against the free disk, before the first step.
        self.pipeline.prepare(model, self.tokenizer or kwargs.get("processing_class"), args,
                              **self._plan_arguments(args, state, kwargs.get("train_dataloader")))  # fmt: skip
        self._last_step = self._start_step = state.global_step
        # A resumed run starts at a checkpoint whose features may be unfinished (killed during, or right before, its
        # `on_save`). No save of that step comes again: finish them now from the restored model and optimizer.
        if state.global_step > 0 and state.global_step not in self.pipeline.completed_steps() and (
            self._wants_features(state)
        ):
            self._featurize(model, optimizer, state.global_step, self._resumed_learning_rates(state))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # The learning rate the coming optimizer step uses (the scheduler steps after the optimizer).
        scheduler, optimizer = kwargs.get("lr_scheduler"), kwargs.get("optimizer")
        if scheduler is not None:
            self._learning_rates.append(float(scheduler.get_last_lr()[0]))
        elif optimizer is not None:
            self._learning_rates.append(float(optimizer.param_groups[0]["lr"]))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        step = state.global_step
        learning_rates = self._learning_rates or logged_learning_rates(
            state.log_history, self._last_step, step, "The trainer"
        )
        if self._wants_features(state):
            self._featurize(kwargs["model"], kwargs.get("optimizer"), step, learning_rates)
        self._learning_rates, self._last_step = [], step

    def _wants_features(self, state: TrainerState) -> bool:
        # A method that reads the end of the warmup only makes one pool pass instead of one per checkpoint.
        if self.config.scoring_method.last_checkpoint_only:
            return state.global_step >= state.max_steps
        return self._feature_steps is None or state.global_step in self._feature_steps

    def _featurize(self, model, optimizer, step: int, learning_rates: list[float]) -> None:
        checkpoint = TrainingCheckpoint.from_trainer(
            step, learning_rates, optimizer, self.pipeline.lora_parameters, model, self.config.preconditioner
        )
        self._steps.add(step)
        self.pipeline.featurize(model, checkpoint, lockstep=_zero3_enabled())

    def _resumed_learning_rates(self, state: TrainerState) -> list[float]:
        # Recorded when that checkpoint's features were started; otherwise read back from the restored trainer's log.
        recorded = self.pipeline.recorded_learning_rates(state.global_step)
        if recorded is not None:
            return recorded
        previous = [step for step in self.pipeline.completed_steps() if step < state.global_step]
        return logged_learning_rates(
            state.log_history, max(previous, default=0), state.global_step, "The resumed trainer"
        )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.config.scoring_method.last_checkpoint_only and state.global_step not in self.pipeline.completed_steps():
            # The last step was not saved (e.g. save_steps does not divide it): featurize the trained end now.
            rates = self._learning_rates or logged_learning_rates(
                state.log_history, self._last_step, state.global_step, "The trainer"
            )
            self._featurize(kwargs["model"], kwargs.get("optimizer"), state.global_step, rates)
        # Only this warmup's checkpoints count: those it featurized, and on a resumed run those from before the resume.
        self.pipeline.discard_other_checkpoints(lambda step: step in self._steps or step <= self._start_step)
        if not self.pipeline.completed_steps():
            logger.warning("training ended without any checkpoint, so there is nothing to select from.")
            return
        self.result = self.pipeline.select()

    def select(self) -> SelectionResult:
        """Score and select from the checkpoints cached so far (e.g. after an interrupted warmup)."""
        self.result = self.pipeline.select()
        return self.result

    def _check_saves(self, args: TrainingArguments, state: TrainerState) -> None:
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        if strategy == "no":
            raise ValueError(
                "save_strategy='no' produces no checkpoint, and RoseDataSelector computes features at every save: "
                "set `save_strategy='epoch'` (the paper: one checkpoint per epoch) or 'steps' with `save_steps`."
            )
        if strategy == "steps" and state.max_steps > 0:
            save_steps = state.save_steps if state.save_steps else args.save_steps
            if save_steps > state.max_steps:
                raise ValueError(
                    f"save_steps={args.save_steps} exceeds the {state.max_steps} training steps, so no checkpoint "
                    "would be saved: lower `save_steps`, or use `save_strategy='epoch'`."
                )

    def _plan_feature_steps(self, args: TrainingArguments, state: TrainerState, dataloader) -> None:
        """The saves that get features under `num_feature_checkpoints` (None: every save); known before training."""
        wanted = self.config.num_feature_checkpoints
        if wanted is None or self.config.scoring_method.last_checkpoint_only:
            return
        saves = planned_saves(args, state, dataloader)
        if saves is None:
            raise ValueError(
                f"num_feature_checkpoints={wanted} needs the warmup's saves before training, and they cannot be "
                f"known here (save_strategy={getattr(args.save_strategy, 'value', args.save_strategy)!r}, "
                f"max_steps={state.max_steps}): use save_strategy='epoch' or 'steps', or num_feature_checkpoints=None."
            )
        self._feature_steps = set(featurized_saves(saves, wanted))

    def _plan_arguments(self, args: TrainingArguments, state: TrainerState, dataloader) -> dict[str, Any]:
        """What the selection plan needs from the warmup: the feature passes it will make, and its size."""
        saves = planned_saves(args, state, dataloader)
        if self.config.scoring_method.last_checkpoint_only:
            passes = 1  # only the end of the warmup is featurized
        elif saves is not None:
            passes = len(featurized_saves(saves, self.config.num_feature_checkpoints))
        else:  # e.g. save_strategy="best": one pass per epoch at most
            passes = max(1, int(np.ceil(args.num_train_epochs)))
        rows = len(dataloader.dataset) if hasattr(getattr(dataloader, "dataset", None), "__len__") else None
        return {"num_passes": passes, "warmup_rows": rows,
                "warmup_epochs": float(args.num_train_epochs) if rows is not None else None}  # fmt: skip

    def _check_learning_rates(self, args: TrainingArguments, state: TrainerState, scheduler, dataloader) -> None:
        """Refuse a schedule that reaches a featurized checkpoint by steps whose learning rate is all 0.

        A warmup's first step has rate 0 (`warmup_steps` > 0 starts from 0), so a first checkpoint reached by that one
        step (one step per epoch) weighs 0 and its pool pass is wasted; with one checkpoint the warmup trains nothing.
        Known exactly before training for a `LambdaLR` (every transformers schedule but the metric-driven ones).
        """
        scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or state.max_steps <= 0:
            return
        # Optimizer step s (1-based) runs at base rate x lambda(s - 1): the scheduler steps after the optimizer.
        rates = [scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step) for step in range(state.max_steps)]
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        steps_per_epoch = _steps_per_epoch(args, dataloader)
        saves = planned_saves(args, state, dataloader)
        if self.config.scoring_method.last_checkpoint_only:
            saves = [state.max_steps]  # only the end of the warmup is featurized; its weight is 1
        if saves is None:
            return
        # Each featurized save weighs the rates since the save before it (featurized or not).
        featurized = set(featurized_saves(saves, self.config.num_feature_checkpoints))
        ends = [(start, end) for start, end in zip([0, *saves[:-1]], saves) if end in featurized]
        for start, end in ends:
            if not any(rates[start:end]):
                kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
                per_epoch = f" ({steps_per_epoch} optimizer step(s) per epoch)" if steps_per_epoch else ""
                effect = (
                    "so the warmup would not train"
                    if len(ends) == 1
                    else "so that checkpoint would weigh 0 and its pool pass would be wasted"
                )
                raise ValueError(
                    f"Every optimizer step before the warmup checkpoint at step {end} (steps {start + 1}-{end}) has "
                    f"learning rate 0, {effect}: the warmup is too short for its schedule. num_train_epochs="
                    f"{args.num_train_epochs}, per_device_train_batch_size={args.per_device_train_batch_size}, "
                    f"gradient_accumulation_steps={args.gradient_accumulation_steps}{per_epoch}, "
                    f"save_strategy={strategy!r}; lr_scheduler_type={kind!r} with warmup_steps={args.warmup_steps} "
                    f"({args.get_warmup_steps(state.max_steps)} of {state.max_steps} steps) starts at rate 0. Fix: "
                    "more optimizer steps per checkpoint (more warmup rows: with RoseTrainer a larger pool or "
                    "RoseConfig.warmup_fraction; a smaller per_device_train_batch_size or gradient_accumulation_steps; "
                    "more steps between saves), or a schedule that starts above 0 (warmup_steps=0)."
                )
