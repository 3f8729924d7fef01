"""The analysis stage of `benchmarks.quality.frontier`: every point of the cost frontier scored from the kept caches.

Per world: the library's first stage (`rose_hf.prefilter_pool`) runs once on the base model (timed, cached beside the
world's features), then each point (checkpoints x prefilter share x objective) is scored with the public scoring
functions, restricted to the rows the point keeps. `analyse()` writes `frontier.json`, `frontier.md` and one plot per
family, and chooses the default on the development seeds by the rule in `choose_default`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import fmt, log, table, write_results

from .frontier_settings import CONFIRMATION_SEEDS, DEV_SEEDS, HELD_OUT_SEEDS, bench_config

PREFILTER_SHARES = (None, 0.1, 0.2, 0.4)
OBJECTIVES = ("dpo", "sft", "dpo+sft")
# Which of the warmup's four checkpoints (indices) a point reads: the last, the last two (epochs 2 and 4), all four.
CHECKPOINT_SETS = {"last": (3,), "2 and 4": (1, 3), "all 4": (0, 1, 2, 3)}
TODAY = ("all 4", None, "dpo+sft")  # today's default: every checkpoint, no first stage, the mean rank
COST_TARGET = 1.0  # pool-epochs (issue 24)
PRECISION_SLACK = 0.02  # the new default may lose at most this much precision against today's
# The candidate default, named after the development and held-out seeds: `choose_default` restricted to every
# checkpoint (so that `validation_objective="dpo"` without the first stage stays the paper's method), where 40% costs
# more than `COST_TARGET`.
CANDIDATE = ("all 4", 0.2, "dpo+sft")


def _point_name(checkpoints: str, share: float | None, objective: str) -> str:
    first = "no prefilter" if share is None else f"prefilter {share:.0%}"
    return f"{objective} @ {checkpoints} ckpt, {first}"


class World:
    """One collected world: its task, kept feature cache, timings and first-stage scores."""

    def __init__(self, config, family: str, seed: int, seed_dir: str, base_path: str, run: str = "run"):
        """`run`: the folder under `seed_dir` whose warmup's feature cache is read (`collect.json`'s is "run")."""
        from rose_hf import FeatureStore

        from .run import make_task

        with open(os.path.join(seed_dir, "collect.json")) as handle:
            self.collected = json.load(handle)
        self.config, self.family, self.seed, self.seed_dir, self.base_path = config, family, seed, seed_dir, base_path
        self.task = make_task(config, family, seed)
        self.helpful, self.harmful = self.task.helpful_mask(), self.task.harmful_mask()
        self.subtasks = list(self.task.validation["subtask"])
        self.checkpoints = FeatureStore(os.path.join(seed_dir, run, "selection")).completed_checkpoints()
        if len(self.checkpoints) != 4:
            raise RuntimeError(f"{seed_dir}: expected the 4 checkpoints of a 4-epoch warmup, found {len(self.checkpoints)}.")
        self.valid = np.all([c.pool_status() == 1 for c in self.checkpoints], axis=0)
        self.num_rows = len(self.task.pool)
        self.k = max(1, math.floor(config.final_budget * self.num_rows + 0.5))
        self.pool_epoch = float(self.collected["plain_epoch"]["seconds"])
        self._objective: dict[tuple, np.ndarray] = {}
        self._base = None  # (model, tokenizer) of the first stage, loaded on first use

    # --- cost ---------------------------------------------------------------------------------------------------------
    def warmup_cost(self) -> float:
        warmup = self.collected["warmup"]
        return warmup["warmup_rows"] * warmup["epochs"] / self.num_rows

    def feature_cost(self, checkpoints: tuple[int, ...], share: float | None) -> float:
        seconds = sum(self.collected["warmup"]["feature_seconds"][i] for i in checkpoints)
        return seconds * (1.0 if share is None else share) / self.pool_epoch

    # --- scores -------------------------------------------------------------------------------------------------------
    def objective_scores(self, checkpoints: tuple[int, ...], objective: str) -> np.ndarray:
        """The paper's scoring of one objective over some checkpoints (per row: no other row enters a row's score)."""
        from rose_hf.scoring.similarity import checkpoint_weights, score_pool

        key = (checkpoints, objective)
        if key not in self._objective:
            chosen = [self.checkpoints[i] for i in checkpoints]
            weights = checkpoint_weights([c.meta["learning_rates"] for c in chosen])
            self._objective[key], _ = score_pool([c.pool_features() for c in chosen],
                                                 [c.validation_features(objective) for c in chosen], weights,
                                                 self.subtasks, valid=self.valid)  # fmt: skip
        return self._objective[key]

    def point_scores(self, checkpoints: tuple[int, ...], kept: np.ndarray | None, objective: str,
                     dpo_weight: float = 0.5) -> np.ndarray:  # fmt: skip
        """Scores of a point; rows outside `kept` are `INVALID_SCORE`, and ranks are taken over the kept rows only, as
        in a cache that holds only them. `dpo+sft` weighs its DPO side `dpo_weight` (the frontier's figures were
        measured with the plain mean rank, 0.5)."""
        from rose_hf.scoring.methods import OBJECTIVE_PARTS
        from rose_hf.scoring.similarity import INVALID_SCORE, rank_average

        parts = []
        for part in OBJECTIVE_PARTS[objective]:
            scores = self.objective_scores(checkpoints, part).copy()
            if kept is not None:
                outside = np.ones(self.num_rows, dtype=bool)
                outside[kept] = False
                scores[outside] = INVALID_SCORE
            parts.append(scores)
        return parts[0] if len(parts) == 1 else rank_average(parts, [dpo_weight, 1 - dpo_weight])  # (dpo, sft)

    def figures(self, scores: np.ndarray) -> dict[str, float]:
        from rose_fixtures.evaluation import oracle_scores, selection_metrics
        from rose_hf import select_top

        metrics = selection_metrics(select_top(scores, size=self.k), self.helpful, self.harmful)
        best = selection_metrics(select_top(oracle_scores(self.helpful, self.harmful), size=self.k), self.helpful,
                                 self.harmful)["precision"]  # fmt: skip
        return {"precision": metrics["precision"], "harmful_share": metrics["harmful_share"],
                "relative_precision": metrics["precision"] / best}  # fmt: skip

    # --- the first stage ----------------------------------------------------------------------------------------------
    def base(self):
        """`(model, tokenizer)` of the base model, loaded once per world: every first-stage share, RDS+ alone and the
        RDS baseline read the same one."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._base is None:
            self._base = AutoModelForCausalLM.from_pretrained(self.base_path), AutoTokenizer.from_pretrained(self.base_path)
        return self._base

    def prefilter(self, share: float, fresh: bool = False):
        """The library's first stage on the base model, keeping `share` of the pool (cached per world; `fresh`
        computes it again, so that its time is measured rather than read from the cache)."""
        import shutil

        from rose_hf import RoseConfig, prefilter_pool

        model, tokenizer = self.base()
        config = RoseConfig(selection_dir=os.path.join(self.seed_dir, "prefilter"), prefilter_fraction=share,
                            feature_max_length=self.config.max_length, selection_fraction=self.config.final_budget)  # fmt: skip
        if fresh:
            shutil.rmtree(config.selection_dir, ignore_errors=True)
        start = time.perf_counter()
        result = prefilter_pool(model, tokenizer, self.task.pool, self.task.validation, config)
        return result, time.perf_counter() - start


