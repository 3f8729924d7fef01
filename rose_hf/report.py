"""A human-readable report of one selection run: `<output_dir>/report.md` plus PNG plots in `<output_dir>/report/`.

The report answers the questions a user (and the paper's reviewers) ask of a selection: what was selected, from which
data sources, which validation subtasks drove it, how the selection changes with the budget (1-20%), how the
checkpoints were weighted, and what each stage cost in time and disk.

Example:
```python
>>> from rose_hf.report import report_from_output_dir
>>> path = report_from_output_dir("rose_output")  # rebuild the report of a finished run  # doctest: +SKIP
```
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from accelerate.logging import get_logger
from accelerate.state import PartialState
from datasets import Dataset

from .rose_config import RoseConfig
from .scoring import DEFAULT_BUDGET_FRACTIONS, INVALID_SCORE, budget_curve
from .selection import SelectionResult, load_selection
from .store import FeatureStore, disk_errors, read_json

logger = get_logger(__name__)

REPORT_FILE = "report.md"
PLOT_DIR = "report"
PLOT_FILES = ("scores.png", "sources.png", "subtasks.png", "budget.png", "checkpoints.png")
TEXT_COLUMNS = ("prompt", "completion", "text", "messages")
MAX_CELL_CHARS = 200
NUM_TOP_EXAMPLES = 10
# Tables and plots with hundreds of sources are unreadable; the long tail is folded into one "(other)" row.
MAX_SOURCES = 20
MAX_BUDGET_SOURCES = 8
OTHER = "(other)"


def _log_info(message: str) -> None:
    # accelerate's logger raises before any Accelerator/PartialState exists, and `rose-hf report` runs standalone.
    if PartialState._shared_state:
        logger.info(message, main_process_only=True)
    else:
        logger.logger.info(message)


# --- formatting ------------------------------------------------------------------------------------------------------
def escape_cell(value: Any, max_chars: int | None = MAX_CELL_CHARS) -> str:
    """Make any value safe inside one markdown table cell.

    Truncation happens before escaping so an escape sequence is never cut in half. Newlines become `<br>`, and
    markdown/HTML punctuation is backslash-escaped so pool text cannot break the table or inject markup.

    Args:
        value: the cell content (stringified with `str`).
        max_chars: keep at most this many characters of the original text (an ellipsis marks the cut); None keeps all.

    Example:
    ```python
    >>> escape_cell("a|b\\nc")
    'a\\\\|b<br>c'
    ```
    """
    text = "" if value is None else str(value)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + "…"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    escaped = "".join("\\" + ch if ch in "\\`*_[]<>|~" else ch for ch in text)
    return escaped.replace("\n", "<br>")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _pct(numerator: float, denominator: float, digits: int = 1) -> str:
    return f"{100.0 * numerator / denominator:.{digits}f}%" if denominator else "n/a"


def _bytes(num: float | None) -> str:
    if num is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num) < 1024 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TB"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.2f} h"


def _dir_bytes(path: str) -> int | None:
    if os.path.isfile(path):
        return os.path.getsize(path)
    if not os.path.isdir(path):
        return None
    return sum(os.path.getsize(os.path.join(base, name)) for base, _, files in os.walk(path) for name in files)


def _message_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return str(messages)
    parts = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content", "")
            if isinstance(content, list):  # multimodal content: keep the text parts
                content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
            parts.append(f"{message.get('role', '?')}: {content}")
        else:
            parts.append(str(message))
    return "\n".join(parts)


# --- plotting --------------------------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 3.6):
    # A bare Figure with its own Agg canvas: never touches pyplot's global backend, so a user's notebook or GUI
    # session is left alone and nothing needs a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, plot_dir: str, name: str) -> str:
    path = os.path.join(plot_dir, name)
    with disk_errors(path):
        figure.savefig(path, format="png")
    return f"{PLOT_DIR}/{name}"


# --- the report ------------------------------------------------------------------------------------------------------
class _Report:
    """Everything the sections need, computed once."""

    def __init__(
        self,
        output_dir: str,
        pool: Dataset | None,
        selected_rows: Dataset | None,
        result: SelectionResult,
        config: RoseConfig,
        store: FeatureStore | None,
    ):
        self.output_dir = output_dir
        self.plot_dir = os.path.join(output_dir, PLOT_DIR)
        self.pool = pool
        self.result = result
        self.config = config
        self.info = result.info or {}
        self.scores = np.asarray(result.scores, dtype=np.float32)
        self.num_pool = int(self.scores.shape[0])
        if pool is not None and len(pool) != self.num_pool:
            raise ValueError(
                f"The pool has {len(pool)} rows but the selection scored {self.num_pool}: pass the pool the selection "
                "was computed for (or no pool)."
            )
        # The same rule as `select_top`: rows marked invalid while scoring hold INVALID_SCORE even when `valid` is True.
        self.valid = np.asarray(result.valid, dtype=bool) & np.isfinite(self.scores) & (self.scores != INVALID_SCORE)
        self.selected = np.asarray(result.selected_indices, dtype=np.int64)
        if selected_rows is None and pool is not None:
            selected_rows = pool.select(self.selected.tolist())
        if selected_rows is not None and len(selected_rows) != len(self.selected):
            raise ValueError(
                f"`selected/` holds {len(selected_rows)} rows but `selected_indices.json` lists {len(self.selected)}: "
                "the run folder is inconsistent; rerun the selection."
            )
        self.selected_rows = selected_rows
        column = config.source_column
        self.pool_sources: list[str] | None = None
        self.selected_sources: list[str] | None = None
        if column and pool is not None and column in pool.column_names:
            self.pool_sources = [str(s) for s in pool[column]]
            self.selected_sources = [self.pool_sources[i] for i in self.selected]
        elif column and selected_rows is not None and column in selected_rows.column_names:
            self.selected_sources = [str(s) for s in selected_rows[column]]
        self.checkpoints = self._checkpoint_rows(store)
        self.images: list[str] = []

    def _checkpoint_rows(self, store: FeatureStore | None) -> list[dict[str, Any]]:
        metas: dict[int, dict[str, Any]] = {}
        if store is not None:
            metas = {c.step: c.meta for c in store.completed_checkpoints() if c.step in set(self.result.steps)}
        rows = []
        for step, weight in zip(self.result.steps, np.asarray(self.result.weights, dtype=np.float64)):
            meta = metas.get(int(step), {})
            rates = meta.get("learning_rates") or []
            rows.append(
                {
                    "step": int(step),
                    "weight": float(weight),
                    "num_rates": len(rates),
                    "mean_lr": float(np.mean(rates)) if rates else None,
                    "meta": meta,
                }
            )
        return rows

    def image(self, figure, name: str, alt: str) -> str:
        path = _save(figure, self.plot_dir, name)
        self.images.append(path)
        return f"![{alt}]({path})"

    # --- 1. summary ------------------------------------------------------------------------------------------------
    def summary(self) -> list[str]:
        config, info = self.config, self.info
        num_selected = len(self.selected)
        num_invalid = int(info.get("num_invalid", self.num_pool - int(self.valid.sum())))
        tokenization = info.get("tokenization") or {}
        if config.selection_size is not None:
            budget = f"selection_size={config.selection_size}"
        else:
            budget = f"selection_fraction={config.selection_fraction:g}"
        invalid_detail = []
        if "pool_without_completion" in tokenization:
            invalid_detail.append(f"{tokenization['pool_without_completion']} with no completion token left")
        if info.get("num_nonfinite_rows"):
            invalid_detail.append(f"{info['num_nonfinite_rows']} with non-finite features")
        dims = sorted({row["meta"]["dim"] for row in self.checkpoints if "dim" in row["meta"]})
        projection = f"{config.projection}, {config.projection_dim} dims (seed {config.projection_seed})"
        if dims and dims != [config.projection_dim]:
            # When the LoRA has fewer parameters than projection_dim, exact gradients are stored instead.
            projection += f"; stored feature dim {', '.join(map(str, dims))}"
        objective = config.validation_objective
        if objective == "dpo":
            objective += f" ({config.loss_type}, beta {config.beta:g})"
        rows = [
            ("Pool rows", self.num_pool),
            ("Selected rows", f"{num_selected} ({_pct(num_selected, self.num_pool, 2)} of the pool; {budget})"),
            (
                "Rows without a usable gradient",
                f"{num_invalid} ({_pct(num_invalid, self.num_pool, 2)})"
                + (f": {', '.join(invalid_detail)}" if invalid_detail else ""),
            ),
            (
                "Checkpoints used (step: weight)",
                ", ".join(f"{row['step']}: {row['weight']:.3f}" for row in self.checkpoints) or "none",
            ),
            ("Validation objective", objective),
            ("Projection", projection),
            ("Preconditioner", config.preconditioner),
            ("Subtask aggregation", info.get("aggregation", config.subtask_aggregation)),
            ("Feature storage", config.feature_dtype),
        ]
        if tokenization:
            rows.append(
                (
                    f"Truncated to max_length={config.max_length}",
                    f"{tokenization.get('pool_truncated', 'n/a')} pool rows, "
                    f"{tokenization.get('pairs_truncated', 'n/a')} preference pairs",
                )
            )
        if self.valid.any():
            valid_scores = self.scores[self.valid]
            rows.append(
                (
                    "Score of valid rows (min / median / max)",
                    f"{valid_scores.min():.4f} / {np.median(valid_scores):.4f} / {valid_scores.max():.4f}",
                )
            )
        lines = [
            "## Summary",
            "",
            "What was selected and with which settings. Scores are checkpoint-weighted cosine similarities between "
            "each pool example's (preconditioned) training gradient and the validation preference-loss gradients, "
            "so they lie in [-1, 1]; rows without a usable gradient (e.g. nothing left to learn after truncation) "
            "are never selected.",
            "",
            *_table(["Item", "Value"], rows),
            "",
            *self.costs(),
        ]
        return lines

    def costs(self) -> list[str]:
        info, tokenization = self.info, self.info.get("tokenization") or {}
        feature_seconds = {str(k): v for k, v in (info.get("feature_seconds") or {}).items()}
        feature_bytes = {str(k): v for k, v in (info.get("feature_bytes") or {}).items()}
        rows: list[tuple[str, str, str]] = []
        total_seconds, total_bytes = 0.0, 0
        if "tokenize_seconds" in tokenization:
            rows.append(("Tokenization (pool + pairs)", _seconds(tokenization["tokenize_seconds"]), "in memory"))
            total_seconds += float(tokenization["tokenize_seconds"])
        pool_seconds = 0.0
        for row in self.checkpoints:
            key, meta = str(row["step"]), row["meta"]
            seconds = feature_seconds.get(key)
            size = feature_bytes.get(key)
            detail = ""
            if "pool_seconds" in meta:
                pool_seconds += float(meta["pool_seconds"])
                detail = (
                    f" (pool {_seconds(meta['pool_seconds'])}, validation {_seconds(meta.get('validation_seconds'))})"
                )
            rows.append((f"Features, checkpoint {key}", _seconds(seconds) + detail, _bytes(size)))
            total_seconds += float(seconds or 0.0)
            total_bytes += int(size or 0)
        selection_bytes = sum(
            _dir_bytes(os.path.join(self.output_dir, name)) or 0
            for name in ("scores.npy", "valid.npy", "selected_indices.json", "selected", "selected.jsonl")
        )
        rows.append(("Scoring + selection", _seconds(info.get("score_seconds")), _bytes(selection_bytes)))
        total_seconds += float(info.get("score_seconds") or 0.0)
        total_bytes += selection_bytes
        rows.append(("**Total**", f"**{_seconds(total_seconds)}**", f"**{_bytes(total_bytes)}**"))
        lines = [
            "### Time and storage per stage",
            "",
            "Feature extraction dominates: it runs one forward/backward pass per pool example and checkpoint, and "
            "stores one projected vector per example and checkpoint. Scoring is a few matrix products over the "
            "stored features.",
            "",
            *_table(["Stage", "Time", "Storage"], rows),
        ]
        num_checkpoints = len(self.checkpoints)
        if num_checkpoints and self.num_pool:
            per_row = []
            if pool_seconds:
                per_row.append(f"{1000 * pool_seconds / (self.num_pool * num_checkpoints):.2f} ms")
            if feature_bytes:
                per_row.append(
                    f"{_bytes(sum(feature_bytes.values()) / (self.num_pool * num_checkpoints))} of features"
                )
            if per_row:
                lines += [
                    "",
                    f"Per pool example and checkpoint: {' and '.join(per_row)} (LESS on Llama-2-7B: about 160 ms on "
                    "one A100 and 16 KB at 8192 dims in float16).",
                ]
        return lines

    # --- 2. score histogram ---------------------------------------------------------------------------------------
    def score_histogram(self) -> list[str]:
        lines = [
            "## Score distribution",
            "",
            "Histogram of the scores of all valid pool rows, with the selected rows overlaid. The selection is the "
            "right tail; the dashed line is the lowest selected score. A selected tail that stands apart from the "
            "bulk means a clear signal; a threshold inside the bulk means the ranking near the cut is close to noise.",
            "",
        ]
        valid_scores = self.scores[self.valid]
        if valid_scores.size == 0:
            return lines + ["No pool row has a usable gradient, so there is nothing to plot."]
        selected_scores = self.scores[self.selected] if self.selected.size else np.empty(0, dtype=np.float32)
        figure = _figure()
        axes = figure.add_subplot()
        bins = np.histogram_bin_edges(valid_scores, bins=min(60, max(10, int(math.sqrt(valid_scores.size)))))
        axes.hist(valid_scores, bins=bins, color="#9aa7b8", label=f"all valid rows ({valid_scores.size})")
        if selected_scores.size:
            axes.hist(selected_scores, bins=bins, color="#d9534f", label=f"selected ({selected_scores.size})")
            axes.axvline(float(selected_scores.min()), color="black", linestyle="--", linewidth=1)
        axes.set_xlabel("score")
        axes.set_ylabel("pool rows")
        axes.legend()
        lines.append(self.image(figure, "scores.png", "Score histogram"))
        if selected_scores.size:
            lines += ["", f"Lowest selected score: {selected_scores.min():.4f}."]
        return lines

    # --- 3. sources ------------------------------------------------------------------------------------------------
    def sources(self) -> list[str]:
        column = self.config.source_column
        lines = ["## Selection by data source", ""]
        if self.selected_sources is None:
            if not column:
                reason = "no `source_column` is configured"
            elif self.pool is None and self.selected_rows is None:
                reason = "neither the pool nor the selected rows are available"
            else:
                reason = f"the pool has no `{column}` column"
            return lines + [f"Skipped: {reason}."]
        num_selected = len(self.selected_sources)
        selected_counts = Counter(self.selected_sources)
        if self.pool_sources is not None:
            lines += [
                f"Where the selection comes from, by the pool's `{column}` column. *Share of selection* is the "
                "source's part of the selected subset; *selection rate* is the fraction of the source's pool rows "
                "that were selected. A rate well above the overall rate "
                f"({_pct(num_selected, self.num_pool)}) means the target task's gradients favour that source.",
                "",
            ]
            pool_counts = Counter(self.pool_sources)
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
                row += [in_pool, _pct(in_pool, self.num_pool)]
            row += [chosen, _pct(chosen, num_selected)]
            if pool_counts is not None:
                row.append(_pct(chosen, in_pool))
            rows.append(row)
            labels.append(label)
            pool_shares.append(in_pool / self.num_pool if pool_counts is not None and self.num_pool else 0.0)
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
        lines += _table(header, rows)

        figure = _figure(6.4, max(2.5, 0.35 * len(labels) + 1.2))
        axes = figure.add_subplot()
        positions = np.arange(len(labels))
        if pool_counts is not None:
            axes.barh(positions - 0.2, pool_shares, height=0.4, color="#9aa7b8", label="share of pool")
            axes.barh(positions + 0.2, selected_shares, height=0.4, color="#d9534f", label="share of selection")
            axes.legend()
        else:
            axes.barh(positions, selected_shares, height=0.6, color="#d9534f")
        axes.set_yticks(positions, [label[:40] for label in labels])
        axes.invert_yaxis()
        axes.set_xlabel("share")
        lines += ["", self.image(figure, "sources.png", "Share per source")]
        return lines

    # --- 4. subtasks -----------------------------------------------------------------------------------------------
    def subtasks(self) -> list[str]:
        means = self.info.get("per_subtask_mean") or {}
        wins = self.info.get("argmax_subtask_counts") or {}
        names = list(self.info.get("subtasks") or list(dict.fromkeys([*means, *wins])))
        aggregation = self.info.get("aggregation", self.config.subtask_aggregation)
        lines = [
            "## Per-subtask contribution",
            "",
            "Each validation subtask (a group of preference pairs) scores every pool row by the mean similarity to its "
            f"pairs; the final score is the {aggregation} over subtasks. *Mean score* is that per-subtask score "
            "averaged over the valid pool rows; *best subtask for* counts the valid rows for which the subtask gives "
            "the highest score. Under `max`, a subtask that is best for few rows barely influences the selection: "
            "add pairs for it, or use `subtask_aggregation=mean`.",
            "",
        ]
        if not names:
            return lines + ["No per-subtask information was recorded for this run."]
        total_wins = sum(int(wins.get(name, 0)) for name in names)
        rows = []
        for name in names:
            mean = means.get(name)
            count = int(wins.get(name, 0))
            rows.append(
                [
                    escape_cell(name, 80),
                    "n/a" if mean is None or not math.isfinite(mean) else f"{mean:.4f}",
                    count,
                    _pct(count, total_wins),
                ]
            )
        lines += _table(["Subtask", "Mean score", "Best subtask for (rows)", "Share of rows"], rows)

        figure = _figure(8.0, max(2.5, 0.35 * len(names) + 1.2))
        left, right = figure.subplots(1, 2, sharey=True)
        positions = np.arange(len(names))
        left.barh(positions, [float(means.get(n, float("nan"))) for n in names], color="#5b8def")
        left.set_xlabel("mean score over valid rows")
        left.set_yticks(positions, [str(n)[:30] for n in names])
        left.invert_yaxis()
        right.barh(positions, [int(wins.get(n, 0)) for n in names], color="#f0ad4e")
        right.set_xlabel("rows for which it is the best subtask")
        lines += ["", self.image(figure, "subtasks.png", "Per-subtask contribution")]
        return lines

    # --- 5. budget curve -------------------------------------------------------------------------------------------
    def budgets(self) -> list[str]:
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
        if not self.valid.any():
            return lines + ["No pool row has a usable gradient, so there is no ranking."]
        curve = budget_curve(self.scores, DEFAULT_BUDGET_FRACTIONS, valid=self.valid)
        chosen = self.selected
        entries: list[tuple[str, float, np.ndarray, bool]] = []
        for fraction, indices in curve.items():
            entries.append((_pct(fraction, 1.0, 0), fraction, indices, len(indices) == len(chosen)))
        if not any(is_chosen for *_, is_chosen in entries):
            fraction = len(chosen) / self.num_pool
            entries.append((_pct(fraction, 1.0, 2), fraction, chosen, True))
            entries.sort(key=lambda entry: entry[1])
        chosen_set = set(chosen.tolist())
        sources: list[str] = []
        if self.pool_sources is not None:
            # The budget table shows only the biggest sources: one column each, everything else in "(other)".
            counts = Counter(self.pool_sources)
            sources = sorted(counts, key=lambda s: (-counts[s], s))[:MAX_BUDGET_SOURCES]
            if len(counts) > len(sources):
                sources.append(OTHER)
            top = set(sources)
        header = ["Budget", "Selected", "Lowest score", "Overlap with chosen"] + [escape_cell(s, 40) for s in sources]
        rows, shares = [], {source: [] for source in sources}
        for label, _, indices, is_chosen in entries:
            overlap = len(chosen_set.intersection(indices.tolist()))
            row = [
                label + (" (chosen)" if is_chosen else ""),
                len(indices),
                f"{self.scores[indices].min():.4f}" if len(indices) else "n/a",
                f"{overlap} ({_pct(overlap, len(indices))})",
            ]
            if sources:
                picked = Counter(
                    self.pool_sources[i] if self.pool_sources[i] in top else OTHER for i in indices.tolist()
                )
                for source in sources:
                    share = picked.get(source, 0) / len(indices) if len(indices) else 0.0
                    shares[source].append(share)
                    row.append(_pct(share, 1.0))
            rows.append(row)
        lines += _table(header, rows)
        if sources:
            lines += ["", "The source columns give each source's share of the selection at that budget."]
        elif self.config.source_column:
            lines += ["", "Source shares per budget need the full pool's source column, which is not available here."]

        figure = _figure()
        axes = figure.add_subplot()
        x = [100 * fraction for _, fraction, _, _ in entries]
        if sources:
            for source in sources:
                axes.plot(x, shares[source], marker="o", label=source[:30])
            axes.set_ylabel("share of selection")
            axes.legend(fontsize="small")
        else:
            axes.plot(
                x, [float(self.scores[idx].min()) if len(idx) else np.nan for _, _, idx, _ in entries], marker="o"
            )
            axes.set_ylabel("lowest selected score")
        chosen_x = [100 * fraction for _, fraction, _, is_chosen in entries if is_chosen]
        if chosen_x:
            axes.axvline(chosen_x[0], color="black", linestyle="--", linewidth=1)
        axes.set_xlabel("budget (% of pool)")
        lines += ["", self.image(figure, "budget.png", "Budget curve")]
        return lines

    # --- 6. checkpoint weights -------------------------------------------------------------------------------------
    def checkpoint_weights(self) -> list[str]:
        lines = [
            "## Checkpoint weights",
            "",
            "Each warmup checkpoint's similarity counts in proportion to the mean learning rate of the optimizer steps "
            "that led to it (renormalised to sum to 1), read from the trainer rather than typed by hand. With a "
            "decaying schedule the early checkpoints weigh more.",
            "",
        ]
        if not self.checkpoints:
            return lines + ["No checkpoint was recorded."]
        rows = [
            [
                row["step"],
                row["num_rates"] or "n/a",
                "n/a" if row["mean_lr"] is None else f"{row['mean_lr']:.3g}",
                f"{row['weight']:.4f}",
            ]
            for row in self.checkpoints
        ]
        lines += _table(["Step", "Optimizer steps", "Mean learning rate", "Weight"], rows)
        figure = _figure(5.0, 3.0)
        axes = figure.add_subplot()
        axes.bar(
            [str(row["step"]) for row in self.checkpoints],
            [row["weight"] for row in self.checkpoints],
            color="#5cb85c",
        )
        axes.set_xlabel("checkpoint step")
        axes.set_ylabel("weight")
        lines += ["", self.image(figure, "checkpoints.png", "Checkpoint weights")]
        return lines

    # --- 7. top examples -------------------------------------------------------------------------------------------
    def top_examples(self) -> list[str]:
        lines = [
            "## Top selected examples",
            "",
            f"The {NUM_TOP_EXAMPLES} highest-scoring selected rows, text cut to {MAX_CELL_CHARS} characters. If these "
            "do not look like the target task, check the validation pairs and the warmup before trusting the rest.",
            "",
        ]
        if self.selected_rows is None:
            return lines + ["Skipped: neither the pool nor `selected/` is available."]
        if not len(self.selected):
            return lines + ["Nothing was selected."]
        count = min(NUM_TOP_EXAMPLES, len(self.selected))
        rows_data = self.selected_rows.select(range(count))
        text_columns = [c for c in TEXT_COLUMNS if c in rows_data.column_names]
        source = self.config.source_column if self.config.source_column in rows_data.column_names else None
        header = ["Rank", "Pool row", "Score"] + ([escape_cell(source)] if source else []) + text_columns
        rows = []
        for rank, example in enumerate(rows_data):
            index = int(self.selected[rank])
            row = [rank + 1, index, f"{self.scores[index]:.4f}"]
            if source:
                row.append(escape_cell(example[source], 80))
            for column in text_columns:
                value = example[column]
                row.append(escape_cell(_message_text(value) if column == "messages" else value))
            rows.append(row)
        if not text_columns:
            lines += ["The rows have none of the columns " + ", ".join(f"`{c}`" for c in TEXT_COLUMNS) + ".", ""]
        return lines + _table(header, rows)

    def render(self, extra_sections: list[str] | None) -> str:
        sections = [
            self.summary(),
            self.score_histogram(),
            self.sources(),
            self.subtasks(),
            self.budgets(),
            self.checkpoint_weights(),
            self.top_examples(),
        ]
        title = [
            f"# ROSE selection report: {os.path.basename(os.path.abspath(self.output_dir))}",
            "",
            f"{len(self.selected)} of {self.num_pool} pool rows selected. Plots are in `{PLOT_DIR}/`.",
        ]
        parts = ["\n".join(title)] + ["\n".join(lines) for lines in sections]
        parts += [section.strip("\n") for section in extra_sections or []]
        return "\n\n".join(parts) + "\n"


def _run_args(output_dir: str, store: FeatureStore | None) -> dict[str, Any] | None:
    if store is not None and store.run_args is not None:
        return store.run_args
    path = os.path.join(output_dir, "run.json")
    return read_json(path) if os.path.exists(path) else None


def write_report(
    output_dir: str,
    pool: Dataset,
    result: SelectionResult,
    config: RoseConfig,
    store: FeatureStore | None = None,
    extra_sections: list[str] | None = None,
) -> str:
    """Write `<output_dir>/report.md` and its PNG plots in `<output_dir>/report/`.

    Sections: summary with time and storage per stage, score histogram, selection by data source, per-subtask
    contribution, budget curve (1-20%), checkpoint weights, top selected examples, then `extra_sections` verbatim.

    Args:
        output_dir: the run folder (the report sits beside `selection.json`).
        pool: the full pool the selection was made from, in pool order (its `config.source_column` column, when
            present, gives the per-source tables).
        result: the selection (`select_from_store` or `load_selection`).
        config: the settings of the run.
        store: the run's feature cache, for per-checkpoint learning rates, timings and feature dims (optional).
        extra_sections: markdown blocks appended as they are (e.g. an evaluation section).

    Returns:
        The path of `report.md`.

    Example:
    ```python
    >>> path = write_report(config.output_dir, pool, result, config, store)  # doctest: +SKIP
    ```
    """
    return _write(output_dir, pool, None, result, config, store, extra_sections)


def _write(
    output_dir: str,
    pool: Dataset | None,
    selected_rows: Dataset | None,
    result: SelectionResult,
    config: RoseConfig,
    store: FeatureStore | None,
    extra_sections: list[str] | None,
) -> str:
    report = _Report(output_dir, pool, selected_rows, result, config, store)
    with disk_errors(report.plot_dir):
        os.makedirs(report.plot_dir, exist_ok=True)
        # A plot left from an earlier report whose section is now skipped would be mistaken for this run's.
        for name in PLOT_FILES:
            path = os.path.join(report.plot_dir, name)
            if os.path.exists(path):
                os.remove(path)
    text = report.render(extra_sections)
    path = os.path.join(output_dir, REPORT_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    with disk_errors(path):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    _log_info(f"rose_hf: wrote the selection report to {path} ({len(report.images)} plots in {report.plot_dir}).")
    return path


def config_from_output_dir(output_dir: str, result: SelectionResult | None = None) -> RoseConfig:
    """The `RoseConfig` a finished run recorded in `selection.json` (defaults for fields it lacks).

    Args:
        output_dir: the run folder.
        result: the loaded selection, to avoid reading `selection.json` again.
    """
    result = result or load_selection(output_dir)
    known = {f.name for f in fields(RoseConfig)}
    saved = (result.info or {}).get("config") or {}
    if not saved:
        _log_info(f"rose_hf: {output_dir}/selection.json records no config; the report shows default settings.")
    return RoseConfig(**{**{k: v for k, v in saved.items() if k in known}, "output_dir": output_dir})


def report_from_output_dir(
    output_dir: str, pool: Dataset | None = None, extra_sections: list[str] | None = None
) -> str:
    """Rebuild `report.md` from a finished run folder (the `rose-hf report` command).

    The full pool is not saved with a run. Without `pool`, the source table shows only the selected rows' sources
    (read from `selected/`), the budget curve has no per-source shares, and the top examples come from `selected/`.

    Args:
        output_dir: a folder where `select_from_store` finished (`selection.json`, `scores.npy`, `selected/`).
        pool: the full pool the run selected from, in the same order, for per-source pool counts and rates.
        extra_sections: markdown blocks appended as they are.

    Returns:
        The path of `report.md`.

    Example:
    ```python
    >>> report_from_output_dir("rose_output")  # doctest: +SKIP
    'rose_output/report.md'
    ```
    """
    if not os.path.exists(os.path.join(output_dir, "selection.json")):
        raise FileNotFoundError(
            f"{output_dir} holds no finished selection (no selection.json): run the selection first, or point at the "
            "run's output_dir."
        )
    result = load_selection(output_dir)
    config = config_from_output_dir(output_dir, result)
    store = FeatureStore(output_dir)
    if not store.completed_checkpoints():
        store = None
    selected_rows = None
    if pool is None:
        selected_dir = os.path.join(output_dir, "selected")
        if os.path.isdir(selected_dir):
            from datasets import load_from_disk

            selected_rows = load_from_disk(selected_dir)
    else:
        run_args = _run_args(output_dir, None) or {}
        from .fingerprint import pool_fingerprint

        fingerprint = run_args.get("pool_fingerprint")
        if fingerprint and pool_fingerprint(pool) != fingerprint and len(pool) == len(result.scores):
            _log_info(
                f"rose_hf: the pool's fingerprint differs from the one in {output_dir}/run.json; check it is "
                "the same pool, in the same order."
            )
    return _write(output_dir, pool, selected_rows, result, config, store, extra_sections)
