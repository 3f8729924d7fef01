"""What the preference gradient buys, and which ranking earns the default (issue 23, section 2).

Every candidate ranks the same kept feature caches as `benchmarks.quality.frontier` (one 4-epoch warmup per world,
the paper's features at every checkpoint for every pool row), so that a candidate costs seconds. Per world and
objective, the checkpoint-weighted cosine of each pool row to each validation pair, `A[z, v] = sum_c w_c <G_c(z),
g_c(v)>`, is computed once (`pair_cosines`): the paper's score is the max over subtasks of its mean over a subtask's
pairs (checked against the library's `score_pool` in `tests/benchmarks/test_ranking.py`), and every candidate below is
a function of the two matrices `A_dpo` and `A_sft`.

DESIGN — fixed and committed before any candidate was scored, and before the HH worlds' caches were read:
- Worlds: the three format families (`rose_fixtures.real_worlds`: number_format, number_words, dates) and the HH
  family (`rose_fixtures.hh`: 32 dialogue prefixes with the chosen reply, the same prefixes with the rejected reply
  as the harmful twin, 336 chatterbot-corpus rows), pool 400, SmolLM2-135M-Instruct, 5% = 20 rows.
- Development seeds `DEV_SEEDS` (0 and 3) choose; held-out seeds `HELD_OUT_SEEDS` (1 and 2) report the choice
  unchanged. The format families' seeds 1 and 2 were read before for `dpo`, `sft` and `dpo+sft` (issue 24's
  confirmation), never for another ranking; HH has never been scored by any method.
- Point: every checkpoint, with the default's first stage (20% kept, ranks over the kept rows only, as in a cache
  that holds only them); the same candidates without the first stage are reported beside it.
- Figures: precision at 5% over the oracle's, and harmful share at 5%. The final models' reward accuracy on HH is
  not measured: the family's check fails (docs/benchmarks.md), so it cannot rank methods.
- Candidates: `CANDIDATES`. Rule: `choose_ranking`.

Run `python -m benchmarks.quality.ranking` after the frontier's `collect` (the HH worlds: `collect --families hh`).
Writes `ranking.json`, `ranking.md` and `ranking.png` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import fmt, table, write_results

from .frontier_settings import DEFAULT_OUTPUT

DEV_SEEDS = (0, 3)
HELD_OUT_SEEDS = (1, 2)
FAMILIES = ("hh", "number_format", "number_words", "dates")
TODAY = "dpo+sft (mean rank)"
LESS = "sft (LESS)"
PAPER = "dpo (paper)"
# Targets of issue 23, section 2 (the selection's; HH's reward-accuracy target cannot be measured, see DESIGN).
PRECISION_TARGET, FLOOR_TARGET, HARM_RATIO_TARGET = 0.9, 0.6, 0.5


# --- the inputs of every candidate ----------------------------------------------------------------------------------
@dataclass
class Cosines:
    """One world's checkpoint-weighted cosines and which rows may be ranked.

    Attributes:
        dpo, sft: `(N, V)` float64, `A[z, v]` for each validation objective.
        subtasks: `(V,)` subtask of each validation pair.
        rows: `(N,)` rows that take part (valid at every checkpoint, and kept by the first stage when one runs).
    """

    dpo: np.ndarray
    sft: np.ndarray
    subtasks: np.ndarray
    rows: np.ndarray

    def columns(self, pairs: list[int]) -> Cosines:
        """The same rows scored with the validation pairs `pairs` only."""
        return Cosines(self.dpo[:, pairs], self.sft[:, pairs], self.subtasks[pairs], self.rows)

    def restricted(self, kept: np.ndarray | None) -> Cosines:
        if kept is None:
            return self
        rows = np.zeros_like(self.rows)
        rows[kept] = True
        return Cosines(self.dpo, self.sft, self.subtasks, self.rows & rows)


def pair_cosines(checkpoints, objective: str) -> np.ndarray:
    """`(N, V)` checkpoint-weighted cosine of every pool row to every validation pair (`FeatureStore` checkpoints)."""
    from rose_hf.scoring.similarity import checkpoint_weights

    weights = checkpoint_weights([c.meta["learning_rates"] for c in checkpoints])
    out = 0.0
    for weight, checkpoint in zip(weights, checkpoints):
        pool = np.asarray(checkpoint.pool_features(), dtype=np.float64)
        out = out + weight * (pool @ np.asarray(checkpoint.validation_features(objective), dtype=np.float64).T)
    return out


# --- building blocks ---------------------------------------------------------------------------------------------------
def ranks(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Normalised rank in (0, 1] among `rows` (ties share their mean rank); NaN outside `rows`."""
    from rose_hf.scoring.similarity import INVALID_SCORE, rank_average

    masked = np.where(rows, values, INVALID_SCORE)
    out = rank_average([masked]).astype(np.float64)
    return np.where(rows, out, np.nan)