def analyse_world(world: World) -> dict[str, Any]:
    """Every point of one world, the first stage's recall, and RDS+ alone (the first stage's own 5%)."""
    out: dict[str, Any] = {"family": world.family, "seed": world.seed, "k": world.k, "pool_rows": world.num_rows,
                           "pool_epoch_seconds": world.pool_epoch, "warmup_cost": world.warmup_cost(),
                           "feature_seconds": world.collected["warmup"]["feature_seconds"], "prefilter": {},
                           "points": []}  # fmt: skip
    kept_sets: dict[float, np.ndarray] = {}
    first_stage_seconds = None
    for share in [s for s in PREFILTER_SHARES if s is not None]:
        result, seconds = world.prefilter(share, fresh=first_stage_seconds is None)
        first_stage_seconds = seconds if first_stage_seconds is None else first_stage_seconds  # later calls: cached
        kept = np.asarray(result.kept, dtype=np.int64)
        kept_sets[share] = kept
        out["prefilter"][str(share)] = {"kept": int(len(kept)), "recall": float(world.helpful[kept].sum() / world.helpful.sum()),
                                        "harmful_recall": float(world.harmful[kept].sum() / max(1, world.harmful.sum()))}  # fmt: skip
    first_stage_cost = first_stage_seconds / world.pool_epoch
    out["prefilter_seconds"], out["prefilter_cost"] = first_stage_seconds, first_stage_cost
    # RDS+ alone: the first stage's round robin at the selection's budget (no warmup, no gradients).
    rds, _ = world.prefilter(world.k / world.num_rows)
    rds_scores = np.full(world.num_rows, -1.0, dtype=np.float32)
    rds_scores[np.asarray(rds.kept)] = 1.0
    out["points"].append({"name": "RDS+ alone (first stage's round robin at 5%)", "checkpoints": None, "share": None,
                          "objective": "rds+", "cost": first_stage_cost, **world.figures(rds_scores)})  # fmt: skip
    for ckpt_name, checkpoints in CHECKPOINT_SETS.items():
        for share in PREFILTER_SHARES:
            for objective in OBJECTIVES:
                scores = world.point_scores(checkpoints, None if share is None else kept_sets[share], objective)
                cost = world.warmup_cost() + world.feature_cost(checkpoints, share)
                cost += 0.0 if share is None else first_stage_cost
                out["points"].append({"name": _point_name(ckpt_name, share, objective), "checkpoints": ckpt_name,
                                      "share": share, "objective": objective, "cost": cost,
                                      **world.figures(scores)})  # fmt: skip
    return out


