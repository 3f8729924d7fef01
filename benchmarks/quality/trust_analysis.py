"""The analysis stage of `benchmarks.quality.trust`: every selection scored again from the kept feature caches.

Nothing here trains or computes a gradient: it reads `collect`'s caches (`FeatureStore`) and scores them with the
public scoring functions (`score_pool`, `rank_average`, `select_top`, `selection_health`), so a new question costs
seconds. `analyse()` writes `trust.json` (every figure) and `trust.md` (the tables of docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from benchmarks.common import fmt, log, table
from rose_fixtures.evaluation import quality_band
from rose_hf.scoring.health import top_overlap
from rose_hf.scoring.similarity import rank_average

from .trust_settings import DEFAULT, DEV_OUTPUT, DEV_SEEDS, FINAL_METHODS, HELD_OUT_SEEDS, OBJECTIVE_OF, bench_config


# --- scores from a kept cache ----------------------------------------------------------------------------------------
class Run:
    """One warmup's kept feature cache, scored any way the analysis asks (public scoring functions only)."""

    def __init__(self, run_dir: str, subtasks: list[str]):
        from rose_hf import FeatureStore

        self.checkpoints = FeatureStore(os.path.join(run_dir, "selection")).completed_checkpoints()
        self.subtasks = list(subtasks)
        self.valid = np.all([c.pool_status() == 1 for c in self.checkpoints], axis=0)

    def scores(self, method: str, checkpoints: list[int] | None = None, pairs: list[int] | None = None) -> np.ndarray:
        """`method` in rose (dpo), less (sft), dpo+sft; over some checkpoints (default all) and validation pairs."""
        from rose_hf.scoring.methods import OBJECTIVE_PARTS
        from rose_hf.scoring.similarity import checkpoint_weights, score_pool

        chosen = [
            self.checkpoints[i] for i in (checkpoints if checkpoints is not None else range(len(self.checkpoints)))
        ]
        pairs = list(range(len(self.subtasks))) if pairs is None else pairs
        weights = checkpoint_weights([c.meta["learning_rates"] for c in chosen])
        parts = []
        for objective in OBJECTIVE_PARTS[OBJECTIVE_OF[method]]:
            scores, _ = score_pool([c.pool_features() for c in chosen],
                                   [c.validation_features(objective)[pairs] for c in chosen], weights,
                                   [self.subtasks[p] for p in pairs], valid=self.valid)  # fmt: skip
            parts.append(scores)
        return parts[0] if len(parts) == 1 else rank_average(parts)

    def relevance_preference(self):
        """The health check's relevance and preference at the last checkpoint (`rose_hf.scoring.robust`)."""
        from rose_hf.scoring.robust import relevance_and_preference

        last = self.checkpoints[-1]
        return relevance_and_preference(last.pool_features(), last.validation_features("sft"),
                                        last.validation_features("dpo"), self.valid, last.pool_scales())  # fmt: skip


def selection_figures(scores: np.ndarray, helpful: np.ndarray, harmful: np.ndarray, oracle: np.ndarray,
                      size: int) -> dict[str, float]:  # fmt: skip
    """Precision, harmful share and precision over the oracle's at the same budget of the top `size` rows."""
    from rose_fixtures.evaluation import selection_metrics
    from rose_hf import select_top

    metrics = selection_metrics(select_top(scores, size=size), helpful, harmful)
    best = selection_metrics(select_top(oracle, size=size), helpful, harmful)["precision"]
    return {"precision": metrics["precision"], "harmful_share": metrics["harmful_share"],
            "relative_precision": metrics["precision"] / best}  # fmt: skip


