"""The report's figures, built as bare matplotlib `Figure`s (no pyplot): every one has a title, and every legend sits
below the axes so that it never covers a bar or a line.

Builders return the `Figure` without saving it, so tests can inspect titles and legend placement; `save_figure`
writes the PNG and records the title in the PNG's `Title` text chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GREY, RED, BLUE, ORANGE, GREEN = "#9aa7b8", "#d9534f", "#5b8def", "#f0ad4e", "#5cb85c"


def new_figure(width: float = 6.4, height: float = 3.6):
    """A Figure with its own Agg canvas: pyplot's global backend is never touched (a user's notebook or GUI session
    is left alone) and nothing needs a display. Constrained layout makes room for the titles and the legends below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_title(figure) -> str:
    """The visible title of `figure`: its suptitle, else the first axes title ("" when it has none)."""
    suptitle = getattr(figure, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        return suptitle.get_text()
    return next((axes.get_title() for axes in figure.axes if axes.get_title()), "")


def save_figure(figure, path: str) -> str:
    """Write `figure` as a PNG at `path` with its title in the PNG metadata; returns the title."""
    title = figure_title(figure)
    if not title:
        raise ValueError(f"The plot for {path} has no title: give it one (a reader sees the PNG on its own).")
    figure.savefig(path, format="png", metadata={"Title": title})
    return title


def legend_below(figure, axes, max_columns: int = 4) -> None:
    """One legend for `axes`, centred below the plot (outside it, so it covers nothing)."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(max_columns, len(handles)),
            fontsize="small",
            frameon=False,
        )


def score_histogram(valid_scores: np.ndarray, selected_scores: np.ndarray, bins: np.ndarray):
    figure = new_figure(6.4, 3.9)
    axes = figure.add_subplot()
    axes.hist(valid_scores, bins=bins, color=GREY, label=f"all valid rows ({valid_scores.size})")
    if selected_scores.size:
        axes.hist(selected_scores, bins=bins, color=RED, label=f"selected ({selected_scores.size})")
        axes.axvline(float(selected_scores.min()), color="black", linestyle="--", linewidth=1,
                     label=f"lowest selected score ({selected_scores.min():.4f})")  # fmt: skip
    axes.set_title("Scores of the valid pool rows, selection overlaid")
    axes.set_xlabel("score")
    axes.set_ylabel("pool rows")
    legend_below(figure, axes)
    return figure


def source_shares(labels: Sequence[str], selected_shares: Sequence[float], pool_shares: Sequence[float] | None):
    """Horizontal bars per source: its share of the selection and, when the pool is known, of the pool."""
    figure = new_figure(6.4, max(2.8, 0.35 * len(labels) + 1.8))
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    if pool_shares is not None:
        axes.barh(positions - 0.2, pool_shares, height=0.4, color=GREY, label="share of pool")
        axes.barh(positions + 0.2, selected_shares, height=0.4, color=RED, label="share of selection")
        axes.set_title("Share of each source in the pool and in the selection")
    else:
        axes.barh(positions, selected_shares, height=0.6, color=RED)
        axes.set_title("Share of each source in the selection")
    axes.set_yticks(positions, [label[:40] for label in labels])
    axes.invert_yaxis()
    axes.set_xlabel("share")
    legend_below(figure, axes)
    return figure


def subtask_contribution(names: Sequence[str], means: Sequence[float], wins: Sequence[int], aggregation: str):
    figure = new_figure(8.0, max(2.8, 0.35 * len(names) + 1.6))
    left, right = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(names))
    left.barh(positions, means, color=BLUE)
    left.set_xlabel("mean score over valid rows")
    left.set_yticks(positions, [str(name)[:30] for name in names])
    left.invert_yaxis()
    right.barh(positions, wins, color=ORANGE)
    right.set_xlabel("rows for which it is the best subtask")
    figure.suptitle(f"Per-subtask contribution (final score: {aggregation} over subtasks)")
    return figure


def budget_curve(
    budgets_pct: Sequence[float],
    chosen_pct: float | None,
    shares: dict[str, Sequence[float]] | None = None,
    thresholds: Sequence[float] | None = None,
):
    """Each source's share of the selection per budget; without sources, the score threshold per budget."""
    figure = new_figure(6.4, 4.2)
    axes = figure.add_subplot()
    if shares:
        for source, values in shares.items():
            axes.plot(budgets_pct, values, marker="o", label=source[:30])
        axes.set_ylabel("share of selection")
        axes.set_title("Share of each source in the selection, by budget")
    else:
        axes.plot(budgets_pct, thresholds, marker="o")
        axes.set_ylabel("lowest selected score")
        axes.set_title("Lowest selected score, by budget")
    if chosen_pct is not None:
        axes.axvline(chosen_pct, color="black", linestyle="--", linewidth=1, label="this run's budget")
    axes.set_xlabel("budget (% of pool)")
    legend_below(figure, axes)
    return figure


def checkpoint_weights(steps: Sequence[int], weights: Sequence[float]):
    figure = new_figure(5.0, 3.2)
    axes = figure.add_subplot()
    axes.bar([str(step) for step in steps], weights, color=GREEN)
    axes.set_title("Checkpoint weights (mean learning rate, normalised)")
    axes.set_xlabel("checkpoint step")
    axes.set_ylabel("weight")
    return figure


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    colors: dict[str, str] | None = None,
):
    """One group of bars per entry of `groups`, one bar per series; a `None` value draws no bar (not a zero one).

    `colors` maps series names to colours, so that one model keeps its colour across figures."""
    figure = new_figure(7.5, 4.2)
    axes = figure.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        present = [(position, value) for position, value in zip(x, values) if value is not None]
        color = (colors or {}).get(name)
        axes.bar([p + offset for p, _ in present], [v for _, v in present], width, label=name, color=color)
    axes.set_xticks(x, groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    legend_below(figure, axes)
    return figure