def hh_recall(output_dir: str, base_path: str, seeds=(0, 1), pool_size: int = 800) -> list[dict[str, Any]] | None:
    """The first stage's recall of the target rows on the HH family (`rose_fixtures.hh`, the design-2 world: pool
    800, 8% chosen replies, 8% their rejected twins, chatterbot-corpus distractors): forward passes only, no warmup.
    None when the shared HH pairs are absent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose_fixtures.hh import MAX_TOKENS, HHDataMissing, make_hh_world
    from rose_hf import RoseConfig, prefilter_pool

    try:
        tasks = {seed: make_hh_world(seed, pool_size=pool_size) for seed in seeds}
    except HHDataMissing as missing:
        log(f"HH recall skipped: {missing}")
        return None
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base_path), AutoTokenizer.from_pretrained(base_path)
    out = []
    for seed, task in tasks.items():
        helpful, harmful = task.helpful_mask(), task.harmful_mask()
        selection_dir = os.path.join(output_dir, "hh_recall", f"seed_{seed}", "prefilter")
        start = time.perf_counter()
        result = prefilter_pool(model, tokenizer, task.pool, task.validation,
                                RoseConfig(selection_dir=selection_dir, prefilter_fraction=0.1, feature_max_length=MAX_TOKENS))  # fmt: skip
        seconds = time.perf_counter() - start
        for share in [s for s in PREFILTER_SHARES if s is not None]:
            kept = np.asarray(result.kept_at(share))
            out.append({"family": "hh", "seed": seed, "share": share, "kept": int(len(kept)),
                        "recall": float(helpful[kept].sum() / helpful.sum()),
                        "harmful_recall": float(harmful[kept].sum() / max(1, harmful.sum())), "seconds": seconds})  # fmt: skip
    return out


def _mean_by_point(worlds: list[dict[str, Any]], key: str) -> dict[str, float]:
    names = [p["name"] for p in worlds[0]["points"]]
    return {n: float(np.mean([next(p[key] for p in w["points"] if p["name"] == n) for w in worlds])) for n in names}


def choose_default(dev: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule, fixed before any result. Only the default ranking's points compete (the objective is issue 23's
    question; this one is what the selection costs): among the `dpo+sft` points whose mean cost on the development
    worlds is at most `COST_TARGET` pool-epochs and whose mean relative precision is at most `PRECISION_SLACK` below
    today's default, the one with the lowest mean harmful share, then the highest relative precision, then the lowest
    cost. When no point qualifies, the point of highest mean relative precision within the cost target is reported
    as the best answer, and the target as missed."""
    precision, harm, cost = (_mean_by_point(dev, k) for k in ("relative_precision", "harmful_share", "cost"))
    today = _point_name(*TODAY)
    candidates = [n for n in precision if n.startswith(TODAY[2] + " @")]
    qualifying = [n for n in candidates if cost[n] <= COST_TARGET and precision[n] >= precision[today] - PRECISION_SLACK]
    met = bool(qualifying)
    pool = qualifying or [n for n in candidates if cost[n] <= COST_TARGET]
    best = sorted(pool, key=lambda n: (harm[n], -precision[n], cost[n]) if met else (-precision[n], harm[n], cost[n]))[0]
    return {"chosen": best, "target_met_on_dev": met, "today": today, "dev_relative_precision": precision,
            "dev_harmful_share": harm, "dev_cost": cost}


