"""`TrainingCheckpoint`: what the features of one warmup checkpoint are computed from — its step, the learning rates
of the optimizer steps that led to it (its weight in the score) and the Adam moments of the LoRA weights — built either
from the live trainer (`RoseDataSelector`) or from a saved `checkpoint-<step>` folder (`select_from_checkpoints`).

The choice between Adam preconditioning and raw gradients is made here, once, from `RoseConfig.preconditioner`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
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
        weighted: bool = True,
    ) -> TrainingCheckpoint:
        """From a Trainer's `checkpoint-<step>` folder: `optimizer.pt` (matched by name) and the learning rate of
        every step since `previous_step` (see `saved_learning_rates`).

        The model must already hold this checkpoint's adapter weights. `weighted=False` for the only checkpoint of a
        selection: its weight is 1 whatever its learning rates, so the rates its log holds (maybe none) are kept as
        they are, for the report.
        """
        step = int(os.path.basename(os.path.normpath(path)).split("-")[1])  # checkpoint-<step>
        if weighted:
            rates = saved_learning_rates(path, previous_step, step)
        else:
            rates = list(_logged_rates(_log_history(path), previous_step, step).values())
        adam = adam_state_from_checkpoint(path, parameters, model) if preconditioner == "adam" else None
        return cls(step, rates, adam)


def featurized_saves(save_steps: Sequence[int], wanted: int | None) -> list[int]:
    """The saves that get features (`RoseConfig.num_feature_checkpoints`): `wanted` of them, evenly spaced over the
    warmup and ending with the last (the i-th of `wanted` is save `ceil(i * S / wanted)` of the `S` saves, 1-based);
    all of them when `wanted` is None or at least `S`.

    Example:
    ```python
    >>> featurized_saves([5, 10, 15, 20], 2), featurized_saves([5, 10, 15, 20], 1), featurized_saves([5, 10], None)
    ([10, 20], [20], [5, 10])
    ```
    """
    steps = list(save_steps)
    if wanted is None or wanted >= len(steps):
        return steps
    return [steps[math.ceil(i * len(steps) / wanted) - 1] for i in range(1, wanted + 1)]


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


def _log_history(path: str) -> list[dict[str, Any]]:
    with open(os.path.join(path, "trainer_state.json")) as handle:
        return json.load(handle)["log_history"]


def _logged_rates(log_history: Sequence[dict[str, Any]], start: int, end: int) -> dict[int, float]:
    """{step: learning rate} of the steps in (start, end] the log has (the Trainer logs the rate the step used)."""
    return {
        int(e["step"]): float(e["learning_rate"])
        for e in log_history
        if "learning_rate" in e and start < e.get("step", 0) <= end
    }


def saved_learning_rates(path: str, start: int, end: int) -> list[float]:
    """The learning rate of every optimizer step in (start, end] of a warmup saved in `path` (a `checkpoint-<end>`
    folder): the checkpoint's weight is their mean.

    From `trainer_state.json` when the warmup logged every step (`logging_steps=1`); otherwise rebuilt exactly from
    the saved schedule: `transformers.get_scheduler` with the `lr_scheduler_type`, warmup and `lr_scheduler_kwargs` of
    `training_args.bin`, the `max_steps` of `trainer_state.json` and the base rate of `scheduler.pt`, stepped from 0.
    The rebuilt schedule must land on the state `scheduler.pt` saved and agree with every rate the log has; when it
    cannot be rebuilt (no `scheduler.pt`, a scheduler that depends on metrics, skipped optimizer steps...) the error
    names the fix: log every step.

    `training_args.bin` is a pickle, as the Trainer writes it: it is read only when the log lacks rates, from the
    checkpoint folder passed here (trust it as you would to resume training from it).
    """
    source = os.path.join(path, "trainer_state.json")
    logged = _logged_rates(_log_history(path), start, end)
    if len(logged) == end - start:
        return [logged[step] for step in range(start + 1, end + 1)]
    try:
        rates = _rebuilt_learning_rates(path, end)
    # Whatever stops the rebuild (a missing or unreadable file, a scheduler it cannot make) gets the same fix.
    except (OSError, RuntimeError, ImportError, pickle.UnpicklingError, ValueError, KeyError, TypeError,
            AttributeError) as error:  # fmt: skip
        raise ValueError(
            f"{source} logs the learning rate of {len(logged)} of steps {start + 1}-{end}, and the checkpoint weights "
            f"need every one; rebuilding them from the saved scheduler failed ({error}). Log every step during the "
            "warmup (`logging_steps=1`), or attach RoseDataSelector from its start."
        ) from error
    for step, rate in logged.items():
        if not math.isclose(rates[step - 1], rate, rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(
                f"{source} logs learning rate {rate} at step {step}, but the schedule rebuilt from {path}/scheduler.pt "
                f"and training_args.bin gives {rates[step - 1]}: the checkpoint weights cannot be trusted. Log every "
                "step during the warmup (`logging_steps=1`), or attach RoseDataSelector from its start."
            )
    return rates[start:end]


def _rebuilt_learning_rates(path: str, end: int) -> list[float]:
    """The rates of steps 1..end of the Trainer's schedule, rebuilt as `Trainer.create_scheduler` builds it."""
    import torch
    from transformers import get_scheduler

    saved = torch.load(os.path.join(path, "scheduler.pt"), map_location="cpu", weights_only=True)
    args = torch.load(os.path.join(path, "training_args.bin"), map_location="cpu", weights_only=False)
    with open(os.path.join(path, "trainer_state.json")) as handle:
        max_steps = int(json.load(handle)["max_steps"])
    if saved.get("last_epoch") != end:
        raise ValueError(
            f"scheduler.pt has stepped {saved.get('last_epoch')} times at global step {end} (steps skipped or "
            "accumulated differently)"
        )
    kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if kind in ("reduce_lr_on_plateau", "greedy"):
        raise ValueError(f"lr_scheduler_type={kind!r} follows the metrics, so its rates cannot be rebuilt")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=float(saved["base_lrs"][0]))
    scheduler = get_scheduler(
        kind,
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(max_steps),
        num_training_steps=max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(end):
        rates.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()  # no gradient, so no change; it keeps torch from warning about the order of the two steps
        scheduler.step()
    if not math.isclose(scheduler.get_last_lr()[0], float(saved["_last_lr"][0]), rel_tol=1e-6, abs_tol=1e-12):
        raise ValueError(
            f"the rebuilt schedule's rate after step {end} is {scheduler.get_last_lr()[0]}, scheduler.pt saved "
            f"{saved['_last_lr'][0]}"
        )
    return rates
