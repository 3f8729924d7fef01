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

from rose_hf.logs import log
from rose_hf.paths import cache_root


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


def tiny_base_model(config: TinyBaseConfig | None = None, cache_dir: str | None = None) -> str:
    """Path of a pretrained tiny base model (model + tokenizer), built and cached on first use.

    Args:
        config: size and pretraining settings; each distinct config has its own cache folder.
        cache_dir: where to cache it (default `rose_hf.paths.cache_root()`: `$ROSE_HF_CACHE`, else `~/.cache/rose_hf`).
    """
    config = config or TinyBaseConfig()
    path = os.path.join(cache_dir or cache_root(), f"tiny-base-{config.key()}")
    if os.path.exists(os.path.join(path, "DONE")):
        return path

    from .tasks import SyntheticTaskConfig, make_synthetic_task, vocabulary
    from .tiny import build_model, build_tokenizer

    log(f"pretraining a tiny base model into {path} (once; cached afterwards).")
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
    final_loss = _pretrain(model, tokenizer, task.pretrain, config, path)
    model.config._name_or_path = f"rose_hf-tiny-base-{config.key()}"
    _save(model, tokenizer, path, {**asdict(config), "final_loss": final_loss})
    return path


def pretrain_args(config, path: str):
    """The `SFTConfig` of `_pretrain`: `config`'s epochs, batch size, learning rate and seed, a cosine schedule."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=os.path.join(path, "_trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        activation_checkpointing=True,  # TRL's default, named so that the deprecated `gradient_checkpointing` stays unset
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=config.seed,
        max_length=64,
        disable_tqdm=True,
    )


def _pretrain(model, tokenizer, rows, config, path: str, history: list | None = None) -> float | None:
    """Train `model` in place on `rows` (any TRL SFT format) with `config`'s schedule; returns the mean train loss.

    `config` has `epochs`, `batch_size`, `learning_rate` and `seed` (a `TinyBaseConfig` or a `BaseSpec`); `history`,
    if given, receives the trainer's log history.
    """
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=pretrain_args(config, path), train_dataset=rows, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # with tqdm off it would print every log line
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from more, and loses a lot on a busy machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    if history is not None:
        history.extend(trainer.state.log_history)
    return trainer.state.log_history[-1].get("train_loss")


def _save(model, tokenizer, path: str, record: dict) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "pretrain.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    open(os.path.join(path, "DONE"), "w").close()


# The sort world's base model for the world benchmarks: the default `TinyBaseConfig` (3 epochs of 3000 rows) leaves
# the base unable to do its own distractor tasks (exact match 0.00 on reverse, 0.34 on max), see
# benchmarks/results/worlds.md; this one is pretrained longer on more rows. `TinyBaseConfig()` itself stays as it is
# for the demo and the existing benchmark results.
SORT_WORLD_BASE = TinyBaseConfig(epochs=10, n_pretrain=6000)


def world_base_model(family: str, cache_dir: str | None = None, base=None) -> str:
    """Path of the tiny base model of a world family (see `rose_fixtures.worlds`), built and cached on first use.

    Pretrained on the family's distractor tasks only (never the target), with the family's `BaseSpec`, one torch
    thread (restored afterwards) and a fixed seed, so the same family gives the same model. `pretrain.json` beside it
    records the mean pretraining loss and the base model's exact match on every task of the family.

    Args:
        family: one of `rose_fixtures.worlds.world_families()`; `sort` gives `tiny_base_model(SORT_WORLD_BASE)`.
        cache_dir: where to cache it (default `rose_hf.paths.cache_root()`: `$ROSE_HF_CACHE`, else `~/.cache/rose_hf`).
        base: another `BaseSpec` (or, for `sort`, `TinyBaseConfig`) than the family's, e.g. another seed to check
            that a world does not hinge on one lucky base model.
    """
    from .worlds import SORT, WORLD_VERSION, get_family, make_world, world_tokenizer

    if family == SORT:
        return tiny_base_model(base or SORT_WORLD_BASE, cache_dir)
    spec = get_family(family)
    base = base or spec.base
    record = {"family": family, "world_version": WORLD_VERSION, **asdict(base)}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir or cache_root(), f"world-{family}-{key}")
    if os.path.exists(os.path.join(path, "DONE")):
        return path

    from .tiny import build_model

    log(f"pretraining the {family!r} base model into {path} (once; cached afterwards).")
    rows = make_world(family, seed=base.seed + 1000, n_pretrain=base.n_pretrain).pretrain
    tokenizer = world_tokenizer(family)
    model = build_model(
        "llama", tokenizer, hidden_size=base.hidden_size, num_layers=base.num_layers, num_heads=base.num_heads,
        seed=base.seed,
    )  # fmt: skip
    history: list[dict] = []
    final_loss = _pretrain(model, tokenizer, rows, base, path, history)
    model.config._name_or_path = f"rose_hf-world-{family}-{key}"
    record |= {
        "final_loss": final_loss,
        "loss_curve": [[e["step"], round(e["loss"], 4)] for e in history if "loss" in e],
        "skill_exact_match": world_skill(family, model, tokenizer),
    }
    _save(model, tokenizer, path, record)
    return path


def world_skill(family: str, model, tokenizer, n: int = 100) -> dict[str, float]:
    """Greedy exact match of `model` on `n` fresh prompts of every task of a family (the target included)."""
    from .evaluation import exact_match, greedy_generations
    from .worlds import max_new_tokens, skill_prompts

    out = {}
    for task, rows in skill_prompts(family, n).items():
        generations = greedy_generations(model, tokenizer, list(rows["prompt"]), max_new_tokens=max_new_tokens(family))
        out[task] = exact_match(generations, list(rows["reference"]))
    return out
