"""`TrainingCheckpoint`: what the features of one warmup checkpoint are computed from — its step, the learning rates
of the optimizer steps that led to it (its weight in the score) and the Adam moments of the LoRA weights — built either
from the live trainer (`RoseDataSelector`) or from a saved `checkpoint-<step>` folder (`select_from_checkpoints`).

The choice between Adam preconditioning and raw gradients is made here, once, from `RoseConfig.preconditioner`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .gradients import LoraParameter
from .preconditioner import AdamState, adam_state_from_checkpoint, adam_state_from_optimizer


@dataclass
class TrainingCheckpoint:
    """One warmup checkpoint, as the features need it.

    Args:
        step: the trainer's global step.
        learning_rates: the learning rates of the optimizer steps since the previous checkpoint.
        adam: the Adam moments of the LoRA weights (None with `preconditioner="sgd"`: raw gradients).
    """

    step: int
    learning_rates: list[float]
    adam: AdamState | None

    @classmethod
    def from_trainer(
        cls,
        step: int,
        learning_rates: Sequence[float],
        optimizer: Any,
        parameters: list[LoraParameter],
        model: nn.Module,
        preconditioner: str,
    ) -> TrainingCheckpoint:
        """From the live model and optimizer (torch, accelerate-wrapped, DeepSpeed), at a save."""
        adam = adam_state_from_optimizer(optimizer, parameters, model) if preconditioner == "adam" else None
        return cls(int(step), [float(lr) for lr in learning_rates], adam)

    @classmethod
    def from_folder(
        cls,
        path: str,
        previous_step: int,
        parameters: list[LoraParameter],
        model: nn.Module,
        preconditioner: str,
    ) -> TrainingCheckpoint:
        """From a Trainer's `checkpoint-<step>` folder: `optimizer.pt` (matched by name) and `trainer_state.json`.

        The model must already hold this checkpoint's adapter weights.
        """
        step = int(os.path.basename(os.path.normpath(path)).split("-")[1])  # checkpoint-<step>
        with open(os.path.join(path, "trainer_state.json")) as handle:
            history = json.load(handle)["log_history"]
        rates = logged_learning_rates(history, previous_step, step, f"{path}/trainer_state.json")
        adam = adam_state_from_checkpoint(path, parameters, model) if preconditioner == "adam" else None
        return cls(step, rates, adam)


def logged_learning_rates(log_history: Sequence[dict[str, Any]], start: int, end: int, source: str) -> list[float]:
    """Learning rates a Trainer logged for the steps in (start, end]: the checkpoint's weight when the per-step record
    is missing (a warmup run without RoseDataSelector, or one resumed mid-way).

    Args:
        log_history: `TrainerState.log_history` (live, or read from a checkpoint's `trainer_state.json`).
        start, end: the previous checkpoint's step and this one's.
        source: where the log came from, for the error message.
    """
    rates = [e["learning_rate"] for e in log_history if "learning_rate" in e and start < e.get("step", 0) <= end]
    if not rates:
        raise ValueError(
            f"{source} logs no learning rate for steps {start + 1}-{end}, and the checkpoint weights need them: log "
            "every step during the warmup (`logging_steps=1`), or attach RoseDataSelector from its start."
        )
    return rates