def signals(run: Run, method: str, scores: np.ndarray, k: int, pairs: list[int] | None = None,
            checkpoints: list[int] | None = None) -> dict[str, float | None]:  # fmt: skip
    """Label-free signals of one selection: agreement of its top-k with the top-k of (a) the two halves of its
    validation pairs scored apart, (b) its first and last checkpoints scored apart, (c) the other objective, and the
    existing relevance/preference signals (`rose_hf.scoring.robust.selection_health`)."""
    from rose_hf import select_top
    from rose_hf.scoring.health import pair_halves, selection_health

    pairs = list(range(len(run.subtasks))) if pairs is None else pairs
    ckpts = list(range(len(run.checkpoints))) if checkpoints is None else checkpoints
    first, second = pair_halves([run.subtasks[p] for p in pairs])
    out: dict[str, Any] = {}
    halves = None
    if first and second:
        halves = (run.scores(method, ckpts, [pairs[i] for i in first]), run.scores(method, ckpts, [pairs[i] for i in second]))
        out["pair_split_agreement"] = top_overlap(*halves, k)
    else:
        out["pair_split_agreement"] = None
    if len(ckpts) > 1:
        out["checkpoint_agreement"] = top_overlap(
            run.scores(method, [ckpts[0]], pairs), run.scores(method, [ckpts[-1]], pairs), k
        )
    else:
        out["checkpoint_agreement"] = None
    sides = (run.scores("rose", ckpts, pairs), run.scores("less", ckpts, pairs))
    out["objective_agreement"] = top_overlap(*sides, k)
    relevance, preference = run.relevance_preference()
    # The library's own verdict on the same inputs: what a user would have been told.
    health = selection_health(relevance, preference, select_top(scores, size=k), k, halves, sides)
    out.update({name: float(value) for name, value in health["signals"].items()})
    out["verdict"] = health["verdict"]
    return out


# --- one held-out world ----------------------------------------------------------------------------------------------
def analyse_seed(config, family: str, seed: int, seed_dir: str) -> dict[str, Any]:
    """Selections, stability, cost and signals of one held-out (family, seed) from its kept caches."""
    from rose_fixtures.evaluation import oracle_scores, random_scores
    from rose_hf import load_selection

    from .run import make_task

    with open(os.path.join(seed_dir, "collect.json")) as handle:
        collected = json.load(handle)
    task = make_task(config, family, seed)
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    subtasks = list(task.validation["subtask"])
    runs = {name: Run(os.path.join(seed_dir, name), subtasks) for name in ("A", "B", "bad_1epoch")}
    k = int(np.floor(config.final_budget * len(task.pool) + 0.5))
    oracle = oracle_scores(helpful, harmful)

    def measure(scores: np.ndarray, size: int = k) -> dict[str, float]:
        return selection_figures(scores, helpful, harmful, oracle, size)

    # Cost in pool-epochs: the warmup's share of an epoch, plus each feature pass timed against training throughput
    # measured in the same process (the final models: rows x epochs in train_seconds).
    finals = collected["final"]
    row_epoch_seconds = np.mean([f["train_seconds"] for f in finals.values()]) / (
        k * (config.final_epochs or config.epochs)
    )
    pool_epoch = row_epoch_seconds * len(task.pool)
    warm = collected["warmups"]

    def cost(name: str, passes: list[int] | None = None) -> float:
        w = warm[name]
        seconds = w["feature_seconds"] if passes is None else [w["feature_seconds"][i] for i in passes]
        return config.warmup_fraction * w["epochs"] + float(sum(seconds)) / pool_epoch

    def passes(name: str, count: int | None = None) -> float:
        """The same cost counted, not timed: warmup epochs x its share of the pool, plus one per feature pass."""
        w = warm[name]
        return config.warmup_fraction * w["epochs"] + (len(w["feature_seconds"]) if count is None else count)

    selections: dict[str, dict[str, Any]] = {}
    first_pair = [subtasks.index(name) for name in dict.fromkeys(subtasks)]  # one pair per subtask
    a_scores = {}
    for method in OBJECTIVE_OF:
        a_scores[method] = runs["A"].scores(method)
        b = runs["B"].scores(method)
        last = len(runs["A"].checkpoints) - 1
        at_last = runs["A"].scores(method, [last])
        selections[method] = {**measure(a_scores[method]), "cost": cost("A"), "passes": passes("A"),
                              "stability": top_overlap(a_scores[method], b, k),
                              "second_warmup": measure(b),
                              "signals": signals(runs["A"], method, a_scores[method], k),
                              "second_warmup_signals": signals(runs["B"], method, b, k)}  # fmt: skip
        selections[f"{method} @last checkpoint"] = {**measure(at_last), "cost": cost("A", [last]), "passes": passes("A", 1),
                                                    "stability": top_overlap(at_last, runs["B"].scores(method, [last]), k),
                                                    "signals": signals(runs["A"], method, at_last, k, checkpoints=[last])}  # fmt: skip
        one_epoch = runs["bad_1epoch"].scores(method)
        selections[f"{method} @1-epoch warmup"] = {**measure(one_epoch), "cost": cost("bad_1epoch"), "passes": passes("bad_1epoch"),
                                                  "bad_by_design": True,
                                                  "signals": signals(runs["bad_1epoch"], method, one_epoch, k)}  # fmt: skip
        two = runs["A"].scores(method, pairs=first_pair)
        selections[f"{method} @2 pairs"] = {**measure(two), "cost": cost("A"), "bad_by_design": True,
                                           "signals": signals(runs["A"], method, two, k, pairs=first_pair)}  # fmt: skip
        big = int(np.floor(0.2 * len(task.pool) + 0.5))
        selections[f"{method} @20% budget"] = {**measure(a_scores[method], big), "cost": cost("A"), "bad_by_design": True,
                                              "budget": 0.2,
                                              "signals": signals(runs["A"], method, a_scores[method], big)}  # fmt: skip
        ensemble = rank_average([a_scores[method], b])
        selections[f"{method} x2 warmups"] = {**measure(ensemble), "cost": cost("A") + cost("B"),
                                             "passes": passes("A") + passes("B"),
                                             "warmup_agreement": top_overlap(a_scores[method], b, k)}  # fmt: skip
    robust = load_selection(os.path.join(seed_dir, "A", "robust")).scores
    selections["robust"] = {**measure(robust), "cost": config.warmup_fraction * warm["A"]["epochs"]
                            + collected["robust"]["feature_seconds"] / pool_epoch, "passes": passes("A", 1)}  # fmt: skip
    selections["random"] = measure(random_scores(len(task.pool), seed))
    selections["oracle"] = measure(oracle)
    return {"family": family, "seed": seed, "k": k, "pool_epoch_seconds": pool_epoch, "selections": selections,
            "final": finals, "warmups": warm}  # fmt: skip


