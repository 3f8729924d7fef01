"""Can a user trust one selection on the real model? Stability, cost and a label-free health check (issue 18).

Two stages, so that the expensive one runs once and every question is asked of its cached features afterwards:

1. `collect` (one process per family, `make bench-trust`): for each held-out seed, three `RoseTrainer` warmups on the
   SAME pool, each with the paper's features at every checkpoint (kept on disk, 6.5 MB per checkpoint):
   `A` the design's warmup (seed s, 2 epochs), `B` a second warmup seed (s + 100, 2 epochs), and `bad_1epoch` (seed s,
   1 epoch: a deliberately short warmup), and the robust scoring of warmup A's last checkpoint. Final models (a fresh LoRA, 5 epochs) on warmup A's 5% of random, LESS,
   ROSE (paper, `dpo`), `dpo+sft` and the oracle. `--dev_finals` also trains the `dpo+sft` final models of the
   development seeds 0-2 of `make bench-real` from their saved scores (`scores.npz`: the same warmup's `dpo` and `sft`
   scores, ranked together with `rose_hf.scoring.similarity.rank_average`).
2. `analyse` (seconds): every selection is scored again from the caches through `rose_hf.scoring.selection.score_store`:
   per objective, per checkpoint (cost frontier), with only 2 validation pairs (a deliberately bad validation set),
   at a budget of 20% (larger than the 8% target share), and as a rank ensemble of warmups A and B. For each: precision,
   harmful share, the overlap with warmup B's selection (stability), and the health check's signals.

DESIGN — fixed before any of these runs (issue 18):
- Development: seeds 0-2 of `make bench-real` (`outputs/bench_real`), on which `dpo+sft` was found (docs/benchmarks.md). Held
  out: seeds 3, 4 and 5 of every family, run here, never used to choose anything. Targets are read on both, separately.
- Everything else is `QualityBenchConfig.real()` (pool 400, 32 helpful / 32 harmful, 5% = 20 rows, SmolLM2 recipe).
- "Bad" runs for the health check: precision below 0.5 x the oracle's at the same budget; "good": at or above 0.8 x.

Run: `python -m benchmarks.quality.trust collect --families dates` (one per family), then
`python -m benchmarks.quality.trust analyse`. Writes `trust.json` and `trust.md` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from benchmarks.common import log

from .trust_settings import (
    DEFAULT_OUTPUT,
    DEV_OUTPUT,
    DEV_SEEDS,
    FINAL_METHODS,
    HELD_OUT_SEEDS,
    OBJECTIVE_OF,
    WARMUPS,
    bench_config,
)


def warmup_with_features(config, task, base_path: str, tokenizer, run_dir: str, seed: int, epochs: int) -> dict:
    """One `RoseTrainer` warmup and its paper features at every checkpoint (public API; resumable: a finished run
    is reused by RoseTrainer itself). Returns the timings; the feature cache stays in `<run_dir>/selection`."""
    from rose_hf import FeatureStore

    from .run import feature_seconds, warmup_trainer

    start = time.perf_counter()
    trainer = warmup_trainer(config, task, base_path, tokenizer, run_dir, seed, epochs)
    trainer.run_warmup()
    warmup_seconds = time.perf_counter() - start
    trainer.run_selection()
    checkpoints = FeatureStore(trainer.rose_config.selection_dir).completed_checkpoints()
    return {
        "seed": seed,
        "epochs": epochs,
        "warmup_rows": len(trainer.warmup_indices),
        "warmup_seconds": warmup_seconds,
        "checkpoint_steps": [int(c.step) for c in checkpoints],
        "feature_seconds": [feature_seconds(c.meta) for c in checkpoints],
        "seconds": time.perf_counter() - start,
    }


def _store(run_dir: str):
    from rose_hf import FeatureStore

    return FeatureStore(os.path.join(run_dir, "selection"))


def objective_scores(config, task, run_dir: str, objective: str):
    """The paper scoring of a kept cache with one validation objective (`rose_hf.scoring.selection.score_store`)."""
    import dataclasses

    from rose_hf import score_store

    from .run import rose_config_for

    rose_config = dataclasses.replace(rose_config_for(config, 0, "paper"), validation_objective=objective)
    return score_store(_store(run_dir), list(task.validation["subtask"]), rose_config, num_rows=len(task.pool))


def robust_selection(config, task, base_path: str, tokenizer, run_dir: str, seed: int) -> dict:
    """`scoring="robust"` on the warmup's last checkpoint (one more pool pass), written to `<run_dir>/robust`."""
    from .run import feature_seconds, robust_from_last_checkpoint

    start = time.perf_counter()
    _, meta = robust_from_last_checkpoint(config, task, base_path, tokenizer, run_dir, seed)
    return {"feature_seconds": feature_seconds(meta), "seconds": time.perf_counter() - start}


