"""The one training recipe of the synthetic worlds, shared by the demo, the quality benchmark and the tests.

It is the paper's recipe (ROSE_METHOD.md, step 1) scaled down to a 64-dim, 2-layer tiny Llama on 2 CPU cores: LoRA on
q,k,v,o with the paper's alpha/r = 4 and dropout 0.1, AdamW with linear decay, warmup ratio 0.03, weight decay 0, one
checkpoint per epoch, loss on completion tokens only. The learning rate is 1e-3 rather than 2e-5: a LoRA on a 64-dim
model needs a far larger step to move in ~100 steps (chosen from the warmup training loss only).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TinyRecipe:
    """Warmup AND final training settings (the paper trains both the same way).

    Args:
        epochs: training epochs (the warmup saves one checkpoint per epoch).
        learning_rate, batch_size: AdamW step size and examples per step.
        lora_r, lora_alpha, lora_dropout: the adapter on q, k, v, o.
        max_length: token limit of training and feature sequences.
        warmup_fraction: share of the pool the warmup trains on (paper: 5%).
    """

    epochs: int = 4
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    max_length: int = 64
    warmup_fraction: float = 0.05

    def replace(self, **changes: Any) -> TinyRecipe:
        return dataclasses.replace(self, **changes)

    def lora_config(self):
        from peft import LoraConfig

        from .tiny import lora_target_modules

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=lora_target_modules("llama"),
            task_type="CAUSAL_LM",
        )

    def sft_config(self, output_dir: str, seed: int, save: bool = False):
        """The `SFTConfig`: one checkpoint per epoch when `save` (a warmup), none otherwise."""
        from trl import SFTConfig

        return SFTConfig(
            output_dir=output_dir,
            num_train_epochs=self.epochs,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=1,
            learning_rate=self.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0.03,
            weight_decay=0.0,
            # TRL's default (checkpointing on) under transformers 5's name: TRL still defaults the deprecated
            # `gradient_checkpointing`, which makes every SFTConfig warn unless the new name is set.
            activation_checkpointing=True,
            max_length=self.max_length,
            save_strategy="epoch" if save else "no",
            logging_steps=10,
            report_to=[],
            use_cpu=True,
            bf16=False,
            seed=seed,
            data_seed=seed,
            disable_tqdm=True,
        )


# SmolLM2-135M-Instruct on the real-data families (`rose_fixtures.real_worlds`; the demo and `make bench-real`):
# a 20-row warmup (5% of 400) at batch 4 is 5 steps per epoch; 2 epochs give 2 checkpoints (the paper's 4 would double
# the feature passes, at ~0.2-0.35 s per row each on one CPU thread). lr 1e-3 for LoRA r=8 on a 135M model, 128 tokens
# fit every row (chat rows carry the template's system prompt). Final models: 5 epochs on their 5% (25 steps), the
# setting at which the oracle's 5% was measured to beat random's on exact match, before any method ran.
SMOLLM2_RECIPE = TinyRecipe(epochs=2, learning_rate=1e-3, batch_size=4, max_length=128)
SMOLLM2_FINAL_EPOCHS = 5


def training_rows(pool, indices):
    """Only the TRL columns of the selected rows: the ground-truth labels must not reach the trainer."""
    columns = [c for c in ("prompt", "completion", "messages", "text") if c in pool.column_names]
    return pool.select([int(i) for i in indices]).select_columns(columns)


def silence(trainer) -> None:
    """With tqdm disabled, Trainer prints every log line; the losses stay in `state.log_history`."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def final_train_loss(trainer) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if "train_loss" in entry:
            return float(entry["train_loss"])
    return None


def train_lora(recipe: TinyRecipe, base_path: str, tokenizer, rows, output_dir: str, seed: int) -> tuple[Any, dict]:
    """A fresh LoRA adapter on the base model, trained on `rows` with the recipe (nothing saved).

    Returns:
        The trained PEFT model and `{"train_loss", "steps", "seconds", "rows"}`.
    """
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTTrainer

    start = time.perf_counter()
    set_seed(seed)  # PEFT initialises the adapter before Trainer seeds anything
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_path),
        args=recipe.sft_config(output_dir, seed),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=recipe.lora_config(),
    )
    silence(trainer)
    trainer.train()
    info = {
        "train_loss": final_train_loss(trainer),
        "steps": int(trainer.state.global_step),
        "seconds": time.perf_counter() - start,
        "rows": len(rows),
    }
    return trainer.model, info


def quiet_libraries() -> None:
    """For the demo and benchmark programs: per-step progress bars of dataset maps and trainers drown their own
    progress lines. Not called by the library."""
    import logging

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    logging.getLogger("rose_hf").setLevel(logging.INFO)
    # bitsandbytes (installed for the QLoRA tests) looks up a Hub kernel for its CPU 4-bit matmul when PEFT imports
    # it, and says twice that it cannot offline; these programs never run a 4-bit model.
    for name in ("kernels", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", level=logging.WARNING)
