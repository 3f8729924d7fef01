"""Every selection method on the HH family (issue 23, section 1): what each puts in the 5%, how stable it is, and
what its features cost.

Builds on the frontier's kept HH worlds (`python -m benchmarks.quality.frontier collect --families hh`: one 4-epoch
warmup per seed with the paper's features at every checkpoint for every pool row, and a timed plain epoch):

1. `collect` (per seed, resumable): the robust ranking's pass at the last checkpoint, and a second warmup seed (seed
   + 100) with its features at every checkpoint, for stability.
2. `analyse` (a minute per world): every method's 5% from the caches and the base model:
   random, BM25, RDS (the base model's mean hidden states), LESS (`validation_objective="sft"`), the paper's ROSE
   (`"dpo"`), robust (`scoring="robust"`), `dpo+sft` ranking every row, the library's default (`dpo+sft` after its
   20% first stage), the oracle and the full pool.

Figures per method: precision (the chosen replies' share of the 5%), harmful share (the rejected replies'), precision
over the oracle's, top-5% overlap between the two warmup seeds, and the feature cost in pool-epochs. The final models'
reward accuracy is not measured: the family's check (`benchmarks.quality.hh_check`) fails on every design tried,
so a final model trained on any method's 5% could not rank the methods (docs/benchmarks.md).

Run: `python -m benchmarks.quality.hh_family collect --seeds 0`, then `python -m benchmarks.quality.hh_family analyse`.
Writes `hh_family.json`, `hh_family.md` and `hh_family.png` into `--output_dir` (the frontier's).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import fmt, log, table, write_results

from .frontier_settings import DEFAULT_OUTPUT, bench_config

SEEDS = (0, 3, 1, 2)
EXTRAS = "hh_family.json"  # what `collect` adds to each world, beside the frontier's collect.json
SECOND_WARMUP = 100  # the second warmup's seed is the world's seed + this
FAMILY = "hh"
DEFAULT = "default (dpo+sft, first stage 20%)"
METHODS = ("random", "BM25", "RDS", "LESS (sft)", "ROSE paper (dpo)", "robust", "dpo+sft, every row", DEFAULT,
           "oracle", "full pool")  # fmt: skip
GRADIENT = {"LESS (sft)": "sft", "ROSE paper (dpo)": "dpo", "dpo+sft, every row": "dpo+sft"}


def _seed_dir(output_dir: str, seed: int) -> str:
    return os.path.join(output_dir, FAMILY, f"seed_{seed}")


def collect_seed(output_dir: str, seed: int, base_path: str) -> dict[str, Any]:
    """The robust pass and the second warmup of one collected HH world (cached in `hh_family.json` beside it)."""
    from transformers import AutoTokenizer

    from .run import feature_seconds, make_task, robust_from_last_checkpoint
    from .trust import warmup_with_features

    seed_dir = _seed_dir(output_dir, seed)
    done = os.path.join(seed_dir, EXTRAS)
    if os.path.exists(done):
        with open(done) as handle:
            return json.load(handle)
    if not os.path.exists(os.path.join(seed_dir, "collect.json")):
        raise FileNotFoundError(f"{seed_dir}: run `python -m benchmarks.quality.frontier collect --families hh "
                                f"--seeds {seed}` first.")  # fmt: skip
    config = bench_config(output_dir, family=FAMILY)
    task, tokenizer = make_task(config, FAMILY, seed), AutoTokenizer.from_pretrained(base_path)
    log(f"hh seed {seed}: the robust ranking's pass at the last checkpoint.")
    result, meta = robust_from_last_checkpoint(config, task, base_path, tokenizer, os.path.join(seed_dir, "run"), seed)
    out: dict[str, Any] = {"robust_scores": np.asarray(result.scores).tolist(), "robust_seconds": feature_seconds(meta)}
    log(f"hh seed {seed}: a second warmup (seed {seed + SECOND_WARMUP}) with features at every checkpoint.")
    start = time.perf_counter()
    out["second_warmup"] = warmup_with_features(config, task, base_path, tokenizer, os.path.join(seed_dir, "run_b"),
                                                seed + SECOND_WARMUP, config.epochs)  # fmt: skip
    out["seconds"] = time.perf_counter() - start
    with open(done, "w") as handle:
        json.dump(out, handle)
    return out


def analyse_world(world, extras: dict[str, Any]) -> dict[str, Any]:
    """Every method's figures in one HH world (`frontier_analysis.World`); `dpo+sft` weighs its sides as the
    library's default does (`RoseConfig.dpo_weight`)."""
    from rose_fixtures.evaluation import oracle_scores, random_scores
    from rose_hf import RoseConfig, select_top

    from .baselines import bm25_scores, rds_scores
    from .frontier_analysis import World

    second = World(world.config, world.family, world.seed, world.seed_dir, world.base_path, run="run_b")
    every, default = tuple(range(len(world.checkpoints))), RoseConfig()  # the library's default ranking and share
    result, first_stage_seconds = world.prefilter(default.prefilter_fraction, fresh=True)  # fresh: its time is a cost
    kept = np.asarray(result.kept, dtype=np.int64)
    scores: dict[str, np.ndarray] = {}
    again: dict[str, np.ndarray] = {}  # the same method after the second warmup
    scores["random"] = random_scores(world.num_rows, world.seed)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    scores["BM25"] = bm25_scores(world.task.pool, world.task.validation)
    seconds["BM25"] = time.perf_counter() - start
    start = time.perf_counter()
    scores["RDS"] = rds_scores(*world.base(), world.task.pool, world.task.validation)
    seconds["RDS"] = time.perf_counter() - start
    rankings = {name: (objective, None) for name, objective in GRADIENT.items()} | {DEFAULT: ("dpo+sft", kept)}
    for name, (objective, first_stage) in rankings.items():
        scores[name] = world.point_scores(every, first_stage, objective, default.dpo_weight)
        again[name] = second.point_scores(every, first_stage, objective, default.dpo_weight)
    scores["robust"] = np.asarray(extras["robust_scores"], dtype=np.float32)
    scores["oracle"] = oracle_scores(world.helpful, world.harmful)

    features = world.collected["warmup"]["feature_seconds"]
    epoch = world.pool_epoch
    warmup = world.warmup_cost()
    cost = {"random": 0.0, "BM25": seconds["BM25"] / epoch, "RDS": seconds["RDS"] / epoch,
            "LESS (sft)": warmup + sum(features) / epoch, "robust": warmup + extras["robust_seconds"] / epoch,
            DEFAULT: warmup + (first_stage_seconds + default.prefilter_fraction * sum(features)) / epoch, "oracle": None}  # fmt: skip
    cost["ROSE paper (dpo)"] = cost["dpo+sft, every row"] = cost["LESS (sft)"]
    out: dict[str, Any] = {"seed": world.seed, "k": world.k, "pool_epoch_seconds": epoch, "methods": {}}
    for name in METHODS:
        if name == "full pool":
            out["methods"][name] = {"precision": float(world.helpful.mean()), "harmful_share": float(world.harmful.mean()),
                                    "relative_precision": None, "overlap": None, "cost": None}  # fmt: skip
            continue
        figures = world.figures(scores[name])
        overlap = None
        if name in again:
            a, b = select_top(scores[name], size=world.k), select_top(again[name], size=world.k)
            overlap = len(set(a.tolist()) & set(b.tolist())) / world.k
        out["methods"][name] = {**figures, "overlap": overlap, "cost": cost[name]}
    return out


