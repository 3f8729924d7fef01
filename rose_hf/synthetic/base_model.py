"""A tiny base model pretrained offline on the synthetic mixture, cached on disk: the demo's and benchmarks' LLM.

Real LLMs cannot be downloaded here, and a randomly initialised model has no notion of the format, so its gradients
say little. This pretrains a small Llama on the synthetic benchmark's `pretrain` texts (every family but the target,
see `SyntheticTaskConfig.pretrain_target`) for a minute on a CPU and saves model and tokenizer with
`save_pretrained`, so every later run loads it like any Hugging Face checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)

DEFAULT_CACHE = os.environ.get("ROSE_HF_CACHE", os.path.join("outputs", "cache"))


@dataclass
class TinyBaseConfig:
    """Size and pretraining of the tiny base model.

    Args:
        hidden_size, num_layers, num_heads: the Llama architecture.
        epochs, learning_rate, batch_size: pretraining schedule on the synthetic `pretrain` texts.
        n_pretrain: pretraining rows (see `SyntheticTaskConfig.n_pretrain`).
        target_family: the task left out of pretraining.
        seed: model initialisation and data order.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    epochs: int = 3
    learning_rate: float = 3e-3
    batch_size: int = 32
    n_pretrain: int = 3000
    target_family: str = "sort"
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def tiny_base_model(config: TinyBaseConfig | None = None, cache_dir: str = DEFAULT_CACHE) -> str:
    """Path of a pretrained tiny base model (model + tokenizer), built and cached on first use.

    Args:
        config: size and pretraining settings; each distinct config has its own cache folder.
        cache_dir: where to cache it (default `outputs/cache`, or `$ROSE_HF_CACHE`).
    """
    config = config or TinyBaseConfig()
    path = os.path.join(cache_dir, f"tiny-base-{config.key()}")
    if os.path.exists(os.path.join(path, "DONE")):
        return path

    from trl import SFTConfig, SFTTrainer

    from .tasks import SyntheticTaskConfig, make_synthetic_task, vocabulary
    from .tiny import build_model, build_tokenizer

    logger.info(f"rose_hf: pretraining a tiny base model into {path} (once; cached afterwards).")
    task = make_synthetic_task(
        SyntheticTaskConfig(target_family=config.target_family, n_pretrain=config.n_pretrain, seed=config.seed + 1000)
    )
    tokenizer = build_tokenizer(vocabulary())
    model = build_model(
        "llama",
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        seed=config.seed,
    )
    args = SFTConfig(
        output_dir=os.path.join(path, "_trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=config.seed,
        max_length=64,
        disable_tqdm=True,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer = SFTTrainer(model=model, args=args, train_dataset=task.pretrain, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # with tqdm off it would print every log line
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from more, and loses a lot on a busy machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    model.config._name_or_path = f"rose_hf-tiny-base-{config.key()}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "pretrain.json"), "w") as handle:
        json.dump({**asdict(config), "final_loss": trainer.state.log_history[-1].get("train_loss")}, handle, indent=2)
    open(os.path.join(path, "DONE"), "w").close()
    return path