def confirm_default(confirmation: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule that decides the library's default on the fresh `CONFIRMATION_SEEDS`, fixed before they were
    collected: `CANDIDATE` becomes the default when, in the mean over those worlds, its cost is at most `COST_TARGET`
    and its relative precision at most `PRECISION_SLACK` below today's default. Harmful shares are reported, not
    ruled on (both points' shares were within 0.05 of each other on the seeds already read)."""
    precision, harm, cost = (_mean_by_point(confirmation, k) for k in ("relative_precision", "harmful_share", "cost"))
    candidate, today = _point_name(*CANDIDATE), _point_name(*TODAY)
    confirmed = cost[candidate] <= COST_TARGET and precision[candidate] >= precision[today] - PRECISION_SLACK
    return {"candidate": candidate, "today": today, "confirmed": bool(confirmed), "worlds": len(confirmation),
            **{f"{name}_{key}": figures[point] for name, point in (("candidate", candidate), ("today", today))
               for key, figures in (("relative_precision", precision), ("harmful_share", harm), ("cost", cost))}}


def render(results: dict[str, Any]) -> str:
    lines = ["# Cost frontier: precision and harmful share against measured cost (SmolLM2-135M-Instruct)", ""]
    lines.append(results["design"])
    lines += ["", "## First stage: recall of the target rows", ""]
    rows = []
    for w in results["worlds"]:
        for share, figures in w["prefilter"].items():
            rows.append([w["family"], w["seed"], share, str(figures["kept"]), fmt(figures["recall"]), fmt(figures["harmful_recall"]),
                         fmt(w["prefilter_cost"])])  # fmt: skip
    lines.append(table(["family", "seed", "kept share", "rows kept", "target recall", "harmful twin recall",
                        "first stage cost (pool-epochs)"], rows))  # fmt: skip
    if results.get("hh_recall"):
        lines += ["", "HH family (`rose_fixtures.hh`, pool 800: 64 chosen replies, their 64 rejected twins, 672 chatterbot-corpus "
                  "rows; no warmup needed): the same first stage's recall.", ""]
        lines.append(table(["seed", "kept share", "rows kept", "target recall", "harmful twin recall"],
                           [[r["seed"], r["share"], str(r["kept"]), fmt(r["recall"]), fmt(r["harmful_recall"])]
                            for r in results["hh_recall"]]))  # fmt: skip
    choice = results["choice"]
    splits = (("development", results["dev"]), ("held-out", results["held_out"]),
              ("confirmation", results.get("confirmation", [])))
    for split, worlds in splits:
        if not worlds:
            continue
        lines += ["", f"## Every point, mean over the {split} worlds ({len(worlds)})", ""]
        precision, harm, cost = (_mean_by_point(worlds, k) for k in ("relative_precision", "harmful_share", "cost"))
        order = sorted(precision, key=lambda n: cost[n])
        marks = {choice["chosen"]: " (chosen on development)", _point_name(*CANDIDATE): " (candidate)",
                 choice["today"]: " (today's default)"}
        lines.append(table(["point", "cost (pool-epochs)", "precision / oracle's", "harmful share"],
                           [[n + marks.get(n, ""), fmt(cost[n]), fmt(precision[n]), fmt(harm[n])] for n in order]))  # fmt: skip
    lines += ["", "## Choice", "", choose_rule_text(choice), ""]
    if results.get("confirmed"):
        lines += [confirm_rule_text(results["confirmed"]), ""]
    return "\n".join(lines)


def choose_rule_text(choice: dict[str, Any]) -> str:
    return (f"Chosen on the development worlds: **{choice['chosen']}** (target met on development: "
            f"{choice['target_met_on_dev']}); today's default: {choice['today']}. Rule: `choose_default`.")  # fmt: skip


def confirm_rule_text(confirmed: dict[str, Any]) -> str:
    verdict = "confirmed: it becomes the default" if confirmed["confirmed"] else "refused: the default is unchanged"
    return (f"On the {confirmed['worlds']} confirmation worlds, the candidate **{confirmed['candidate']}** costs "
            f"{fmt(confirmed['candidate_cost'])} pool-epochs at {fmt(confirmed['candidate_relative_precision'])} "
            f"relative precision and {fmt(confirmed['candidate_harmful_share'])} harmful share, against today's "
            f"{fmt(confirmed['today_cost'])}, {fmt(confirmed['today_relative_precision'])} and "
            f"{fmt(confirmed['today_harmful_share'])}: {verdict}. Rule: `confirm_default`.")  # fmt: skip


def plot(results: dict[str, Any], output_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    families = sorted({w["family"] for w in results["worlds"]})
    fig, axes = plt.subplots(2, len(families), figsize=(5 * len(families), 8), squeeze=False)
    for col, family in enumerate(families):
        worlds = [w for w in results["worlds"] if w["family"] == family]
        for row, key in enumerate(("relative_precision", "harmful_share")):
            ax = axes[row][col]
            means, costs = _mean_by_point(worlds, key), _mean_by_point(worlds, "cost")
            for objective, marker in (("dpo", "o"), ("sft", "s"), ("dpo+sft", "^"), ("rds+", "*")):
                names = [n for n in means if n.startswith(objective + " ") or (objective == "rds+" and n.startswith("RDS+"))]
                ax.scatter([costs[n] for n in names], [means[n] for n in names], marker=marker, label=objective)
            ax.axvline(COST_TARGET, color="grey", linestyle=":")
            ax.set_xlabel("cost (pool-epochs, measured)")
            ax.set_ylabel("precision / oracle's" if key == "relative_precision" else "harmful share")
            ax.set_title(f"{family} ({len(worlds)} seed(s))")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(output_dir, "frontier.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def collected_worlds(families, seeds, output_dir: str, smoke: bool = False, done: str = "collect.json"):
    """The collected worlds under `output_dir`, seed-major, as `World`s; those without `done` are skipped, said so."""
    from rose_fixtures.smollm2 import smollm2_path

    base_path = smollm2_path()
    for seed in seeds:
        for family in families:
            seed_dir = os.path.join(output_dir, family, f"seed_{seed}")
            if not os.path.exists(os.path.join(seed_dir, done)):
                log(f"{family} seed {seed}: not collected ({done} is missing), skipped.")
                continue
            log(f"{family} seed {seed}: analysing.")
            yield World(bench_config(output_dir, smoke, family), family, seed, seed_dir, base_path)


def analyse(families: list[str], seeds: tuple[int, ...], output_dir: str, smoke: bool = False) -> dict[str, Any]:
    from rose_fixtures.smollm2 import smollm2_path

    config = bench_config(output_dir, smoke)
    base_path = smollm2_path()
    worlds = [analyse_world(world) for world in collected_worlds(families, seeds, output_dir, smoke)]
    dev = [w for w in worlds if w["seed"] in DEV_SEEDS]
    held_out = [w for w in worlds if w["seed"] in HELD_OUT_SEEDS]
    confirmation = [w for w in worlds if w["seed"] in CONFIRMATION_SEEDS]
    results = {"design": (f"Worlds: {sorted({w['family'] for w in worlds})}; development seeds {DEV_SEEDS}, held-out "
                          f"seeds {HELD_OUT_SEEDS}, confirmation seeds {CONFIRMATION_SEEDS}; pool {config.pool_size} rows, 5% = {worlds[0]['k'] if worlds else '-'} "
                          "rows; 4-epoch warmup (the paper's). Cost in pool-epochs, measured in each world's process "
                          "(see `benchmarks/quality/frontier.py`)."),
               "worlds": worlds, "dev": dev, "held_out": held_out, "confirmation": confirmation,
               "choice": choose_default(dev or worlds),
               "confirmed": confirm_default(confirmation) if confirmation else None}  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    results["hh_recall"] = hh_recall(output_dir, base_path)
    results["plots"] = plot(results, output_dir)
    write_results(output_dir, "frontier", results, render(results))
    return results