def analyse(seeds: tuple[int, ...], output_dir: str) -> dict[str, Any]:
    from .frontier_analysis import collected_worlds

    worlds = []
    for world in collected_worlds([FAMILY], seeds, output_dir, done=EXTRAS):
        with open(os.path.join(world.seed_dir, EXTRAS)) as handle:
            worlds.append(analyse_world(world, json.load(handle)))
    results = {"seeds": [w["seed"] for w in worlds], "worlds": worlds, "summary": summary(worlds)}
    results["plot"] = plot(results, output_dir)
    write_results(output_dir, "hh_family", results, render(results))
    return results


def summary(worlds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: mean, min and max of each figure over the worlds (None where a method has no such figure)."""
    out = {}
    for name in METHODS:
        out[name] = {}
        for key in ("precision", "harmful_share", "relative_precision", "overlap", "cost"):
            values = [w["methods"][name][key] for w in worlds if w["methods"][name][key] is not None]
            out[name][key] = ({"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
                              if values else None)  # fmt: skip
    return out


def plot(results: dict[str, Any], output_dir: str) -> str:
    """Each method's harmful share against its precision, one point per world and the mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, name in enumerate(METHODS):
        points = [(w["methods"][name]["harmful_share"], w["methods"][name]["precision"]) for w in results["worlds"]]
        color = f"C{i % 10}"
        ax.scatter(*zip(*points), color=color, alpha=0.35, s=18)
        ax.scatter(np.mean([p[0] for p in points]), np.mean([p[1] for p in points]), color=color, marker="D",
                   edgecolor="black", label=name)  # fmt: skip
    ax.set_xlabel("harmful share of the 5% (rejected replies)")
    ax.set_ylabel("precision of the 5% (chosen replies)")
    ax.set_title(f"HH family, {len(results['worlds'])} worlds: each method's 5% (diamond: mean)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = os.path.join(output_dir, "hh_family.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{fmt(stat['mean'])} ({fmt(stat['min'])}-{fmt(stat['max'])})"


def render(results: dict[str, Any]) -> str:
    rows = [[name, *(_cell(results["summary"][name][key]) for key in
                     ("precision", "harmful_share", "relative_precision", "overlap", "cost"))]
            for name in METHODS]  # fmt: skip
    return "\n".join([
        "# HH family: every method's 5% (SmolLM2-135M-Instruct, pool 400, 5% = 20 rows)", "",
        f"Seeds {results['seeds']}: mean (min-max) over the worlds. Precision: the chosen replies' share of the 5% "
        "(8% of the pool); harmful share: their rejected twins'; overlap: the top 5% shared with a second warmup "
        "seed's; cost: feature passes and warmup in pool-epochs, measured in each world's process. Final models are "
        "not trained: the family's check fails (docs/benchmarks.md).", "",
        table(["method", "precision", "harmful share", "precision / oracle's", "overlap, 2 warmup seeds",
               "cost (pool-epochs)"], rows), ""])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.hh_family", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("collect", "analyse"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT, help="The frontier's output directory (its caches).")
    args = parser.parse_args(argv)
    import torch
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries
    from rose_fixtures.smollm2 import smollm2_path

    PartialState()
    quiet_libraries()
    torch.set_num_threads(1)
    if args.stage == "collect":
        for seed in args.seeds:
            collect_seed(args.output_dir, seed, smollm2_path())
    else:
        analyse(tuple(args.seeds), args.output_dir)


if __name__ == "__main__":
    main()
