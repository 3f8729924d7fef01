"""The quality benchmark's tables (`quality.md`) and plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..common import agg_figure, fmt_stat, table
from .targets import FULL, SELECTION_METRICS, summarize

LABELS = {
    "random": "Random",
    "bm25": "BM25",
    "rds": "RDS (hidden states)",
    "less": "LESS (SFT gradient)",
    "rose": "ROSE, paper scoring (default)",
    "dpo+sft": "ROSE + LESS ranks (dpo+sft)",
    "robust": "ROSE, robust scoring",
    "oracle": "Oracle (ground truth)",
    FULL: "Full pool",
    "base": "Base model (untrained)",
}
GRADIENT_METHODS = ("rose", "less", "dpo+sft", "robust")


def _yes(holds: bool) -> str:
    return "**met**" if holds else "**missed**"


def _cell(stat: dict[str, Any]) -> str:
    text = fmt_stat(stat)
    return f"{text} (min {stat['min']:.3f})" if stat.get("min") is not None and len(stat.get("values", [])) > 1 else text


def targets_section(targets: dict[str, Any]) -> list[str]:
    rows = []
    p = targets.get("precision")
    if p:
        rows.append(["precision at 5% >= 0.9 x oracle; every run >= 0.6 x oracle",
                     f"{p['ratio']:.2f} x oracle (robust {p['robust_mean']:.3f}, oracle {p['oracle_mean']:.3f}, "
                     f"paper {p.get('rose_mean', float('nan')):.3f}, LESS {p.get('less_mean', float('nan')):.3f}); "
                     f"worst run {p['worst_run_ratio']:.2f} x", _yes(p["holds"])])
    h = targets.get("harmful_share")
    if h:
        rows.append(["harmful share <= paper's and <= half of LESS's",
                     f"robust {h['robust']:.3f}, paper {h['rose']:.3f}, LESS {h['less']:.3f}", _yes(h["holds"])])
    f = targets.get("final_model")
    if f:
        parts = [f"{m.replace('_', ' ')}: robust {v['robust']:.3f} vs " + ", ".join(
            f"{LABELS.get(k, k)} {x:.3f}" for k, x in v.items() if k not in ("robust", "holds")
        ) for m, v in f.items() if isinstance(v, dict)]
        rows.append(["final model >= paper, LESS and full pool (preference accuracy and exact match)",
                     "; ".join(parts), _yes(f["holds"])])
    hc = targets.get("health")
    if hc:
        t = hc["robust"]["table"]
        rows.append(["health check warns on every run < 2 x random, on none >= 0.7 x oracle",
                     f"warned on {t['bad']['warned']}/{t['bad']['runs']} bad, {t['middling']['warned']}/"
                     f"{t['middling']['runs']} middling, {t['good']['warned']}/{t['good']['runs']} good runs",
                     _yes(hc["holds"])])
    c = targets.get("feature_cost")
    if c:
        rows.append(["robust's feature time <= 1.05 x paper's", f"{c['robust_over_paper']:.2f} x",
                     _yes(c["holds"])])
    return ["## Targets (issue 11)", "", table(["target", "measured", "verdict"], rows), ""]


def selection_table(summary: dict[str, Any], budget: str) -> str:
    rows = [[LABELS.get(m, m), _cell(v[budget]["precision"]), _cell(v[budget]["harmful_share"]),
             fmt_stat(v[budget]["recall"])] for m, v in summary["selection"].items()]
    return table(["method", "precision", "harmful share", "recall"], rows)


def grouped_table(runs: list[dict[str, Any]], key: str, budget: str) -> str:
    """Precision / harmful share at `budget` of the gradient methods and the oracle, one row per value of `key`."""
    methods = [m for m in (*GRADIENT_METHODS, "oracle") if m in runs[0]["selection"]]
    rows = []
    for value in dict.fromkeys(r[key] for r in runs):
        group = summarize([r for r in runs if r[key] == value])["selection"]
        rows.append([str(value), *(f"{fmt_stat(group[m][budget]['precision'])} / "
                                   f"{fmt_stat(group[m][budget]['harmful_share'])}" for m in methods)])
    return table([key, *(LABELS[m] for m in methods)], rows)


def runs_table(runs: list[dict[str, Any]], budget: str) -> str:
    rows = []
    for r in runs:
        sel = r["selection"]
        cells = [f"{sel[m][budget]['precision']:.2f} / {sel[m][budget]['harmful_share']:.2f}"
                 for m in (*GRADIENT_METHODS, "oracle") if m in sel]
        health = r.get("health", {})
        verdicts = " / ".join(str(health.get(m, {}).get("verdict", "-")) for m in ("robust", "rose"))
        share = health.get("robust", {}).get("signals", {}).get("preferred_share")
        rows.append([r["family"], r["seed"], r["epochs"], *cells, verdicts,
                     "-" if share is None else f"{share:.2f}"])
    methods = [m for m in (*GRADIENT_METHODS, "oracle") if m in runs[0]["selection"]]
    return table(["family", "seed", "warmup epochs", *(LABELS[m] for m in methods), "health robust / paper",
                  "preferred share (robust)"], rows)


def health_section(targets: dict[str, Any]) -> list[str]:
    health = targets.get("health")
    if not health:
        return []
    lines = ["## Health check", "",
             "Verdict `noise` when fewer than half of the 5% most relevant rows pass the preference gate "
             "(`rose_hf.scoring.robust.selection_health`). Bands by precision: bad < 2 x random, good >= 0.7 x oracle.", ""]
    rows = []
    for method in ("robust", "rose"):
        if method in health:
            t = health[method]["table"]
            rows.append([LABELS[method], *(f"{t[b]['warned']} of {t[b]['runs']}" for b in ("bad", "middling", "good"))])
    lines += [table(["selection", "warned on bad runs", "warned on middling runs", "warned on good runs"], rows), ""]
    return lines


def final_table(summary: dict[str, Any]) -> str:
    metrics = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match")
    rows = [[LABELS.get(m, m), *(fmt_stat(v[k]) for k in metrics)] for m, v in summary["final"].items()]
    return table(["model", *(k.replace("_", " ") for k in metrics)], rows)


def lead_table(summary: dict[str, Any], budgets: list[str], final_budget: str) -> str:
    """One row per method: precision and harmful share at every budget, and its final model's figures."""
    final = summary.get("final", {})
    rows = []
    for method in (*summary["selection"], *(m for m in (FULL, "base") if m in final)):
        sel = summary["selection"].get(method)
        cells = [fmt_stat(sel[b]["precision"]) if sel else "-" for b in budgets]
        cells.append(fmt_stat(sel[final_budget]["harmful_share"]) if sel else "-")
        fin = final.get(method)
        cells += [fmt_stat(fin[k]) if fin else "-" for k in ("exact_match", "wrong_match", "preference_accuracy")]
        rows.append([LABELS.get(method, method), *cells])
    header = ["method", *(f"precision {float(b):.0%}" for b in budgets), f"harmful share {float(final_budget):.0%}",
              "final: exact match", "final: wrong-answer match", "final: preference acc."]
    return table(header, rows)


