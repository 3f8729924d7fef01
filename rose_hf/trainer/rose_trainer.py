"""`RoseTrainer`: the whole ROSE method — warmup -> selection -> final training on the selection — composed of two
ordinary `SFTTrainer`s built from the user's own arguments.

Each stage is a named, resumable folder under `args.output_dir`: `warmup/` (a LoRA warmup on a seeded random slice of
the pool, with `RoseDataSelector` attached), `selection/` (feature cache, scores, selection, report) and `final/` (an
`SFTTrainer` on the selected rows, from the untouched base model). Both trainers get the user's `SFTConfig`, callbacks,
eval set, metrics and `report_to`; only the output folder, the run name and (for the warmup) the save strategy differ.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import Any

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..cache.io import atomic_write_json
from ..cache.keys import final_key, model_key, warmup_key
from ..cache.record import StageRecord
from ..cache.store import RECORDED_DEFAULTS, FeatureStore
from ..logs import get_logger
from ..rose_config import RoseConfig
from ..scoring.selection import SelectionResult
from .callback import RoseDataSelector

logger = get_logger(__name__)

WARMUP_DIR, SELECTION_DIR, FINAL_DIR = "warmup", "selection", "final"
STAGE_INPUTS = "STAGE_INPUTS.json"  # what a stage was started with; a rerun in the same folder must match it
STAGE_DONE = "STAGE_DONE.json"


def warmup_indices(pool_size: int, fraction: float, seed: int) -> list[int]:
    """The seeded random warmup slice of the pool (sorted, at least one row)."""
    size = max(1, int(round(fraction * pool_size)))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool_size, size=size, replace=False))


class RoseTrainer:
    r"""
    ROSE end to end: a LoRA warmup on a seeded random `warmup_fraction` of the pool with [`RoseDataSelector`] attached,
    the selection of the top `selection_fraction` by gradient similarity to the preference pairs, then an `SFTTrainer` on the
    selected rows, starting again from the base model (a fresh adapter, or full fine-tuning with
    `rose_config.final_training="full"`).

    Both stages are plain `SFTTrainer`s built from the arguments given here: the same `SFTConfig` (the paper trains
    both with the same settings), callbacks, `eval_dataset`, `compute_metrics`, `report_to`... Each stage writes into
    its own folder of `args.output_dir` (`warmup/`, `final/`; features and selection in `selection/`) and reports under
    its own run name (`<run_name>-warmup`, `<run_name>-final`). The warmup always saves once per epoch (the paper's
    checkpoints, each of which becomes one set of features). Calling `train()` again resumes from the first unfinished
    stage: a finished warmup is not rerun, cached features and a finished selection are reused, and an interrupted
    stage continues from its last checkpoint.

    Args:
        model: base model or its name/path. A model object is copied for the warmup (PEFT wraps models in place), so
            the final stage starts from the untouched base.
        args: `SFTConfig` for both stages.
        train_dataset: the instruction pool (TRL SFT formats).
        preference_dataset: the target task's preference pairs (TRL preference formats, optional `subtask`).
        rose_config: selection settings; `rose_config.selection_dir` is ignored (the cache lives in `selection/`).
        peft_config: the LoRA configuration (required: the features are LoRA gradients).
        gguf_file: a llama.cpp GGUF file inside the folder `model` (its name, or a path): both stages load a float
            copy of it (`rose_hf.gguf.gguf_float_copy`, converted once and cached), and its tokenizer when
            `processing_class` is not given. `args.model_init_kwargs={"gguf_file": ...}` means the same. Needs the
            `gguf` package.
        gguf_cache_dir: where the float copy is kept (default `rose_hf.gguf.default_cache_dir()`).
        **kwargs: passed to both `SFTTrainer`s (`processing_class`, `eval_dataset`, `callbacks`, `compute_metrics`,
            `formatting_func`, `data_collator`...). `optimizers` holding instances is refused: an optimizer is bound
            to one model's parameters; use `args.optim` or `optimizer_cls_and_kwargs`.

    Example:
    ```python
    >>> trainer = RoseTrainer(model="my/base", args=SFTConfig(output_dir="out", num_train_epochs=4),
    ...                       train_dataset=pool, preference_dataset=pairs, peft_config=LoraConfig(r=128, ...),
    ...                       processing_class=tokenizer)
    >>> trainer.train()  # warmup -> selection -> final training on the top 5%
    >>> trainer.save_model()  # the final model, into out/final
    ```
    """

    def __init__(
        self,
        model: Any,
        args: SFTConfig,
        train_dataset: Dataset,
        preference_dataset: Dataset,
        rose_config: RoseConfig | None = None,
        peft_config: Any = None,
        gguf_file: str | None = None,
        gguf_cache_dir: str | None = None,
        **kwargs,
    ):
        if peft_config is None:
            raise ValueError(
                "RoseTrainer needs `peft_config` (a LoraConfig): the warmup trains a LoRA adapter whose gradients "
                "are the selection features. Pass e.g. `peft_config=LoraConfig(r=128, lora_alpha=512, "
                "target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])`."
            )
        if any(part is not None for part in kwargs.get("optimizers", (None, None))):
            raise ValueError(
                "RoseTrainer trains two models (warmup, then final), and an optimizer instance in `optimizers` is bound "
                "to one model's parameters: choose the optimizer with `args.optim` (e.g. 'adamw_torch') or "
                "`optimizer_cls_and_kwargs=(torch.optim.AdamW, {...})` instead."
            )
        # Before anything is built: a missing file or `gguf` package fails here, not after a tokenised pool.
        model, self._model_init_kwargs, model_id = _resolve_gguf(model, args, gguf_file, gguf_cache_dir)
        if model_id is not None and kwargs.get("processing_class") is None:
            from transformers import AutoTokenizer

            kwargs["processing_class"] = AutoTokenizer.from_pretrained(model)
        rose_config = rose_config or RoseConfig()
        self.args = args
        self.root_dir = args.output_dir
        self.rose_config = dataclasses.replace(rose_config, selection_dir=os.path.join(self.root_dir, SELECTION_DIR))
        self.pool = train_dataset
        self.preference_dataset = preference_dataset
        self.peft_config = peft_config
        self.base_model = model
        self.trainer_kwargs = kwargs
        self.warmup_indices = warmup_indices(len(train_dataset), rose_config.warmup_fraction, rose_config.warmup_seed)
        # Validates the data (and the budget) now, before anything trains; its result is the stage-2 output.
        self.selector = RoseDataSelector(
            train_dataset, preference_dataset, self.rose_config, tokenizer=kwargs.get("processing_class")
        )
        # Taken before PEFT wraps a model object in place. The warmup's features depend on all of it.
        self._warmup_inputs = warmup_key(
            # A float copy's folder name is keyed on the GGUF file's content; its cache folder may move between runs.
            model_id or (model if isinstance(model, str) else model_key(model)),
            peft_config,
            self.warmup_indices,
            args,
            self.selector.pipeline.data_key(),
        )
        self.warmup_trainer: SFTTrainer | None = None
        self._warmup_finished = False
        self.final_trainer: SFTTrainer | None = None
        self.selection: SelectionResult | None = None

    # --- stages --------------------------------------------------------------------------------------------------
    def _stage_args(self, stage: str, **changes) -> SFTConfig:
        run_name = f"{self.args.run_name or os.path.basename(os.path.normpath(self.root_dir))}-{stage}"
        return dataclasses.replace(self.args, output_dir=os.path.join(self.root_dir, stage), run_name=run_name,
                                   model_init_kwargs=self._model_init_kwargs, **changes)

    def _stage_trainer(self, stage: str, model: Any, train_dataset: Dataset, peft_config: Any, args: SFTConfig,
                       extra_callbacks: list | None = None) -> SFTTrainer:
        kwargs = dict(self.trainer_kwargs)
        callbacks = list(kwargs.pop("callbacks", None) or []) + list(extra_callbacks or [])
        return SFTTrainer(model=model, args=args, train_dataset=train_dataset, peft_config=peft_config,
                          callbacks=callbacks or None, **kwargs)

    def run_warmup(self) -> None:
        """Stage 1: LoRA warmup with RoseDataSelector attached (resumes from its last checkpoint)."""
        if self._warmup_finished:  # by an earlier call on this trainer (`run_warmup()` before `train()`)
            return
        self._check_stage_inputs(WARMUP_DIR, self._warmup_inputs)
        if os.path.exists(self._done_marker(WARMUP_DIR)):
            logger.info(
                f"a previous run finished the warmup in {os.path.dirname(self._done_marker(WARMUP_DIR))}; reusing its "
                "cached features.",
                main_process_only=True,
            )
            self._warmup_finished = True
            return
        model = self.base_model if isinstance(self.base_model, str) else copy.deepcopy(self.base_model)
        self.warmup_trainer = self._stage_trainer(
            WARMUP_DIR,
            model,
            self.pool.select(self.warmup_indices),
            copy.deepcopy(self.peft_config),
            # The paper's warmup saves once per epoch; each save becomes one set of checkpoint features.
            self._stage_args(WARMUP_DIR, save_strategy="epoch"),
            extra_callbacks=[self.selector],
        )
        output_dir = self.warmup_trainer.args.output_dir
        self.warmup_trainer.train(resume_from_checkpoint=True if _has_checkpoint(output_dir) else None)
        if PartialState().is_main_process:
            atomic_write_json(self._done_marker(WARMUP_DIR), {"steps": self.warmup_trainer.state.global_step})
        PartialState().wait_for_everyone()
        self._warmup_finished = True

    def run_selection(self) -> SelectionResult:
        """Stage 2: scores and selection from the warmup's cached features (loaded if already done).

        The selection's figures go into the warmup trainer's logs (`report_to`) when the warmup ran in this call.
        """
        self.selection = self.selector.result or self.selector.select()
        if self.warmup_trainer is not None and self.selector.metrics is not None:
            self.warmup_trainer.log(self.selector.metrics)
        return self.selection

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Warmup, selection, then an `SFTTrainer` on the selected rows (stage 3). Each finished stage is skipped.

        Args:
            resume_from_checkpoint: for the final stage, as in `Trainer.train` (default: resume when `final/`
                holds a checkpoint).
            **kwargs: passed to the final stage's `Trainer.train`.

        Returns:
            The final stage's `TrainOutput`.
        """
        self.run_warmup()
        selection = self.run_selection()
        self._check_stage_inputs(FINAL_DIR, final_key(selection.selected_indices, self.rose_config))
        selected = self.pool.select(selection.selected_indices)
        logger.info(
            f"final training on {len(selected)} selected rows ({len(selected) / len(self.pool):.1%} of the "
            "pool), from the base model.",
            main_process_only=True,
        )
        final_peft = None if self.rose_config.final_training == "full" else self.peft_config
        epochs = self.rose_config.final_num_train_epochs
        final_args = self._stage_args(FINAL_DIR, **({} if epochs is None else {"num_train_epochs": epochs}))
        self.final_trainer = self._stage_trainer(FINAL_DIR, self.base_model, selected, final_peft, final_args)
        if resume_from_checkpoint is None and _has_checkpoint(self.final_trainer.args.output_dir):
            resume_from_checkpoint = True
        output = self.final_trainer.train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if PartialState().is_main_process:
            atomic_write_json(self._done_marker(FINAL_DIR), {"steps": self.final_trainer.state.global_step})
        return output

    # --- the final stage, as a trainer's users reach it ---------------------------------------------------------------
    def _final(self) -> SFTTrainer:
        if self.final_trainer is None:
            raise RuntimeError("The final stage has not been built yet: call `train()` first.")
        return self.final_trainer

    @property
    def model(self):
        """The final model (after `train()`)."""
        return self._final().model

    @property
    def state(self):
        """The final stage's `TrainerState`."""
        return self._final().state

    @property
    def train_dataset(self):
        """The final stage's (tokenised) training set: the selected rows."""
        return self._final().train_dataset

    def save_model(self, output_dir: str | None = None) -> None:
        """Save the final model (default: into `final/`)."""
        self._final().save_model(output_dir)

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """Evaluate the final model, as `Trainer.evaluate`."""
        return self._final().evaluate(*args, **kwargs)

    # --- stage bookkeeping ---------------------------------------------------------------------------------------
    def _done_marker(self, stage: str) -> str:
        return os.path.join(self.root_dir, stage, STAGE_DONE)

    def _check_stage_inputs(self, stage: str, inputs: dict[str, Any]) -> None:
        """Refuse to resume or reuse a stage started with other inputs (with `overwrite=True`, redo it instead)."""
        folder, state = os.path.join(self.root_dir, stage), PartialState()
        record = StageRecord(os.path.join(folder, STAGE_INPUTS), f"The {stage} stage in {folder}",
                             defaults=RECORDED_DEFAULTS)  # fmt: skip
        recorded = record.read() is not None
        differing = record.check(inputs, overwrite=self.rose_config.overwrite,
                                 fix="set `overwrite=True` in RoseConfig to redo it, or choose another `output_dir`.")
        if state.is_main_process:
            if differing:
                logger.warning(f"overwrite=True: redoing {folder} ({', '.join(differing)} changed).")
                shutil.rmtree(folder)
                if stage == WARMUP_DIR and os.path.isdir(self.rose_config.selection_dir):
                    FeatureStore(self.rose_config.selection_dir).clear()  # its features came from that warmup
            if differing or not recorded:
                record.write(inputs)
        state.wait_for_everyone()