# --- the development seeds (make bench-real) -------------------------------------------------------------------------
def analyse_dev(config, family: str, seed: int, output_dir: str) -> dict[str, Any] | None:
    """Precision, harm and final models of the development seeds from `make bench-real`'s saved scores."""
    from rose_hf.scoring.similarity import rank_average

    from .run import make_task

    run_dir = os.path.join(DEV_OUTPUT, family, f"seed_{seed}_e{config.epochs}")
    if not os.path.exists(os.path.join(run_dir, "scores.npz")):
        return None
    saved = np.load(os.path.join(run_dir, "scores.npz"))
    with open(os.path.join(run_dir, "result.json")) as handle:
        result = json.load(handle)
    task = make_task(config, family, seed)
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    k = int(np.floor(config.final_budget * len(task.pool) + 0.5))
    scores = {m: saved[m] for m in ("random", "less", "rose", "robust", "oracle")}
    scores["dpo+sft"] = rank_average([saved["rose"], saved["less"]])
    selections = {method: selection_figures(values, helpful, harmful, scores["oracle"], k)
                  for method, values in scores.items()}  # fmt: skip
    second = os.path.join(run_dir, "scores_second_warmup.npz")
    if os.path.exists(second):
        other = np.load(second)
        other_scores = {"rose": other["rose"], "less": other["less"],
                        "dpo+sft": rank_average([other["rose"], other["less"]])}  # fmt: skip
        for method, values in other_scores.items():
            selections[method]["stability"] = top_overlap(scores[method], values, k)
    final = {m: {k: v[k] for k in ("exact_match", "wrong_match", "preference_accuracy") if k in v}
             for m, v in result.get("final", {}).items() if m in (*FINAL_METHODS, "full_pool")}  # fmt: skip
    dev_final = os.path.join(output_dir, family, f"dev_seed_{seed}.json")
    if os.path.exists(dev_final):
        with open(dev_final) as handle:
            final.update(json.load(handle)["final"])
    return {"family": family, "seed": seed, "k": k, "selections": selections, "final": final}


