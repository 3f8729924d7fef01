"""`RoseTrainer`: the whole ROSE method as an `SFTTrainer` — warmup -> selection -> final training on the selection."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.logging import get_logger
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from .callback import RoseDataSelector
from .fingerprint import warmup_arguments
from .pipeline import _hash, describe_model
from .rose_config import RoseConfig
from .selection import SelectionResult
from .store import FeatureStore, _jsonable, atomic_write_json, diff_run_args, read_json

logger = get_logger(__name__)

WARMUP_DIR, SELECTION_DIR, FINAL_DIR = "warmup", "selection", "final"
STAGE_INPUTS = "STAGE_INPUTS.json"  # what a stage was started with; a rerun in the same folder must match it


def warmup_indices(pool_size: int, fraction: float, seed: int) -> list[int]:
    """The seeded random warmup slice of the pool (sorted, at least one row)."""
    size = max(1, int(round(fraction * pool_size)))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool_size, size=size, replace=False))


class RoseTrainer(SFTTrainer):
    r"""
    ROSE end to end: LoRA warmup on a seeded random `warmup_fraction` of the pool with [`RoseDataSelector`] attached,
    selection of the top `selection_fraction` by preference-gradient similarity, then this trainer's own `train()`
    on the selected subset, starting again from the base model (a fresh adapter, or full fine-tuning with
    `rose_config.final_training="full"`).

    Stages write into `args.output_dir`: `warmup/` (warmup checkpoints), `selection/` (feature cache, scores,
    selection, report) and `final/` (the final model). Calling `train()` again resumes from the first unfinished
    stage: a finished warmup is not rerun, cached features and a finished selection are reused, and an interrupted
    stage continues from its last checkpoint.

    Args:
        model: base model or its name/path. A model object is copied for the warmup (PEFT wraps models in place),
            so the final stage starts from the untouched base.
        args: `SFTConfig` for both the warmup and the final training (the paper uses the same settings).
        train_dataset: the instruction pool (TRL SFT formats).
        preference_dataset: the target task's preference pairs (TRL preference formats, optional `subtask`).
        rose_config: selection settings; `rose_config.output_dir` is ignored (the cache lives in `selection/`).
        peft_config: the LoRA configuration (required: features are LoRA gradients).
        **kwargs: passed to `SFTTrainer` (e.g. `processing_class`, `eval_dataset`, `callbacks`).

    Example:
    ```python
    >>> trainer = RoseTrainer(model="my/base", args=SFTConfig(output_dir="out", num_train_epochs=4),
    ...                       train_dataset=pool, preference_dataset=pairs, peft_config=LoraConfig(r=128, ...),
    ...                       processing_class=tokenizer)
    >>> trainer.train()  # warmup -> selection -> final training on the top 5%
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
        **kwargs,
    ):
        if peft_config is None:
            raise ValueError(
                "RoseTrainer needs `peft_config` (a LoraConfig): the warmup trains a LoRA adapter whose gradients "
                "are the selection features. Pass e.g. `peft_config=LoraConfig(r=128, lora_alpha=512, "
                "target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])`."
            )
        rose_config = rose_config or RoseConfig()
        self.root_dir = args.output_dir
        self.rose_config = dataclasses.replace(rose_config, output_dir=os.path.join(self.root_dir, SELECTION_DIR))
        self.pool = train_dataset
        self.preference_dataset = preference_dataset
        self.warmup_peft_config = copy.deepcopy(peft_config)
        self.warmup_model = model if isinstance(model, str) else copy.deepcopy(model)
        self._trainer_kwargs = {k: v for k, v in kwargs.items() if k in ("processing_class", "formatting_func")}
        self.warmup_indices = warmup_indices(len(train_dataset), rose_config.warmup_fraction, rose_config.seed)
        self.selection: SelectionResult | None = None
        # Validate the data before anything trains.
        self.selector = RoseDataSelector(train_dataset, preference_dataset, self.rose_config)
        # Taken before PEFT wraps `model` in place. The warmup's features depend on all of it.
        self._warmup_inputs = {
            "model": model if isinstance(model, str) else describe_model(model),
            "adapter_config_hash": _hash(
                {k: v for k, v in peft_config.to_dict().items() if k not in ("base_model_name_or_path", "revision")}
            ),
            "warmup_indices": self.warmup_indices,
            "training_args": warmup_arguments(args),
            **self.selector.pipeline.data_run_args(),
        }
        final_args = dataclasses.replace(args, output_dir=os.path.join(self.root_dir, FINAL_DIR))
        final_peft = None if rose_config.final_training == "full" else peft_config
        # The final stage's dataset is only known after selection; the warmup slice stands in until then.
        super().__init__(
            model=model,
            args=final_args,
            train_dataset=train_dataset.select(self.warmup_indices),
            peft_config=final_peft,
            **kwargs,
        )

    # --- stages --------------------------------------------------------------------------------------------------
    def _done_marker(self, stage: str) -> str:
        return os.path.join(self.root_dir, stage, "STAGE_DONE.json")

    def run_warmup(self) -> None:
        """Stage 1: LoRA warmup with RoseDataSelector attached (resumes from its last checkpoint)."""
        self._check_stage_inputs(WARMUP_DIR, self._warmup_inputs)
        if os.path.exists(self._done_marker(WARMUP_DIR)):
            logger.info("rose_hf: warmup already finished; reusing its cached features.", main_process_only=True)
            return
        output_dir = os.path.join(self.root_dir, WARMUP_DIR)
        # The paper's warmup saves once per epoch; each save becomes one set of checkpoint features.
        warmup_args = dataclasses.replace(self.args, output_dir=output_dir, save_strategy="epoch")
        # The selector also selects when the warmup ends (stage 2); `run_selection` then loads that result.
        selector = RoseDataSelector(self.pool, self.preference_dataset, self.rose_config)
        trainer = SFTTrainer(
            model=self.warmup_model,
            args=warmup_args,
            train_dataset=self.pool.select(self.warmup_indices),
            peft_config=self.warmup_peft_config,
            callbacks=[selector],
            **self._trainer_kwargs,
        )
        resume = _has_checkpoint(output_dir)
        trainer.train(resume_from_checkpoint=True if resume else None)
        if PartialState().is_main_process:
            atomic_write_json(self._done_marker(WARMUP_DIR), {"steps": trainer.state.global_step})
        PartialState().wait_for_everyone()
        del trainer

    def run_selection(self) -> SelectionResult:
        """Stage 2: scores and selection from the warmup's cached features (loaded if already done)."""
        self.selection = self.selector.select()
        return self.selection

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Warmup, selection, then training on the selected subset (stage 3). Each finished stage is skipped."""
        self.run_warmup()
        selection = self.run_selection()
        selected = self.pool.select(selection.selected_indices)
        logger.info(
            f"rose_hf: final training on {len(selected)} selected rows ({len(selected) / len(self.pool):.1%} of the "
            "pool), from the base model.",
            main_process_only=True,
        )
        self.train_dataset = self._prepare_dataset(
            selected, self.processing_class, self.args, self.args.packing, self._formatting_func, "train"
        )
        self._check_stage_inputs(
            FINAL_DIR, {"selected_indices": selection.selected_indices, "final_training": self.rose_config.final_training}
        )
        if resume_from_checkpoint is None and _has_checkpoint(self.args.output_dir):
            resume_from_checkpoint = True
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if PartialState().is_main_process:
            atomic_write_json(self._done_marker(FINAL_DIR), {"steps": self.state.global_step})
        return output


    def _check_stage_inputs(self, stage: str, inputs: dict[str, Any]) -> None:
        """Refuse to resume or reuse a stage started with other inputs (with `overwrite=True`, redo it instead)."""
        folder, state = os.path.join(self.root_dir, stage), PartialState()
        path, inputs = os.path.join(folder, STAGE_INPUTS), _jsonable(inputs)
        recorded = os.path.exists(path)
        differing = diff_run_args(read_json(path), inputs) if recorded else []
        if differing and not self.rose_config.overwrite:
            raise ValueError(
                f"{folder} was started with other settings ({', '.join(differing)} differ): set `overwrite=True` in "
                "RoseConfig to redo it, or choose another `output_dir`."
            )
        if state.is_main_process:
            if differing:
                logger.warning(f"rose_hf: overwrite=True: redoing {folder} ({', '.join(differing)} changed).")
                shutil.rmtree(folder)
                if stage == WARMUP_DIR and os.path.isdir(self.rose_config.output_dir):
                    FeatureStore(self.rose_config.output_dir).clear()  # its features came from that warmup
            if differing or not recorded:
                os.makedirs(folder, exist_ok=True)
                atomic_write_json(path, inputs)
        state.wait_for_everyone()


def _has_checkpoint(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(name.startswith("checkpoint-") for name in os.listdir(output_dir))
