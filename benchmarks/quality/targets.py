"""Aggregation over worlds, seeds and warmup lengths, and issue 11's targets, each with its numbers and a verdict.

The targets were fixed before any run of the new world families (issue 11), and are checked here as stated:
- precision at 5%: robust's mean >= 0.9 x the oracle's mean, and no single run below 0.6 x the oracle;
- harmful share: robust's mean <= paper's, and <= half of LESS's;
- final model (after the design's warmup length): robust's >= paper's, LESS's and the full pool's on both preference
  accuracy and exact match (mean over worlds and seeds);
- health check: warns on every run whose precision is below 2 x random, and on none at or above 0.7 x the oracle;
- feature cost: robust's feature time <= 1.05 x paper's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SELECTION_METRICS = ("precision", "harmful_share", "recall")
FINAL_METRICS = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match", "mean_margin")
FULL, BASE = "full_pool", "base"


def stats(values: list[float | None]) -> dict[str, Any]:
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return {"mean": None, "std": None, "min": None, "values": values}
    return {
        "mean": float(np.mean(clean)),
        "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0,
        "min": float(np.min(clean)),
        "values": clean,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread and minimum over runs of every selection metric, and over runs with final models of theirs."""
    methods = list(runs[0]["selection"])
    budgets = list(runs[0]["selection"][methods[0]])
    summary: dict[str, Any] = {
        "num_runs": len(runs),
        "selection": {
            method: {
                budget: {m: stats([r["selection"][method][budget][m] for r in runs]) for m in SELECTION_METRICS}
                for budget in budgets
            }
            for method in methods
        },
    }
    finals = [r for r in runs if "final" in r]
    if finals:
        models = list(finals[0]["final"])
        summary["final"] = {
            # A model trained on some seeds only (the real design's full pool) is averaged over those.
            model: {m: stats([r["final"].get(model, {}).get(m) for r in finals]) for m in FINAL_METRICS}
            for model in models
        }
        summary["num_final_runs"] = len(finals)
    return summary


def health_table(runs: list[dict[str, Any]], method: str, budget: str) -> dict[str, Any]:
    """How often the health check warns ("noise") on bad, middling and good selections of `method`."""
    rows = []
    for r in runs:
        health = (r.get("health") or {}).get(method)
        if health is None:
            continue
        precision = r["selection"][method][budget]["precision"]
        oracle = r["selection"]["oracle"][budget]["precision"]
        chance = r["ground_truth"]["helpful"] / r["ground_truth"]["pool"]
        band = "bad" if precision < 2 * chance else "good" if precision >= 0.7 * oracle else "middling"
        rows.append({"family": r["family"], "seed": r["seed"], "epochs": r["epochs"], "precision": precision,
                     "band": band, "verdict": health["verdict"], "signals": health.get("signals", {})})
    table = {band: {"runs": 0, "warned": 0} for band in ("bad", "middling", "good")}
    for row in rows:
        table[row["band"]]["runs"] += 1
        table[row["band"]]["warned"] += int(row["verdict"] == "noise")
    holds = table["bad"]["warned"] == table["bad"]["runs"] and table["good"]["warned"] == 0
    return {"table": table, "rows": rows, "holds": bool(holds)}


def check_targets(summary: dict[str, Any], runs: list[dict[str, Any]], budget: str) -> dict[str, Any]:
    sel = summary["selection"]
    out: dict[str, Any] = {}
    if "robust" in sel:
        oracle = sel["oracle"][budget]["precision"]["mean"]
        ratios = [r["selection"]["robust"][budget]["precision"] / r["selection"]["oracle"][budget]["precision"]
                  for r in runs]
        robust = sel["robust"][budget]["precision"]["mean"]
        out["precision"] = {
            "robust_mean": robust, "oracle_mean": oracle, "ratio": robust / oracle, "worst_run_ratio": min(ratios),
            "holds": bool(robust >= 0.9 * oracle and min(ratios) >= 0.6),
        }
        for other in ("rose", "less"):
            if other in sel:
                out["precision"][f"{other}_mean"] = sel[other][budget]["precision"]["mean"]
    if {"robust", "rose", "less"} <= set(sel):
        harm = {m: sel[m][budget]["harmful_share"]["mean"] for m in ("robust", "rose", "less")}
        out["harmful_share"] = {**harm, "holds": bool(harm["robust"] <= harm["rose"] and harm["robust"] <= harm["less"] / 2)}
    final = summary.get("final")
    if final and "robust" in final:
        verdict = {}
        for metric in ("preference_accuracy", "exact_match"):
            mine = final["robust"][metric]["mean"]
            others = {m: final[m][metric]["mean"] for m in ("rose", "less", FULL) if m in final}
            verdict[metric] = {"robust": mine, **others, "holds": bool(all(mine >= v for v in others.values()))}
        verdict["holds"] = all(v["holds"] for v in verdict.values())
        out["final_model"] = verdict
    if "robust" in sel:
        out["health"] = {m: health_table(runs, m, budget) for m in ("robust", "rose") if m in sel}
        out["health"]["holds"] = out["health"]["robust"]["holds"]
    costs = [r["warmup"]["feature_seconds"] for r in runs if "warmup" in r]
    if costs:
        ratio = float(np.mean([c["robust"] / c["paper"] for c in costs if c["paper"] > 0]))
        out["feature_cost"] = {"robust_over_paper": ratio, "holds": bool(ratio <= 1.05)}
    return out