def subtask_score(cosines: np.ndarray, subtasks: np.ndarray) -> np.ndarray:
    """The paper's aggregation: mean over each subtask's pairs, max over subtasks."""
    return subtask_means(cosines, subtasks).max(axis=1)


def subtask_means(cosines: np.ndarray, subtasks: np.ndarray) -> np.ndarray:
    names = list(dict.fromkeys(subtasks.tolist()))
    return np.stack([cosines[:, subtasks == name].mean(axis=1) for name in names], axis=1)


def standardised(cosines: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each validation pair's column z-scored over the ranked rows (BIDS' instance-level normalisation): a pair whose
    cosines are all large no longer outvotes the others."""
    part = cosines[rows]
    return (cosines - part.mean(axis=0)) / np.maximum(part.std(axis=0), 1e-12)


def round_robin(groups: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """RDS+'s selection (arXiv 2503.01807, Algorithm 1): the groups (columns) take turns, each taking its best row
    not taken yet. Returns scores whose order is the order of taking (first taken highest); NaN outside `rows`."""
    order = [np.flatnonzero(rows)[np.argsort(-groups[rows, g], kind="stable")] for g in range(groups.shape[1])]
    taken, sequence, cursor = np.zeros(len(rows), dtype=bool), [], [0] * groups.shape[1]
    while len(sequence) < rows.sum():
        for g, candidates in enumerate(order):
            while cursor[g] < len(candidates) and taken[candidates[cursor[g]]]:
                cursor[g] += 1
            if cursor[g] < len(candidates):
                taken[candidates[cursor[g]]] = True
                sequence.append(candidates[cursor[g]])
    scores = np.full(len(rows), np.nan)
    scores[np.asarray(sequence, dtype=np.int64)] = len(sequence) - np.arange(len(sequence))
    return scores


def per_pair_mean_rank(x: Cosines) -> np.ndarray:
    """`(N, V)`: per validation pair, the mean of the row's rank by its DPO cosine and by its SFT cosine."""
    columns = [(ranks(x.dpo[:, v], x.rows) + ranks(x.sft[:, v], x.rows)) / 2 for v in range(x.dpo.shape[1])]
    return np.stack(columns, axis=1)