def final_models(config, task, base_path: str, tokenizer, seed_dir: str, seed: int, scores: dict) -> dict:
    """Exact match and preference accuracy of a fresh LoRA on each method's 5% (the `run.py` recipe)."""

    from rose_fixtures.evaluation import evaluate_model
    from rose_fixtures.recipe import train_lora, training_rows
    from rose_hf import select_top

    from .run import recipe_for

    evaluate = dict(beta=config.beta, max_new_tokens=config.max_new_tokens or task.config.max_new_tokens,
                    batch_size=config.eval_batch_size)  # fmt: skip
    out = {}
    for method, method_scores in scores.items():
        indices = select_top(method_scores, fraction=config.final_budget)
        log(f"{task.config.family} seed {seed}: final model on {method} ({len(indices)} rows).")
        model, training = train_lora(recipe_for(config), base_path, tokenizer, training_rows(task.pool, indices),
                                     os.path.join(seed_dir, "final", method), seed)  # fmt: skip
        metrics = evaluate_model(model, tokenizer, task.test_pairs, task.test_prompts, **evaluate)
        out[method] = {k: metrics[k] for k in ("exact_match", "wrong_match", "preference_accuracy") if k in metrics}
        out[method]["train_seconds"] = training["seconds"]
        del model
    return out


def collect_seed(config, family: str, seed: int, base_path: str, output_dir: str) -> dict:
    """Warmups A, B and bad_1epoch of one held-out world, and its final models; cached in `collect.json`."""
    from transformers import AutoTokenizer

    from rose_fixtures.evaluation import oracle_scores, random_scores

    from .run import make_task

    seed_dir = os.path.join(output_dir, family, f"seed_{seed}")
    done = os.path.join(seed_dir, "collect.json")
    if os.path.exists(done):
        log(f"{family} seed {seed}: already collected in {seed_dir}.")
        with open(done) as handle:
            return json.load(handle)
    task = make_task(config, family, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    out: dict[str, Any] = {"family": family, "seed": seed, "warmups": {}}
    for name, (offset, epochs) in WARMUPS.items():
        log(f"{family} seed {seed}: warmup {name} (seed {seed + offset}, {epochs or config.epochs} epochs).")
        out["warmups"][name] = warmup_with_features(config, task, base_path, tokenizer, os.path.join(seed_dir, name),
                                                    seed + offset, epochs or config.epochs)  # fmt: skip
    run_a = os.path.join(seed_dir, "A")
    out["robust"] = robust_selection(config, task, base_path, tokenizer, run_a, seed)
    scores = {"random": random_scores(len(task.pool), seed)}
    for method, objective in OBJECTIVE_OF.items():
        scores[method] = objective_scores(config, task, run_a, objective).scores
    scores["oracle"] = oracle_scores(task.helpful_mask(), task.harmful_mask())
    out["final"] = final_models(config, task, base_path, tokenizer, seed_dir, seed,
                                {m: scores[m] for m in FINAL_METHODS})  # fmt: skip
    with open(done, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def dev_finals(config, family: str, seed: int, base_path: str, output_dir: str) -> dict | None:
    """The `dpo+sft` final model of a development seed, from `make bench-real`'s saved `dpo` and `sft` scores."""
    import numpy as np
    from transformers import AutoTokenizer

    from rose_hf.scoring.similarity import rank_average

    from .run import make_task

    path = os.path.join(output_dir, family, f"dev_seed_{seed}.json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    saved = os.path.join(DEV_OUTPUT, family, f"seed_{seed}_e{config.epochs}", "scores.npz")
    if not os.path.exists(saved):
        log(f"{family} seed {seed}: no {saved}, skipping its dpo+sft final model.")
        return None
    scores = np.load(saved)
    task = make_task(config, family, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    combined = rank_average([scores["rose"], scores["less"]])
    out = {"family": family, "seed": seed,
           "final": final_models(config, task, base_path, tokenizer, os.path.join(output_dir, family,
                                 f"dev_seed_{seed}"), seed, {"dpo+sft": combined})}  # fmt: skip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def collect(
    families: list[str], seeds: tuple[int, ...], output_dir: str, with_dev_finals: bool, smoke: bool = False
) -> None:
    import torch

    from rose_fixtures.smollm2 import smollm2_path

    config = bench_config(output_dir, smoke)
    torch.set_num_threads(1)
    base_path = smollm2_path()
    for family in families:
        for seed in seeds:
            collect_seed(config, family, seed, base_path, output_dir)
        if with_dev_finals:
            for seed in DEV_SEEDS:
                dev_finals(config, family, seed, base_path, output_dir)


def main(argv: list[str] | None = None) -> None:
    from rose_fixtures.real_worlds import real_families

    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.trust", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("collect", "analyse"))
    parser.add_argument("--families", nargs="+", default=list(real_families()))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(HELD_OUT_SEEDS))
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    parser.add_argument("--dev_finals", action="store_true", help="Also the dpo+sft final models of seeds 0-2.")
    parser.add_argument("--smoke", action="store_true", help="A 120-row pool and 6 test rows: checks the code path.")
    args = parser.parse_args(argv)
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries

    PartialState()
    quiet_libraries()
    if args.stage == "collect":
        collect(args.families, tuple(args.seeds), args.output_dir, args.dev_finals, args.smoke)
    else:
        from .trust_analysis import analyse

        analyse(args.families, args.output_dir, args.smoke)


if __name__ == "__main__":
    main()
