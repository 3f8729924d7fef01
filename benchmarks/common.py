"""Helpers the speed and quality benchmarks share: progress lines, number and table formatting, bare figures.

Each exists once here so that both reports format alike. Heavy imports (rose_hf, matplotlib) stay inside the
functions so that the benchmarks' `--help` is instant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

_START = time.perf_counter()


def reset_clock() -> None:
    """Start the elapsed-time prefix of `log` again (at the start of a benchmark run)."""
    global _START
    _START = time.perf_counter()


def log(message: str) -> None:
    """A progress line, prefixed with the seconds since `reset_clock`, on the main process only.

    Goes through `rose_hf.logs.log`, so `rose_fixtures.recipe.quiet_libraries()` (called by the benchmarks'
    `main`) makes it visible.
    """
    from rose_hf.logs import log as rose_log

    rose_log(f"[+{time.perf_counter() - _START:6.1f}s] {message}")


def write_results(output_dir: str, stem: str, results: dict[str, Any], markdown: str) -> str:
    """`<stem>.json` and `<stem>.md` into `output_dir`, announced; returns the markdown's path."""
    import json
    import os

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{stem}.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    path = os.path.join(output_dir, f"{stem}.md")
    with open(path, "w") as handle:
        handle.write(markdown)
    log(f"{stem} -> {path}")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: `-` for None, yes/no for booleans, `digits` significant digits (thousands separated, tiny values
    in scientific notation).

    Example:
    ```python
    >>> [fmt(None), fmt(True), fmt(0), fmt(12345.6), fmt(0.123456), fmt(123.456), fmt(0.000123)]
    ['-', 'yes', '0', '12,346', '0.123', '123.5', '1.23e-04']
    ```
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 0.01:
            return f"{value:.{digits}g}" if magnitude < 100 else f"{value:.1f}"
        return f"{value:.2e}"
    return str(value)


def fmt_stat(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """A `{"mean", "std", "values"}` summary over seeds as `mean ± std` (`mean` alone for one seed; `n/a` if none).

    Example:
    ```python
    >>> fmt_stat({"mean": 0.5, "std": 0.1, "values": [0.4, 0.6]}), fmt_stat({"mean": 0.5, "values": [0.5]}, 2)
    ('0.500 ± 0.100', '0.50')
    ```
    """
    if not stat or stat.get("mean") is None:
        return "n/a"
    if len(stat.get("values", [])) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells go through `fmt` (strings pass unchanged).

    Example:
    ```python
    >>> print(table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    ```
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def agg_figure(width: float, height: float, ncols: int = 1):
    """A matplotlib `Figure` with `ncols` axes and its own Agg canvas (inches), and its axes.

    A bare Figure rather than `pyplot`: no global state, no display needed, safe in a test process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols)
    return figure, axes