def final_by_family_table(runs: list[dict[str, Any]], metric: str) -> str:
    """Mean `metric` of every final model, one row per family (the seeds it was trained on)."""
    finals = [r for r in runs if "final" in r]
    models = list(dict.fromkeys(m for r in finals for m in r["final"]))
    rows = []
    for family in dict.fromkeys(r["family"] for r in finals):
        group = [r["final"] for r in finals if r["family"] == family]
        rows.append([family, *(fmt_stat({"mean": float(np.mean(v)), "std": None}) if (v := [g[m][metric] for g in group
                     if m in g]) else "-" for m in models)])  # fmt: skip
    return table(["family", *(LABELS.get(m, m) for m in models)], rows)


def oracle_check(runs: list[dict[str, Any]]) -> str:
    """Does the task separate methods at all? The oracle's 5% against the base model and random 5%, exact match."""
    rows = []
    for family in dict.fromkeys(r["family"] for r in runs if "final" in r):
        group = [r["final"] for r in runs if r["family"] == family and "final" in r]
        em = {m: float(np.mean([g[m]["exact_match"] for g in group])) for m in ("base", "random", "oracle")}
        rows.append([family, f"{em['base']:.3f}", f"{em['random']:.3f}", f"{em['oracle']:.3f}",
                     f"{em['oracle'] - em['base']:+.3f}", f"{em['oracle'] - em['random']:+.3f}"])
    return table(["family", "base", "random 5%", "oracle 5%", "oracle - base", "oracle - random"], rows)