def _resolve_gguf(model: Any, args: SFTConfig, gguf_file: str | None, cache_dir: str | None):
    """`(model, model_init_kwargs, model_id)` for the stages: with a GGUF file (the argument or
    `args.model_init_kwargs["gguf_file"]`), the float copy's folder, the kwargs without `gguf_file` (the copy is an
    ordinary checkpoint, which `from_pretrained(..., gguf_file=...)` would not find) and the copy's content-keyed name;
    otherwise `model`, `args.model_init_kwargs` and None."""
    init_kwargs = dict(args.model_init_kwargs or {})
    in_kwargs = init_kwargs.pop("gguf_file", None)
    if gguf_file is not None and in_kwargs is not None and gguf_file != in_kwargs:
        raise ValueError(
            f"gguf_file={gguf_file!r} and args.model_init_kwargs['gguf_file']={in_kwargs!r} differ: give the GGUF file "
            "in one place."
        )
    gguf_file = gguf_file if gguf_file is not None else in_kwargs
    if gguf_file is None:
        return model, args.model_init_kwargs, None
    if not isinstance(model, str):
        raise ValueError(
            f"gguf_file={gguf_file!r} needs `model` to be the local folder that holds the file (a str), not a "
            f"{type(model).__name__}: pass e.g. `model='models/smollm2', gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf'`."
        )
    from ..gguf import gguf_float_copy

    # One conversion per machine: the other local processes wait for it and then find the finished copy.
    with PartialState().local_main_process_first():
        path = gguf_float_copy(model, gguf_file, cache_dir=cache_dir)
    return path, init_kwargs or None, f"gguf:{os.path.basename(path)}"


def _has_checkpoint(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(name.startswith("checkpoint-") for name in os.listdir(output_dir))
