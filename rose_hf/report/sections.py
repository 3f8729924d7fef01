"""The report's sections after the summary: score histogram, selection by source, per-subtask contribution, budget
curve, checkpoint weights and top examples. Each takes the `ReportContext` and returns markdown lines."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..scoring.budget import DEFAULT_BUDGET_FRACTIONS, budget_curve
from ..scoring.methods import scoring_method
from . import plots
from .context import ReportContext
from .markdown import MAX_CELL_CHARS, escape_cell, message_text, pct, table
from .summary import scoring_of

TEXT_COLUMNS = ("prompt", "completion", "text", "messages")
NUM_TOP_EXAMPLES = 10
# Tables and plots with hundreds of sources are unreadable; the long tail is folded into one "(other)" row.
MAX_SOURCES = 20
MAX_BUDGET_SOURCES = 8
OTHER = "(other)"


def score_histogram(ctx: ReportContext) -> list[str]:
    lines = [
        "## Score distribution",
        "",
        "Histogram of the scores of all valid pool rows, with the selected rows overlaid. The selection is the "
        "right tail; the dashed line is the lowest selected score. A selected tail that stands apart from the "
        "bulk means a clear signal; a threshold inside the bulk means the ranking near the cut is close to noise."
        + (
            " The demoted rows (those that do not move the preference the right way) form a group of their own, "
            "far to the left."
            if scoring_method(scoring_of(ctx)[0]).demotes_rows(scoring_of(ctx)[1])
            else ""
        ),
        "",
    ]
    valid_scores = ctx.scores[ctx.valid]
    if valid_scores.size == 0:
        return lines + ["No pool row has a usable gradient, so there is nothing to plot."]
    selected_scores = ctx.scores[ctx.selected] if ctx.selected.size else np.empty(0, dtype=np.float32)
    bins = np.histogram_bin_edges(valid_scores, bins=min(60, max(10, int(math.sqrt(valid_scores.size)))))
    figure = plots.score_histogram(valid_scores, selected_scores, bins)
    lines.append(ctx.image(figure, "scores.png", "Score histogram"))
    if selected_scores.size:
        lines += ["", f"Lowest selected score: {selected_scores.min():.4f}."]
    return lines


def sources(ctx: ReportContext) -> list[str]:
    column = ctx.config.source_column
    lines = ["## Selection by data source", ""]
    if ctx.selected_sources is None:
        if not column:
            reason = "no `source_column` is configured"
        elif ctx.pool is None and ctx.selected_rows is None:
            reason = "neither the pool nor the selected rows are available"
        else:
            reason = f"the pool has no `{column}` column"
        return lines + [f"Skipped: {reason}."]
    num_selected = len(ctx.selected_sources)
    selected_counts = Counter(ctx.selected_sources)
    if ctx.pool_sources is not None:
        lines += [
            f"Where the selection comes from, by the pool's `{column}` column. *Share of selection* is the "
            "source's part of the selected subset; *selection rate* is the fraction of the source's pool rows "
            "that were selected. A rate well above the overall rate "
            f"({pct(num_selected, ctx.num_pool)}) means the target task's gradients favour that source.",
            "",
        ]
        pool_counts = ctx.pool_sources.counts()
        names = sorted(pool_counts, key=lambda s: (-selected_counts.get(s, 0), -pool_counts[s], s))
    else:
        lines += [
            f"Where the selection comes from, by the `{column}` column of the selected rows. The full pool was not "
            "given, so pool counts and selection rates are unavailable (pass the pool to "
            "`report_from_output_dir` to get them).",
            "",
        ]
        pool_counts = None
        names = sorted(selected_counts, key=lambda s: (-selected_counts[s], s))
    shown, folded = names[:MAX_SOURCES], names[MAX_SOURCES:]
    rows, labels, pool_shares, selected_shares = [], [], [], []

    def add(label: str, in_pool: int | None, chosen: int) -> None:
        row = [escape_cell(label, 80)]
        if pool_counts is not None:
            row += [in_pool, pct(in_pool, ctx.num_pool)]
        row += [chosen, pct(chosen, num_selected)]
        if pool_counts is not None:
            row.append(pct(chosen, in_pool))
        rows.append(row)
        labels.append(label)
        pool_shares.append(in_pool / ctx.num_pool if pool_counts is not None and ctx.num_pool else 0.0)
        selected_shares.append(chosen / num_selected if num_selected else 0.0)

    for name in shown:
        add(name, pool_counts[name] if pool_counts is not None else None, selected_counts.get(name, 0))
    if folded:
        add(
            f"{OTHER} ({len(folded)} sources)",
            sum(pool_counts[n] for n in folded) if pool_counts is not None else None,
            sum(selected_counts.get(n, 0) for n in folded),
        )
    header = ["Source"]
    if pool_counts is not None:
        header += ["Pool rows", "Share of pool"]
    header += ["Selected", "Share of selection"]
    if pool_counts is not None:
        header.append("Selection rate")
    lines += table(header, rows)
    figure = plots.source_shares(labels, selected_shares, pool_shares if pool_counts is not None else None)
    lines += ["", ctx.image(figure, "sources.png", "Share per source")]
    return lines


def subtasks(ctx: ReportContext) -> list[str]:
    means = ctx.info.get("per_subtask_mean") or {}
    wins = ctx.info.get("argmax_subtask_counts") or {}
    names = list(ctx.info.get("subtasks") or list(dict.fromkeys([*means, *wins])))
    aggregation = ctx.info.get("aggregation", ctx.config.subtask_aggregation)
    scoring, objective = scoring_of(ctx)
    lines = ["## Per-subtask contribution", "", scoring_method(scoring).describe_subtasks(objective, aggregation), ""]
    if not names:
        return lines + ["No per-subtask information was recorded for this run."]
    total_wins = sum(int(wins.get(name, 0)) for name in names)
    rows = []
    for name in names:
        mean = means.get(name)
        count = int(wins.get(name, 0))
        shown_mean = "n/a" if mean is None or not math.isfinite(mean) else f"{mean:.4f}"
        rows.append([escape_cell(name, 80), shown_mean, count, pct(count, total_wins)])
    lines += table(["Subtask", "Mean score", "Best subtask for (rows)", "Share of rows"], rows)
    figure = plots.subtask_contribution(
        names, [float(means.get(n, float("nan"))) for n in names], [int(wins.get(n, 0)) for n in names], aggregation
    )
    lines += ["", ctx.image(figure, "subtasks.png", "Per-subtask contribution")]
    return lines


def budgets(ctx: ReportContext) -> list[str]:
    lines = [
        "## Budget curve",
        "",
        "How the selection changes with the budget, from 1% to 20% of the pool (the ranking is fixed, so each "
        "budget's selection contains every smaller one). *Lowest score* is the threshold at that budget; "
        "*overlap with chosen* is how many rows it shares with the selection this run made. When a source's "
        "share falls quickly as the budget grows, the extra rows come from elsewhere and a larger budget dilutes "
        "the target signal.",
        "",
    ]
    if not ctx.valid.any():
        return lines + ["No pool row has a usable gradient, so there is no ranking."]
    curve = budget_curve(ctx.scores, DEFAULT_BUDGET_FRACTIONS, valid=ctx.valid)
    chosen = ctx.selected
    entries: list[tuple[str, float, np.ndarray, bool]] = []
    for fraction, indices in curve.items():
        entries.append((pct(fraction, 1.0, 0), fraction, indices, len(indices) == len(chosen)))
    if not any(is_chosen for *_, is_chosen in entries):
        fraction = len(chosen) / ctx.num_pool
        entries.append((pct(fraction, 1.0, 2), fraction, chosen, True))
        entries.sort(key=lambda entry: entry[1])
    chosen_set = set(chosen.tolist())
    names: list[str] = []
    if ctx.pool_sources is not None:
        # The budget table shows only the biggest sources: one column each, everything else in "(other)".
        counts = ctx.pool_sources.counts()
        names = sorted(counts, key=lambda s: (-counts[s], s))[:MAX_BUDGET_SOURCES]
        if len(counts) > len(names):
            names.append(OTHER)
        top = set(names)
    header = ["Budget", "Selected", "Lowest score", "Overlap with chosen"] + [escape_cell(s, 40) for s in names]
    rows, shares = [], {name: [] for name in names}
    for label, _, indices, is_chosen in entries:
        overlap = len(chosen_set.intersection(indices.tolist()))
        row = [
            label + (" (chosen)" if is_chosen else ""),
            len(indices),
            f"{ctx.scores[indices].min():.4f}" if len(indices) else "n/a",
            f"{overlap} ({pct(overlap, len(indices))})",
        ]
        if names:
            picked = Counter()
            for name, count in ctx.pool_sources.counts(indices).items():
                picked[name if name in top else OTHER] += count
            for name in names:
                share = picked.get(name, 0) / len(indices) if len(indices) else 0.0
                shares[name].append(share)
                row.append(pct(share, 1.0))
        rows.append(row)
    lines += table(header, rows)
    if names:
        lines += ["", "The source columns give each source's share of the selection at that budget."]
    elif ctx.config.source_column:
        lines += ["", "Source shares per budget need the full pool's source column, which is not available here."]
    chosen_pct = next((100 * fraction for _, fraction, _, is_chosen in entries if is_chosen), None)
    thresholds = [float(ctx.scores[idx].min()) if len(idx) else np.nan for _, _, idx, _ in entries]
    figure = plots.budget_curve([100 * e[1] for e in entries], chosen_pct, shares or None, thresholds)
    lines += ["", ctx.image(figure, "budget.png", "Budget curve")]
    return lines


def checkpoint_weights(ctx: ReportContext) -> list[str]:
    lines = [
        "## Checkpoint weights",
        "",
        "Each warmup checkpoint's similarity counts in proportion to the mean learning rate of the optimizer steps "
        "that led to it (renormalised to sum to 1), read from the trainer rather than typed by hand. With a "
        "decaying schedule the early checkpoints weigh more.",
        "",
    ]
    if not ctx.checkpoints:
        return lines + ["No checkpoint was recorded."]
    rows = [
        [
            row["step"],
            row["num_rates"] or "n/a",
            "n/a" if row["mean_lr"] is None else f"{row['mean_lr']:.3g}",
            f"{row['weight']:.4f}",
        ]
        for row in ctx.checkpoints
    ]
    lines += table(["Step", "Optimizer steps", "Mean learning rate", "Weight"], rows)
    figure = plots.checkpoint_weights(
        [row["step"] for row in ctx.checkpoints], [row["weight"] for row in ctx.checkpoints]
    )
    lines += ["", ctx.image(figure, "checkpoints.png", "Checkpoint weights")]
    return lines


def top_examples(ctx: ReportContext) -> list[str]:
    lines = [
        "## Top selected examples",
        "",
        f"The {NUM_TOP_EXAMPLES} highest-scoring selected rows, text cut to {MAX_CELL_CHARS} characters. If these "
        "do not look like the target task, check the validation pairs and the warmup before trusting the rest.",
        "",
    ]
    if ctx.selected_rows is None:
        return lines + ["Skipped: neither the pool nor `selected/` is available."]
    if not len(ctx.selected):
        return lines + ["Nothing was selected."]
    count = min(NUM_TOP_EXAMPLES, len(ctx.selected))
    rows_data = ctx.selected_rows.select(range(count))
    text_columns = [c for c in TEXT_COLUMNS if c in rows_data.column_names]
    source = ctx.config.source_column if ctx.config.source_column in rows_data.column_names else None
    header = ["Rank", "Pool row", "Score"] + ([escape_cell(source)] if source else []) + text_columns
    rows = []
    for rank, example in enumerate(rows_data):
        index = int(ctx.selected[rank])
        row = [rank + 1, index, f"{ctx.scores[index]:.4f}"]
        if source:
            row.append(escape_cell(example[source], 80))
        for column in text_columns:
            value = example[column]
            row.append(escape_cell(message_text(value) if column == "messages" else value))
        rows.append(row)
    if not text_columns:
        lines += ["The rows have none of the columns " + ", ".join(f"`{c}`" for c in TEXT_COLUMNS) + ".", ""]
    return lines + table(header, rows)