def stability_table(runs: list[dict[str, Any]], budget: str) -> str:
    """Agreement of two selections from the same pool at the final `budget`: another warmup seed, another projection
    seed."""
    rows = []
    for r in runs:
        st = r.get("stability")
        if not st:
            continue
        for method in (m for m in GRADIENT_METHODS if m in r["selection"]):
            w = st["warmup_seed"].get(method)
            p = st.get("projection_seed", {}).get(method)
            own = r["selection"][method][budget]
            rows.append([r["family"], LABELS[method],
                         f"{w['overlap']:.2f}" if w else "-", f"{w['spearman']:.2f}" if w else "-",
                         f"{own['precision']:.2f} -> {w['precision']:.2f}" if w else "-",
                         f"{p['overlap']:.2f}" if p else "-", f"{p['spearman']:.2f}" if p else "-"])  # fmt: skip
    return table(["family", "method", "warmup seed: top-5% overlap", "warmup seed: Spearman",
                  "precision, warmup 1 -> warmup 2", "projection seed: top-5% overlap", "projection seed: Spearman"],
                 rows)  # fmt: skip


def cost_table(runs: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """Feature cost in pool passes and in pool-epochs of training (the full pool's measured epoch time)."""
    rows = []
    for family in dict.fromkeys(r["family"] for r in runs):
        group = [r for r in runs if r["family"] == family and "warmup" in r]
        if not group:
            continue
        epoch = [r["training"][FULL]["seconds"] / (config.get("final_epochs") or config["epochs"])
                 for r in group if FULL in r.get("training", {})]  # fmt: skip
        passes = len(group[0]["warmup"]["checkpoint_steps"])
        warmup = config["warmup_fraction"] * group[0]["epochs"]
        for scoring, n in (("paper", passes), ("robust", 1)):
            seconds = float(np.mean([r["warmup"]["feature_seconds"][scoring] for r in group]))
            in_epochs = f"{seconds / np.mean(epoch):.2f}" if epoch else "-"
            rows.append([family, scoring, f"{n} + warmup {warmup:.2f}", f"{seconds:.0f}", in_epochs])
    return table(["family", "scoring", "pool passes (features + warmup, in pool-epochs)", "feature seconds",
                  "feature time / one training epoch over the pool"], rows)  # fmt: skip


def health_bands_table(runs: list[dict[str, Any]], budget: str) -> str:
    """The label-free health verdict against the precision it should reflect (issue 18's bands: bad < 0.5 x the
    oracle, good >= 0.8 x), every gradient selection including the second warmup seed's."""
    from rose_fixtures.evaluation import quality_band

    counts = {band: {"runs": 0, "warned": 0} for band in ("bad", "middling", "good")}
    cases = []
    for r in runs:
        oracle = r["selection"]["oracle"][budget]["precision"]
        for method in ("rose", "robust"):
            health = (r.get("health") or {}).get(method)
            if health:
                cases.append((r["selection"][method][budget]["precision"] / oracle, health["verdict"]))
        st = r.get("stability") or {}
        for method in ("rose", "robust"):
            health = st.get("warmup_seed_health", {}).get(method)
            if health:
                cases.append((st["warmup_seed"][method]["precision"] / oracle, health["verdict"]))
    for ratio, verdict in cases:
        band = quality_band(ratio)
        counts[band]["runs"] += 1
        counts[band]["warned"] += int(verdict != "ok")
    return table(["band (precision / oracle's)", "selections", "warned"],
                 [[band, c["runs"], c["warned"]] for band, c in counts.items()])


def render_real_markdown(results: dict[str, Any]) -> str:
    """`quality.md` of the real-model design (`make bench-real`)."""
    config, runs, summary = results["config"], results["runs"], results["summary"]
    budget = f"{config['final_budget']:g}"
    budgets = [f"{b:g}" for b in config["budgets"]]
    return "\n".join([
        "# Real-model benchmark: SmolLM2-135M-Instruct on real-data task families",
        "",
        f"{len(runs)} runs: families {', '.join(config['families'])} x seeds {list(config['seeds'])} "
        "(`rose_fixtures.real_worlds`; facts from CLDR through babel, and num2words). Pool "
        f"{config['pool_size']} rows per world: {config['target_correct_fraction']:.0%} target task done right "
        f"(helpful), {config['target_wrong_fraction']:.0%} its on-topic but wrong twin (harmful), the rest "
        f"distractor tasks of the same shape; {2 * config['n_per_subtask']} preference pairs in 2 subtasks. Warmup: "
        f"LoRA r={config['lora_r']} on q,k,v,o, {config['warmup_fraction']:.0%} of the pool, "
        f"{config['epochs']} epochs (one checkpoint each), lr {config['learning_rate']:g}, batch "
        f"{config['batch_size']}; features with the `{config['projection']}` projection to "
        f"{config['projection_dim']} dims. Final models: a fresh LoRA on each method's {float(budget):.0%} for "
        f"{config['final_epochs']} epochs; the full pool on seeds {list(config['full_pool_seeds'] or config['seeds'])}. "
        f"Evaluation: greedy exact match on {config['n_test_prompts']} held-out prompts and preference accuracy on "
        f"{config['n_test_pairs']} held-out pairs. Cells are mean ± std over runs. Command: `make bench-real`.",
        "",
        *([f"**Incomplete: {len(results['missing_runs'])} runs had not finished** "
           f"({', '.join(results['missing_runs'])}).", ""] if results.get("missing_runs") else []),
        "## Every method", "", lead_table(summary, budgets, budget), "",
        "## Does the task separate methods? Exact match of the base model, random 5% and the oracle's 5%", "",
        oracle_check(runs), "",
        "## Final models by family: exact match", "", final_by_family_table(runs, "exact_match"), "",
        f"## Selection at {float(budget):.0%} by family (precision / harmful share)", "",
        grouped_table(runs, "family", budget), "",
        "## Stability on the same pool (first seed of each family)", "", stability_table(runs, budget), "",
        "## Feature cost", "", cost_table(runs, config), "",
        "## Health check against the ground truth", "", health_bands_table(runs, budget), "",
        "## Every run (precision / harmful share)", "", runs_table(runs, budget), "",
        "![selection vs budget](plots/selection_vs_budget.png)", "", "![final models](plots/final_models.png)", "",
    ])


def render_markdown(results: dict[str, Any]) -> str:
    if results["config"].get("final_epochs"):  # the real-model design
        return render_real_markdown(results)
    config, runs, summary = results["config"], results["runs"], results["summary"]
    budget = f"{config['final_budget']:g}"
    lines = [
        "# Quality benchmark: which rows does each method select, and how good is the model trained on them?",
        "",
        f"{len(runs)} runs: world families {', '.join(config['families'])} x seeds {list(config['seeds'])} x warmups "
        f"of {list(config['warmup_epochs'])} epochs. Pool {config['pool_size']} rows per world: "
        f"{config['target_correct_fraction']:.0%} target task done right (helpful), "
        f"{config['target_wrong_fraction']:.0%} its on-topic but wrong twin (harmful), the rest distractor tasks; "
        f"{2 * config['n_per_subtask']} preference pairs (chosen = right, rejected = twin). Warmup on "
        f"{config['warmup_fraction']:.0%} of the pool (LoRA r={config['lora_r']}, lr {config['learning_rate']:g}); "
        f"final models on each method's {config['final_budget']:.0%} after the {config['epochs']}-epoch warmup. "
        "Cells are mean ± std over runs (min in brackets). Command: `make bench-quality`.",
        "",
        *([f"**Incomplete: {len(results['missing_runs'])} of the design's runs had not finished** and are not in "
           f"these tables ({', '.join(results['missing_runs'])}); rerun `make bench-quality` to complete them "
           "(finished runs are cached).", ""] if results.get("missing_runs") else []),
        *targets_section(results["targets"]),
        f"## Selection at {float(budget):.0%}, all runs", "", selection_table(summary, budget), "",
        "## By world family (precision / harmful share)", "", grouped_table(runs, "family", budget), "",
        "## By warmup length (precision / harmful share)", "", grouped_table(runs, "epochs", budget), "",
        *health_section(results["targets"]),
    ]
    if "final" in summary:
        lines += [f"## Final models ({summary['num_final_runs']} worlds x seeds, {config['epochs']}-epoch warmup)",
                  "", final_table(summary), "",
                  "*Preference accuracy*: the model gives the right answer a higher summed log-probability than the "
                  "wrong twin on held-out pairs. *Exact match*: greedy generation equals the reference; *wrong "
                  "match*: it equals the twin's answer.", ""]
    lines += ["## Every run (precision / harmful share)", "", runs_table(runs, budget), "",
              "![selection vs budget](plots/selection_vs_budget.png)", ""]
    if "final" in summary:
        lines += ["![final models](plots/final_models.png)", ""]
    return "\n".join(lines)


def plot_selection(summary: dict[str, Any], path: str) -> str:
    """Precision, harmful share and recall against the budget, one line per method (mean ± std over runs)."""
    sel = summary["selection"]
    figure, axes = agg_figure(13, 4.2, ncols=3)
    for ax, metric in zip(axes, SELECTION_METRICS):
        for method, per_budget in sel.items():
            budgets = [100 * float(b) for b in per_budget]
            means = [per_budget[b][metric]["mean"] for b in per_budget]
            stds = [per_budget[b][metric]["std"] for b in per_budget]
            style = dict(linestyle="--", color="black", alpha=0.6) if method == "oracle" else dict(marker="o")
            ax.errorbar(budgets, means, yerr=stds, label=LABELS.get(method, method), capsize=3, **style)
        ax.set_xlabel("budget (% of pool)")
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    figure.suptitle(f"Selection quality over {summary['num_runs']} runs")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    figure.savefig(path, format="png")
    return path


def plot_final(summary: dict[str, Any], path: str) -> str:
    """Grouped bars of the final-model metrics per model (mean ± std over worlds and seeds)."""
    final = summary["final"]
    models = list(final)
    metrics = [m for m in ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match")
               if any((final[x][m]["mean"] or 0) > 0 for x in models)]
    figure, ax = agg_figure(max(8, 1.3 * len(models)), 4.4)
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(models))
    for i, metric in enumerate(metrics):
        means = [final[m][metric]["mean"] or 0.0 for m in models]
        stds = [final[m][metric]["std"] or 0.0 for m in models]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=metric.replace("_", " "))
    ax.set_xticks(x, [LABELS.get(m, m).replace(", ", ",\n").replace(" (", "\n(") for m in models], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Final models ({summary['num_final_runs']} worlds x seeds)")
    ax.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=len(metrics), fontsize=8)
    figure.savefig(path, format="png")
    return path
