"""World check: is each synthetic world (`rose_fixtures.worlds`) usable for the quality benchmark?

No selection method runs here. Per world it measures what the benchmark's verdicts rest on:
- the base model: pretraining loss and greedy exact match on every task of its family (the distractors must be
  learnt, the target must not be);
- per seed and per training length (the benchmark's warmup settings, 2, 4 and 8 epochs; the final models are trained
  with the same settings): four models from the SAME base on the test splits of the seed's world:
  the untrained base; the oracle (LoRA on the 5% oracle selection: every helpful row, then other tasks); a random 5%;
  and the "twin" model (LoRA on the twin rows first, helpful rows last), which shows what the harmful rows teach.

A world is usable when the oracle's exact match is clearly above the base's at every training length and seed.

Run (about 25 minutes on 2 shared CPU cores for the default worlds; results are cached per world and seed):
```
python -m benchmarks.quality.worlds --output_dir outputs/bench_worlds
```
Writes `worlds.json` and `worlds.md` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODELS = ("oracle", "random", "twin")
METRICS = ("exact_match", "wrong_match", "preference_accuracy", "reward_accuracy")


@dataclass
class WorldCheckConfig:
    """Settings of the world check.

    Args:
        output_dir: where `worlds.json`, `worlds.md` and the per-world caches go.
        worlds: `label -> (family, base)`; base `None` is the family's own base model (`world_base_model`),
            otherwise a dict of fields that replace those of the family's `BaseSpec` (`SORT_WORLD_BASE` for `sort`).
        seeds: world seeds (pool, test splits, LoRA init, data order, random selection).
        epochs: training lengths (the benchmark's warmup and final epochs).
        models: which of `MODELS` to train.
        budget: share of the pool each model is trained on.
        cache_dir: where the base models are cached.
        num_threads: torch threads while training (1, as the quality benchmark).
    """

    output_dir: str = "outputs/bench_worlds"
    worlds: dict[str, tuple[str, dict | None]] = field(
        default_factory=lambda: {
            # The quality benchmark's base today: `TinyBaseConfig()` (3 epochs of 3000 rows).
            "sort (default base)": ("sort", {"epochs": 3, "n_pretrain": 3000}),
            "sort": ("sort", None),
            "drop_chat": ("drop_chat", None),
            "letters_ends": ("letters_ends", None),
        }
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: tuple[int, ...] = (2, 4, 8)
    models: tuple[str, ...] = MODELS
    budget: float = 0.05
    cache_dir: str | None = None
    num_threads: int | None = 1


def _base_path(family: str, base: dict | None, cache_dir: str) -> str:
    import dataclasses

    from rose_fixtures.base_model import SORT_WORLD_BASE, world_base_model
    from rose_fixtures.worlds import SORT, get_family

    if base is None:
        return world_base_model(family, cache_dir)
    default = SORT_WORLD_BASE if family == SORT else get_family(family).base
    return world_base_model(family, cache_dir, base=dataclasses.replace(default, **base))


def base_report(family: str, path: str) -> dict[str, Any]:
    """The base model's pretraining record and its exact match on every task of the family."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose_fixtures.base_model import world_skill

    with open(os.path.join(path, "pretrain.json")) as handle:
        record = json.load(handle)
    if "skill_exact_match" not in record:  # the sort world's bases (tiny_base_model) do not record it
        model = AutoModelForCausalLM.from_pretrained(path)
        record["skill_exact_match"] = world_skill(family, model, AutoTokenizer.from_pretrained(path))
    return {"path": path, **{k: v for k, v in record.items() if k != "loss_curve"}, "loss_curve": record.get("loss_curve")}


def _selection(model: str, task, seed: int, budget: float):
    from rose_fixtures.evaluation import oracle_scores, random_scores
    from rose_hf import select_top

    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    if model == "oracle":
        scores = oracle_scores(helpful, harmful)
    elif model == "twin":  # the oracle with the roles swapped: twin rows first, helpful rows last
        scores = oracle_scores(harmful, helpful)
    else:
        scores = random_scores(len(task.pool), seed)
    return select_top(scores, fraction=budget)


def _by_length(model, tokenizer, task, max_new_tokens: int) -> dict[str, float]:
    # Exact match per input length: which lists the model gets right (the prompt symbols are its 1-char words).
    from rose_fixtures.evaluation import exact_match, greedy_generations
    from rose_fixtures.worlds import prompt_text

    prompts = list(task.test_prompts["prompt"])
    generations = greedy_generations(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    lengths = [sum(len(w) == 1 and w.isalnum() for w in prompt_text(p).split()) for p in prompts]
    out = {}
    for n in sorted(set(lengths)):
        rows = [i for i, length in enumerate(lengths) if length == n]
        out[str(n)] = exact_match([generations[i] for i in rows], [task.test_prompts[i]["reference"] for i in rows])
    return out


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("chosen_logps", "rejected_logps")}


def check_seed(config: WorldCheckConfig, label: str, family: str, base_path: str, seed: int) -> dict[str, Any]:
    """Base, oracle, random and twin models of one world and seed at every training length (cached as JSON)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.quality.run import QualityBenchConfig, recipe_for
    from rose_fixtures.evaluation import evaluate_model
    from rose_fixtures.recipe import train_lora, training_rows
    from rose_fixtures.worlds import make_world, max_new_tokens

    cache = os.path.join(config.output_dir, "cache", f"{label.replace(' ', '_')}_seed{seed}.json")
    fingerprint = {"base": os.path.basename(base_path), "epochs": list(config.epochs), "models": list(config.models),
                   "budget": config.budget}  # fmt: skip
    if os.path.exists(cache):
        with open(cache) as handle:
            saved = json.load(handle)
        if saved["fingerprint"] == fingerprint:
            return saved
    start = time.perf_counter()
    task = make_world(family, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    limit = max_new_tokens(family)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    base_metrics = evaluate_model(base, tokenizer, task.test_pairs, task.test_prompts, max_new_tokens=limit)
    reference = (np.asarray(base_metrics["chosen_logps"]), np.asarray(base_metrics["rejected_logps"]))
    out: dict[str, Any] = {
        "fingerprint": fingerprint,
        "seed": seed,
        "base": {**_clean(base_metrics), "by_length": _by_length(base, tokenizer, task, limit)},
        "trained": {},
    }
    for epochs in config.epochs:
        bench = QualityBenchConfig(epochs=epochs, final_budget=config.budget)
        for name in config.models:
            indices = _selection(name, task, seed, config.budget)
            rows = training_rows(task.pool, indices)
            model, info = train_lora(recipe_for(bench), base_path, tokenizer, rows, os.path.join(config.output_dir, "tmp"), seed)
            metrics = evaluate_model(
                model, tokenizer, task.test_pairs, task.test_prompts, reference_logps=reference, max_new_tokens=limit
            )
            out["trained"][f"{name}@{epochs}"] = {
                **_clean(metrics),
                "by_length": _by_length(model, tokenizer, task, limit),
                "train_loss": info["train_loss"],
                "steps": info["steps"],
                "helpful_rows": int(task.helpful_mask()[indices].sum()),
                "harmful_rows": int(task.harmful_mask()[indices].sum()),
            }
            print(f"{label} seed {seed} {name}@{epochs}: em {metrics['exact_match']:.2f} pref "
                  f"{metrics['preference_accuracy']:.2f} wrong {metrics['wrong_match']:.2f}", flush=True)  # fmt: skip
            del model
    out["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def _stats(values: list[float | None]) -> dict[str, Any]:
    import numpy as np

    clean = [float(v) for v in values if v is not None]
    return {"mean": float(np.mean(clean)) if clean else None, "min": min(clean) if clean else None, "values": clean}


def summarize(per_seed: list[dict[str, Any]], epochs: tuple[int, ...], models: tuple[str, ...]) -> dict[str, Any]:
    """Mean and minimum over seeds of every metric; `usable` = the oracle's exact match is above the base's in every
    seed and training length, by at least 0.1 on average at every length."""
    rows: dict[str, Any] = {"base": {m: _stats([s["base"].get(m) for s in per_seed]) for m in METRICS}}
    for e in epochs:
        for name in models:
            key = f"{name}@{e}"
            rows[key] = {m: _stats([s["trained"][key].get(m) for s in per_seed]) for m in METRICS}
    gaps = {
        e: [s["trained"][f"oracle@{e}"]["exact_match"] - s["base"]["exact_match"] for s in per_seed] for e in epochs
    }
    usable = all(min(g) > 0 and sum(g) / len(g) >= 0.1 for g in gaps.values()) if "oracle" in models else None
    return {"rows": rows, "oracle_minus_base_exact_match": {str(e): g for e, g in gaps.items()}, "usable": usable}


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f} ({stat['min']:.2f})"


def render_markdown(results: dict[str, Any]) -> str:
    """`worlds.md`: per world the base model's skill, then the models' test metrics (mean (min) over seeds)."""
    config = results["config"]
    lines = [
        "# Synthetic worlds: base skill and oracle vs base",
        "",
        f"Seeds {list(config['seeds'])}; LoRA with the quality benchmark's settings (lr 1e-3, batch 8, r=8, alpha=32, "
        f"q/k/v/o) on {config['budget']:.0%} of the 4000-row pool for each number of epochs. Oracle: every helpful "
        "row, then other tasks. Twin: every harmful row, then other tasks. Random: a seeded random 5%. Cells: mean "
        "over seeds (minimum in brackets). EM: greedy exact match on 100 held-out prompts; wrong: the generation is "
        "the harmful twin's answer; pref: log p(chosen) > log p(rejected) on 200 held-out pairs; reward: the DPO "
        "implicit reward against the base model > 0. Command: `python -m benchmarks.quality.worlds`.",
        "",
    ]
    for label, world in results["worlds"].items():
        base = world["base_model"]
        skill = ", ".join(f"{k} {v:.2f}" for k, v in base["skill_exact_match"].items())
        summary = world["summary"]
        lines += [
            f"## {label}",
            "",
            f"Base model `{os.path.basename(base['path'])}`: hidden {base['hidden_size']}, {base['num_layers']} "
            f"layers, {base['epochs']} epochs of {base['n_pretrain']} rows, batch {base['batch_size']}, lr "
            f"{base['learning_rate']:g}, seed {base['seed']}; mean pretraining loss {base['final_loss']:.3f}"
            + (f", last logged {base['loss_curve'][-1][1]:.4f}" if base.get("loss_curve") else "")
            + f". Exact match per task (target `{world['target']}`): {skill}.",
            "",
            "| Model | EM | Wrong | Pref | Reward |",
            "|---|---|---|---|---|",
        ]
        for key, row in summary["rows"].items():
            lines.append(f"| {key} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
        gaps = "; ".join(
            f"{e} epochs {[round(g, 2) for g in v]}" for e, v in summary["oracle_minus_base_exact_match"].items()
        )
        lines += ["", f"Oracle − base exact match per seed: {gaps}. Usable: **{summary['usable']}**.", ""]
        by_length = {
            key: world["per_seed"][0]["trained"][key]["by_length"]
            for key in (f"oracle@{e}" for e in config["epochs"])
            if key in world["per_seed"][0]["trained"]
        }
        if by_length:
            cells = "; ".join(f"{k}: " + ", ".join(f"{n}: {v:.2f}" for n, v in bl.items()) for k, bl in by_length.items())
            lines += [f"Oracle exact match by input length (seed {world['per_seed'][0]['seed']}): {cells}.", ""]
    lines += [f"Total wall time: {results['seconds']:.0f} s. Every number is in `worlds.json`.", ""]
    return "\n".join(lines)


def run_world_check(config: WorldCheckConfig | None = None) -> dict[str, Any]:
    """Every world and seed; writes `worlds.json` and `worlds.md` into `config.output_dir`."""
    import torch

    from rose_fixtures.worlds import SORT, get_family
    from rose_hf.paths import cache_root

    config = config or WorldCheckConfig()
    start = time.perf_counter()
    cache_dir = config.cache_dir or cache_root()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    worlds: dict[str, Any] = {}
    try:
        for label, (family, base) in config.worlds.items():
            path = _base_path(family, base, cache_dir)
            per_seed = [check_seed(config, label, family, path, seed) for seed in config.seeds]
            worlds[label] = {
                "family": family,
                "target": SORT if family == SORT else get_family(family).target,
                "base_model": base_report(family, path),
                "per_seed": per_seed,
                "summary": summarize(per_seed, config.epochs, config.models),
            }
    finally:
        torch.set_num_threads(threads)
    results = {"config": asdict(config), "worlds": worlds, "seconds": time.perf_counter() - start}
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "worlds.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(config.output_dir, "worlds.md"), "w") as handle:
        handle.write(render_markdown(results))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.quality.worlds [--output_dir D] [--worlds sort drop_chat] [--seeds 0 1 2] [--epochs 2 4 8]`."""
    parser = argparse.ArgumentParser(description="Base skill and oracle-vs-base gap of every synthetic world.")
    parser.add_argument("--output_dir", default="outputs/bench_worlds")
    parser.add_argument("--worlds", nargs="+", default=None, help="Labels of the default worlds to check.")
    parser.add_argument("--base_seed", type=int, default=None, help="Pretrain the bases with this seed instead.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries

    PartialState()
    quiet_libraries()
    config = WorldCheckConfig(output_dir=args.output_dir, seeds=tuple(args.seeds), epochs=tuple(args.epochs),
                              models=tuple(args.models))  # fmt: skip
    if args.worlds:
        config.worlds = {label: config.worlds[label] for label in args.worlds}
    if args.base_seed is not None:
        config.worlds = {
            f"{label} (base seed {args.base_seed})": (family, {**(base or {}), "seed": args.base_seed})
            for label, (family, base) in config.worlds.items()
            if base is None
        }
    results = run_world_check(config)
    print(f"worlds -> {os.path.join(config.output_dir, 'worlds.md')}")
    return results


if __name__ == "__main__":
    main()
