"""A human-readable report of one selection run: `<output_dir>/report.md` plus PNG plots in `<output_dir>/report/`.

The report answers the questions a user (and the paper's reviewers) ask of a selection: what was selected, from which
data sources, which validation subtasks drove it, how the selection changes with the budget (1-20%), how the
checkpoints were weighted, and what each stage cost in time and disk. Settings are shown as the run USED them (the
projection and feature layout featurization recorded), not only as they were asked for.

Modules: `context` (the run, read once), `summary` (verdict, settings, costs), `sections` (the other sections),
`plots` (the figures), `markdown` (cells, tables, numbers).

Example:
```python
>>> from rose_hf.report import report_from_output_dir
>>> path = report_from_output_dir("rose_output")  # rebuild the report of a finished run  # doctest: +SKIP
```
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from datasets import Dataset

from ..cache.io import atomic_write_text, disk_errors, read_json
from ..cache.store import RECORDED_DEFAULTS, FeatureStore
from ..logs import log
from ..rose_config import DEPRECATED_NAMES, RoseConfig
from ..scoring.selection import SelectionResult, load_selection
from . import sections
from .context import PLOT_DIR, ReportContext
from .markdown import escape_cell, image_links
from .summary import summary

__all__ = [
    "write_report",
    "report_from_output_dir",
    "config_from_output_dir",
    "escape_cell",
    "REPORT_FILE",
    "PLOT_DIR",
]

REPORT_FILE = "report.md"
# The plots this module writes (an extra section may add its own to the same folder, e.g. the demo's evaluation).
PLOT_FILES = ("scores.png", "sources.png", "subtasks.png", "budget.png", "checkpoints.png")


def _render(ctx: ReportContext, extra_sections: list[str] | None) -> str:
    parts = [
        summary(ctx),
        sections.score_histogram(ctx),
        sections.sources(ctx),
        sections.subtasks(ctx),
        sections.budgets(ctx),
        sections.checkpoint_weights(ctx),
        sections.top_examples(ctx),
    ]
    title = [
        f"# ROSE selection report: {os.path.basename(os.path.abspath(ctx.output_dir))}",
        "",
        f"{len(ctx.selected)} of {ctx.num_pool} pool rows selected. Plots are in `{PLOT_DIR}/`.",
    ]
    blocks = ["\n".join(title)] + ["\n".join(lines) for lines in parts]
    blocks += [section.strip("\n") for section in extra_sections or []]
    return "\n\n".join(blocks) + "\n"


def write_report(
    output_dir: str,
    pool: Dataset,
    result: SelectionResult,
    config: RoseConfig,
    store: FeatureStore | None = None,
    extra_sections: list[str] | None = None,
) -> str:
    """Write `<output_dir>/report.md` and its PNG plots in `<output_dir>/report/`.

    Sections: summary (the health verdict first, when the selection recorded one) with time and storage per stage,
    score histogram, selection by data source, per-subtask contribution, budget curve (1-20%), checkpoint weights,
    top selected examples, then `extra_sections` verbatim.

    Args:
        output_dir: the run folder (the report sits beside `selection.json`).
        pool: the full pool the selection was made from, in pool order (its `config.source_column` column, when
            present, gives the per-source tables).
        result: the selection (`select_from_store` or `load_selection`).
        config: the settings of the run.
        store: the run's feature cache, for per-checkpoint learning rates, timings, the projection used and the
            stored feature layout (optional).
        extra_sections: markdown blocks appended as they are (e.g. an evaluation section); the plots they link in
            `report/` are counted with the report's own.

    Returns:
        The path of `report.md`.

    Example:
    ```python
    >>> path = write_report(config.selection_dir, pool, result, config, store)  # doctest: +SKIP
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
    ctx = ReportContext(output_dir, pool, selected_rows, result, config, store)
    with disk_errors(ctx.plot_dir):
        os.makedirs(ctx.plot_dir, exist_ok=True)
        # A plot left from an earlier report whose section is now skipped would be mistaken for this run's.
        for name in PLOT_FILES:
            path = os.path.join(ctx.plot_dir, name)
            if os.path.exists(path):
                os.remove(path)
    text = _render(ctx, extra_sections)
    path = os.path.join(output_dir, REPORT_FILE)
    atomic_write_text(path, text)
    # Count what report.md links and what is on disk, so the log matches the folder a user opens.
    extra = [
        link
        for section in extra_sections or []
        for link in image_links(section)
        if os.path.isfile(os.path.join(output_dir, link))
    ]
    detail = f": {len(ctx.images)} from the selection report, {len(extra)} from the extra sections" if extra else ""
    log(
        f"wrote the selection report to {path} ({len(ctx.images) + len(extra)} plots in "
        f"{ctx.plot_dir}{detail})."
    )
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
        log(f"{output_dir}/selection.json records no config; the report shows default settings.")
    saved = {DEPRECATED_NAMES.get(k, k): v for k, v in saved.items()}  # runs recorded before the renames
    saved = {**RECORDED_DEFAULTS, **saved} if saved else saved  # runs recorded before a field existed
    return RoseConfig(**{**{k: v for k, v in saved.items() if k in known}, "selection_dir": output_dir})


def _run_args(output_dir: str) -> dict[str, Any]:
    path = os.path.join(output_dir, "run.json")
    return read_json(path) if os.path.exists(path) else {}


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
        from ..cache.fingerprint import pool_fingerprint

        fingerprint = _run_args(output_dir).get("pool_fingerprint")
        if fingerprint and pool_fingerprint(pool) != fingerprint and len(pool) == len(result.scores):
            log(
                f"the pool's fingerprint differs from the one in {output_dir}/run.json; check it is "
                "the same pool, in the same order."
            )
    return _write(output_dir, pool, selected_rows, result, config, store, extra_sections)
