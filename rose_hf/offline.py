"""Selection from a warmup that already ran: saved HF Trainer checkpoints (adapter + `optimizer.pt`) in, scores out.

For a warmup trained without `RoseDataSelector` attached. Each `checkpoint-<step>` folder gives the adapter weights,
the Adam moments (matched to the LoRA weights by name) and the learning rates of that checkpoint's steps (logged in
`trainer_state.json`, or rebuilt from `scheduler.pt` and `training_args.bin`; see `saved_learning_rates`).
"""

from __future__ import annotations

import os
import re

from accelerate import PartialState
from datasets import Dataset
from torch import nn

from .features.checkpoint import TrainingCheckpoint, featurized_saves
from .logs import get_logger
from .pipeline import SelectionPipeline
from .rose_config import RoseConfig
from .scoring.selection import SelectionResult

logger = get_logger(__name__)


def checkpoint_dirs(warmup_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of a Trainer output folder, in step order."""
    found = [name for name in os.listdir(warmup_dir) if re.fullmatch(r"checkpoint-\d+", name)]
    if not found:
        raise FileNotFoundError(f"No checkpoint-<step> folder in {warmup_dir}: point at the warmup's output_dir.")
    return [os.path.join(warmup_dir, name) for name in sorted(found, key=lambda n: int(n.split("-")[1]))]


def _step(path: str) -> int:
    return int(os.path.basename(os.path.normpath(path)).split("-")[1])


def select_from_checkpoints(
    model: nn.Module,
    checkpoints: list[str],
    pool: Dataset,
    pairs: Dataset,
    tokenizer,
    config: RoseConfig,
) -> SelectionResult:
    """Features at every saved checkpoint (or `config.num_feature_checkpoints` of them), then scores and selection, all
    cached in `config.selection_dir`.

    Args:
        model: the PEFT model of the warmup (base model with the adapter, e.g. `PeftModel.from_pretrained(base,
            checkpoints[0], is_trainable=True)`); each checkpoint's adapter weights are loaded into it in turn.
        checkpoints: `checkpoint-<step>` folders with `adapter_model.safetensors`, `optimizer.pt` and
            `trainer_state.json`, in step order (see `checkpoint_dirs`).
        pool, pairs, tokenizer, config: as for `RoseDataSelector`.
    """
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    PartialState()
    pipeline = SelectionPipeline(pool, pairs, config)
    steps = [_step(path) for path in checkpoints]
    # Each featurized checkpoint weighs the learning rates since the save before it, featurized or not.
    previous = dict(zip(steps, [0, *steps[:-1]]))
    wanted = 1 if config.scoring_method.last_checkpoint_only else config.num_feature_checkpoints
    featurized = featurized_saves(steps, wanted)
    pipeline.prepare(model, tokenizer, num_passes=len(featurized))
    for path in checkpoints:
        if _step(path) not in featurized:
            continue
        set_peft_model_state_dict(model, load_peft_weights(path, device="cpu"))
        # The only checkpoint's weight is 1 whatever its learning rates, so only
        # several checkpoints need every step's rate.
        checkpoint = TrainingCheckpoint.from_folder(
            path, previous[_step(path)], pipeline.lora_parameters, model, config.preconditioner,
            weighted=len(featurized) > 1,
        )
        pipeline.featurize(model, checkpoint)
    done = set(featurized)
    pipeline.discard_other_checkpoints(lambda step: step in done)
    return pipeline.select()