def gated(primary: np.ndarray, gate: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows passing `gate` above every other row, each group ordered by `primary`."""
    return np.where(rows, ranks(primary, rows) + gate.astype(np.float64), np.nan)


# --- the candidates (fixed in DESIGN) ----------------------------------------------------------------------------------
def _paper(objective: str) -> Callable[[Cosines], np.ndarray]:
    return lambda x: np.where(x.rows, subtask_score(getattr(x, objective), x.subtasks), np.nan)


def _mean_rank(dpo_weight: float) -> Callable[[Cosines], np.ndarray]:
    def score(x: Cosines) -> np.ndarray:
        dpo, sft = (ranks(subtask_score(a, x.subtasks), x.rows) for a in (x.dpo, x.sft))
        return dpo_weight * dpo + (1 - dpo_weight) * sft

    return score


def _min_rank(x: Cosines) -> np.ndarray:
    dpo, sft = (ranks(subtask_score(a, x.subtasks), x.rows) for a in (x.dpo, x.sft))
    return np.minimum(dpo, sft) + 1e-6 * (dpo + sft)  # ties broken by the mean rank


def _sft_gated(rule: str) -> Callable[[Cosines], np.ndarray]:
    def score(x: Cosines) -> np.ndarray:
        dpo, sft = subtask_score(x.dpo, x.subtasks), subtask_score(x.sft, x.subtasks)
        gate = ranks(dpo, x.rows) > 0.5 if rule == "top half" else dpo > 0
        return gated(sft, gate, x.rows)

    return score


def _round_robin_pairs(objective: str) -> Callable[[Cosines], np.ndarray]:
    def score(x: Cosines) -> np.ndarray:
        groups = per_pair_mean_rank(x) if objective == "dpo+sft" else getattr(x, objective)
        return round_robin(np.nan_to_num(groups, nan=-np.inf), x.rows)

    return score


def _round_robin_subtasks(x: Cosines) -> np.ndarray:
    dpo, sft = subtask_means(x.dpo, x.subtasks), subtask_means(x.sft, x.subtasks)
    groups = np.stack([(ranks(dpo[:, s], x.rows) + ranks(sft[:, s], x.rows)) / 2 for s in range(dpo.shape[1])], axis=1)
    return round_robin(np.nan_to_num(groups, nan=-np.inf), x.rows)


def _standardised(objective: str) -> Callable[[Cosines], np.ndarray]:
    def score(x: Cosines) -> np.ndarray:
        parts = {o: subtask_score(standardised(getattr(x, o), x.rows), x.subtasks) for o in ("dpo", "sft")}
        if objective != "dpo+sft":
            return np.where(x.rows, parts[objective], np.nan)
        return (ranks(parts["dpo"], x.rows) + ranks(parts["sft"], x.rows)) / 2

    return score


CANDIDATES: dict[str, Callable[[Cosines], np.ndarray]] = {
    PAPER: _paper("dpo"),
    LESS: _paper("sft"),
    TODAY: _mean_rank(0.5),
    "dpo+sft, DPO weight 0.25": _mean_rank(0.25),
    "dpo+sft, DPO weight 0.75": _mean_rank(0.75),
    "dpo+sft (min rank)": _min_rank,
    "sft gated by dpo (top half)": _sft_gated("top half"),
    "sft gated by dpo (> 0)": _sft_gated("positive"),
    "round robin over pairs, dpo": _round_robin_pairs("dpo"),
    "round robin over pairs, sft": _round_robin_pairs("sft"),
    "round robin over pairs, dpo+sft": _round_robin_pairs("dpo+sft"),
    "round robin over subtasks, dpo+sft": _round_robin_subtasks,
    "standardised pairs (BIDS), dpo": _standardised("dpo"),
    "standardised pairs (BIDS), sft": _standardised("sft"),
    "standardised pairs (BIDS), dpo+sft": _standardised("dpo+sft"),
}


# --- one world ------------------------------------------------------------------------------------------------------
def as_scores(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A candidate's output as the library's scores: `INVALID_SCORE` outside `rows` (never selected)."""
    from rose_hf.scoring.similarity import INVALID_SCORE

    return np.where(rows & np.isfinite(values), values, INVALID_SCORE).astype(np.float32)


def world_figures(world, x: Cosines) -> dict[str, dict[str, float]]:
    """Every candidate's figures in one world (`frontier_analysis.World.figures`)."""
    return {name: world.figures(as_scores(candidate(x), x.rows)) for name, candidate in CANDIDATES.items()}


# The rankings a user can ask the library for, whose health verdict is re-read here.
LIBRARY_RANKINGS = (PAPER, LESS, TODAY)


def health(world, x: Cosines) -> dict[str, dict[str, Any]]:
    """The library's label-free verdict (`rose_hf.scoring.health.selection_health`) on each of `LIBRARY_RANKINGS`'
    selections, from the inputs the library gives it: the ranking from each half of the pairs, the DPO and SFT sides
    apart, relevance and preference at the last checkpoint (over the ranked rows only)."""
    from rose_fixtures.evaluation import quality_band
    from rose_hf import select_top
    from rose_hf.scoring.health import pair_halves, selection_health
    from rose_hf.scoring.robust import relevance_and_preference

    last = world.checkpoints[-1]
    relevance, preference = relevance_and_preference(last.pool_features(), last.validation_features("sft"),
                                                     last.validation_features("dpo"), x.rows, last.pool_scales())  # fmt: skip
    halves = pair_halves(list(x.subtasks))
    sides = tuple(as_scores(CANDIDATES[name](x), x.rows) for name in (PAPER, LESS))
    out = {}
    for name in LIBRARY_RANKINGS:
        scores = as_scores(CANDIDATES[name](x), x.rows)
        half_scores = tuple(as_scores(CANDIDATES[name](x.columns(h)), x.rows) for h in halves)
        verdict = selection_health(relevance, preference, select_top(scores, size=world.k), world.k, half_scores, sides)
        precision = world.figures(scores)["relative_precision"]
        out[name] = {"verdict": verdict["verdict"], "objective_agreement": verdict["signals"]["objective_agreement"],
                     "relative_precision": precision, "band": quality_band(precision)}  # fmt: skip
    return out


def analyse_world(world) -> dict[str, Any]:
    from rose_hf import RoseConfig

    cosines = Cosines(pair_cosines(world.checkpoints, "dpo"), pair_cosines(world.checkpoints, "sft"),
                      np.asarray(world.subtasks), world.valid.copy())  # fmt: skip
    result, _ = world.prefilter(RoseConfig().prefilter_fraction)  # the library default's first stage
    kept = np.asarray(result.kept, dtype=np.int64)
    points = {"first_stage": cosines.restricted(kept), "every_row": cosines}
    return {"family": world.family, "seed": world.seed, "k": world.k,
            "first_stage_recall": float(world.helpful[kept].sum() / world.helpful.sum()),
            **{point: world_figures(world, x) for point, x in points.items()},
            "health": {point: health(world, x) for point, x in points.items()}}  # fmt: skip


# --- the rule -------------------------------------------------------------------------------------------------------
def targets(worlds: list[dict[str, Any]], point: str, name: str) -> dict[str, Any]:
    """Issue 23's selection targets for candidate `name` over `worlds` at `point` ("first_stage" or "every_row")."""

    def figures(key: str, who: str, family: str | None = None) -> list[float]:
        return [w[point][who][key] for w in worlds if family is None or w["family"] == family]

    precision, harm = figures("relative_precision", name), figures("harmful_share", name)
    less_harm = float(np.mean(figures("harmful_share", LESS)))
    families = sorted({w["family"] for w in worlds})
    per_family = {f: (float(np.mean(figures("relative_precision", name, f))),
                      float(np.mean(figures("relative_precision", LESS, f)))) for f in families}  # fmt: skip
    met = {
        f"mean precision >= {PRECISION_TARGET} x oracle's": float(np.mean(precision)) >= PRECISION_TARGET,
        f"no world below {FLOOR_TARGET} x oracle's": min(precision) >= FLOOR_TARGET,
        "at least LESS's precision on every family": all(mine >= less - 1e-9 for mine, less in per_family.values()),
        f"harmful share <= {HARM_RATIO_TARGET} x LESS's": float(np.mean(harm)) <= HARM_RATIO_TARGET * less_harm + 1e-9,
    }
    return {"relative_precision": float(np.mean(precision)), "min_relative_precision": min(precision),
            "harmful_share": float(np.mean(harm)), "less_harmful_share": less_harm, "per_family": per_family,
            "met": met, "num_met": sum(met.values())}  # fmt: skip


def choose_ranking(dev: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule, fixed before any candidate was scored: on the development worlds at the default's point (first stage
    20%, every checkpoint), candidates are ordered by the number of issue 23's selection targets they meet, then by
    mean precision over the oracle's, then by lower mean harmful share. The first becomes the default only when it
    is ordered above today's `dpo+sft` mean rank; otherwise the default stays."""
    summary = {name: targets(dev, "first_stage", name) for name in CANDIDATES}
    order = sorted(summary, key=lambda n: (-summary[n]["num_met"], -summary[n]["relative_precision"],
                                           summary[n]["harmful_share"]))  # fmt: skip
    best = order[0]
    return {"order": order, "best": best, "replaces_today": best != TODAY and order.index(best) < order.index(TODAY),
            "summary": summary}  # fmt: skip


# --- report ---------------------------------------------------------------------------------------------------------
def _table(worlds: list[dict[str, Any]], point: str, marks: dict[str, str]) -> str:
    families = sorted({w["family"] for w in worlds})
    head = ["ranking", "targets met", "precision / oracle's", "lowest world", "harmful share"]
    head += [f"{f}: precision / harm" for f in families]
    rows = []
    for name in CANDIDATES:
        t = targets(worlds, point, name)
        cells = [name + marks.get(name, ""), f"{t['num_met']} / 4", fmt(t["relative_precision"]),
                 fmt(t["min_relative_precision"]), fmt(t["harmful_share"])]  # fmt: skip
        for f in families:
            mine = [w[point][name] for w in worlds if w["family"] == f]
            cells.append(f"{fmt(np.mean([m['relative_precision'] for m in mine]))} / "
                         f"{fmt(np.mean([m['harmful_share'] for m in mine]))}")  # fmt: skip
        rows.append(cells)
    return table(head, rows)


def render(results: dict[str, Any]) -> str:
    choice = results["choice"]
    marks = {TODAY: " (the default before this study)", choice["best"]: " (first on development)"}
    lines = ["# Which ranking: every candidate on the kept caches (SmolLM2-135M-Instruct, pool 400, 5% = 20 rows)", "",
             __doc__.split("DESIGN")[1].split("Run `")[0].strip(" -\n"), ""]  # fmt: skip
    for split, worlds in (("development", results["dev"]), ("held-out", results["held_out"])):
        if not worlds:
            continue
        for point, label in (("first_stage", "with the default's first stage (20%)"), ("every_row", "every row ranked")):
            lines += [f"## {split.capitalize()} worlds ({len(worlds)}), {label}", "", _table(worlds, point, marks), ""]
    lines += ["## First-stage recall of the target rows at 20%", "",
              table(["family", "seed", "recall"], [[w["family"], w["seed"], fmt(w["first_stage_recall"])]
                                                   for w in results["worlds"]]), ""]  # fmt: skip
    lines += ["## The health verdict against the selection's quality", "",
              "Each world's `dpo`, `sft` and `dpo+sft` selections at both points, judged by the library's label-free "
              "verdict (`rose_hf.scoring.health`); quality bands as `make bench-trust`'s (bad: precision below 0.5 x "
              "the oracle's, good: at least 0.8 x).", "", health_table(results["worlds"]), ""]  # fmt: skip
    verdict = "it replaces" if choice["replaces_today"] else "it does not replace"
    lines += ["## Choice", "", f"First on development by `choose_ranking`: **{choice['best']}**; {verdict} the "
              f"default before this study ({TODAY}).", ""]  # fmt: skip
    return "\n".join(lines)


def health_table(worlds: list[dict[str, Any]]) -> str:
    """Warnings (verdict not "ok") over selections, per quality band, for HH and for the format families."""
    rows = []
    for label, chosen in (("HH", [w for w in worlds if w["family"] == "hh"]),
                          ("format families", [w for w in worlds if w["family"] != "hh"])):  # fmt: skip
        cases = [case for w in chosen for point in w["health"].values() for case in point.values()]
        if not cases:
            continue
        cells = [label, str(len(cases))]
        for band in ("bad", "middling", "good"):
            in_band = [c for c in cases if c["band"] == band]
            cells.append(f"{sum(c['verdict'] != 'ok' for c in in_band)} of {len(in_band)}")
        cells.append(fmt(float(np.mean([c["objective_agreement"] for c in cases]))))
        rows.append(cells)
    return table(["worlds", "selections", "warned: bad", "warned: middling", "warned: good",
                  "mean objective agreement"], rows)  # fmt: skip


def plot(results: dict[str, Any], output_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in FAMILIES if any(w["family"] == f for w in results["worlds"])]
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4.5), squeeze=False)
    for ax, family in zip(axes[0], families):
        worlds = [w for w in results["worlds"] if w["family"] == family]
        for i, name in enumerate(CANDIDATES):
            x = np.mean([w["first_stage"][name]["harmful_share"] for w in worlds])
            y = np.mean([w["first_stage"][name]["relative_precision"] for w in worlds])
            ax.scatter(x, y, marker="os^vD*"[i % 6], label=name)
        ax.set_xlabel("harmful share at 5%")
        ax.set_ylabel("precision / oracle's")
        ax.set_title(f"{family} ({len(worlds)} seeds, first stage 20%)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = os.path.join(output_dir, "ranking.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyse(families: tuple[str, ...], seeds: tuple[int, ...], output_dir: str) -> dict[str, Any]:
    from .frontier_analysis import collected_worlds

    worlds = [analyse_world(world) for world in collected_worlds(families, seeds, output_dir)]
    dev = [w for w in worlds if w["seed"] in DEV_SEEDS]
    results = {"worlds": worlds, "dev": dev, "held_out": [w for w in worlds if w["seed"] in HELD_OUT_SEEDS],
               "choice": choose_ranking(dev or worlds)}  # fmt: skip
    results["plot"] = plot(results, output_dir)
    write_results(output_dir, "ranking", results, render(results))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.ranking", description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[*DEV_SEEDS, *HELD_OUT_SEEDS])
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT, help="The frontier's output directory (its caches).")
    args = parser.parse_args(argv)
    from rose_fixtures.recipe import quiet_libraries

    quiet_libraries()
    analyse(tuple(args.families), tuple(args.seeds), args.output_dir)


if __name__ == "__main__":
    main()