# --- aggregation -----------------------------------------------------------------------------------------------------
def analyse(families: list[str], output_dir: str, smoke: bool = False) -> dict[str, Any]:
    config = bench_config(output_dir, smoke)
    held_out, dev = [], []
    for family in families:
        for seed in HELD_OUT_SEEDS:
            seed_dir = os.path.join(output_dir, family, f"seed_{seed}")
            if os.path.exists(os.path.join(seed_dir, "collect.json")):
                log(f"analysing {family} seed {seed}")
                held_out.append(analyse_seed(config, family, seed, seed_dir))
        for seed in () if smoke else DEV_SEEDS:  # the smoke's pool is not make bench-real's
            if (run := analyse_dev(config, family, seed, output_dir)) is not None:
                dev.append(run)
    results = {"held_out": held_out, "development": dev, "health": calibrate(held_out)}
    with open(os.path.join(output_dir, "trust.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    from .trust_render import plot_frontier, render

    if held_out:
        os.makedirs(os.path.join(output_dir, "plots"), exist_ok=True)
        plot_frontier(held_out, os.path.join(output_dir, "plots", "frontier.png"))

    with open(os.path.join(output_dir, "trust.md"), "w") as handle:
        handle.write(render(results))
    log(f"-> {os.path.join(output_dir, 'trust.md')}")
    return results


def calibration_cases(held_out: list[dict]) -> list[dict[str, Any]]:
    """Every gradient selection with signals, labelled bad / middling / good by its precision against the oracle's."""
    cases = []
    for run in held_out:
        for name, sel in run["selections"].items():
            for key, prefix in (("signals", ""), ("second_warmup_signals", "second warmup: ")):
                if key not in sel:
                    continue
                measured = sel if key == "signals" else sel["second_warmup"]
                rel = measured["relative_precision"]
                cases.append({"family": run["family"], "seed": run["seed"], "selection": prefix + name,
                              "relative_precision": rel, "band": quality_band(rel),
                              "signals": sel[key]})  # fmt: skip
    return cases


def calibrate(held_out: list[dict]) -> dict[str, Any]:
    """How each signal separates bad from good selections: for each signal and threshold, the warnings on bad,
    middling and good cases (a signal below its threshold warns; a missing signal warns: it could not be checked)."""
    from rose_hf.scoring.health import HEALTH_SIGNAL, HEALTH_THRESHOLD

    cases = calibration_cases(held_out)
    names = sorted({n for c in cases for n in c["signals"] if n != "verdict"})
    out: dict[str, Any] = {"cases": cases, "signals": {}, "shipped": {"signal": HEALTH_SIGNAL,
                                                                      "threshold": HEALTH_THRESHOLD}}  # fmt: skip
    for subset, chosen in (("every selection", cases), (f"{DEFAULT} only", [c for c in cases if DEFAULT in c["selection"]])):
        counts = {band: [0, 0] for band in ("bad", "middling", "good")}
        for c in chosen:
            counts[c["band"]][0] += int(c["signals"]["verdict"] != "ok")
            counts[c["band"]][1] += 1
        out["shipped"][subset] = {band: f"{w}/{n}" for band, (w, n) in counts.items()}
    for name in names:
        values = sorted({c["signals"][name] for c in cases if c["signals"][name] is not None})
        rows = []
        for threshold in values + [float("inf")]:
            counts = {band: [0, 0] for band in ("bad", "middling", "good")}
            for c in cases:
                value = c["signals"][name]
                counts[c["band"]][1] += 1
                counts[c["band"]][0] += int(value is None or value < threshold)
            rows.append({"threshold": threshold, **{band: f"{w}/{n}" for band, (w, n) in counts.items()}})
        out["signals"][name] = rows
    return out


__all__ = ["analyse", "fmt", "table"]
