"""Tables of the trust benchmark (`trust.md`) from `trust_analysis.analyse`'s results."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import agg_figure, table
from rose_fixtures.evaluation import BAD_BELOW, GOOD_FROM

from .trust_settings import DEFAULT

MAIN = ("random", "less", "rose", "robust", DEFAULT, f"{DEFAULT} x2 warmups", "oracle")
FRONTIER = ("rose @1-epoch warmup", "less @1-epoch warmup", f"{DEFAULT} @1-epoch warmup", "rose @last checkpoint",
            "less @last checkpoint", f"{DEFAULT} @last checkpoint", "robust", "rose", "less", DEFAULT,
            f"{DEFAULT} x2 warmups")  # fmt: skip


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def _values(runs: list[dict], method: str, key: str) -> list[float]:
    return [r["selections"][method][key] for r in runs if method in r["selections"] and key in r["selections"][method]]


def selection_table(runs: list[dict], methods: tuple[str, ...]) -> str:
    rows = []
    for method in methods:
        if not _values(runs, method, "precision"):
            continue
        rel = _values(runs, method, "relative_precision")
        rows.append([method, _mean(_values(runs, method, "precision")), _mean(rel), f"{min(rel):.2f}",
                     _mean(_values(runs, method, "harmful_share")), _mean(_values(runs, method, "stability")),
                     " ".join(f"{v:.2f}" for v in _values(runs, method, "precision"))])  # fmt: skip
    return table(["method (5%)", "precision", "x oracle", "worst run x oracle", "harmful share",
                  "overlap with a 2nd warmup seed", "precision per run"], rows)  # fmt: skip


def family_table(runs: list[dict], methods: tuple[str, ...]) -> str:
    families = list(dict.fromkeys(r["family"] for r in runs))
    rows = []
    for family in families:
        group = [r for r in runs if r["family"] == family]
        rows.append([family, *(f"{_mean(_values(group, m, 'precision'))} / {_mean(_values(group, m, 'harmful_share'))}"
                               for m in methods)])  # fmt: skip
    return table(["family (precision / harmful)", *methods], rows)


def frontier_table(runs: list[dict]) -> str:
    rows = []
    for method in FRONTIER:
        costs = _values(runs, method, "cost")
        if costs:
            rows.append(
                [
                    method,
                    f"{np.mean(_values(runs, method, 'passes')):.2f}",
                    f"{np.mean(costs):.2f}",
                    _mean(_values(runs, method, "precision")),
                    _mean(_values(runs, method, "harmful_share")),
                    _mean(_values(runs, method, "stability")),
                ]
            )
    rows.sort(key=lambda row: (float(row[1]), float(row[2])))
    return table(["selection", "pool passes (warmup share + feature passes)", "measured cost (pool-epochs)", "precision", "harmful share",
                  "overlap with a 2nd warmup seed"], rows)  # fmt: skip


def final_table(runs: list[dict]) -> str:
    methods = [
        m
        for m in ("base", "random", "less", "rose", DEFAULT, "oracle", "full_pool")
        if any(m in r.get("final", {}) for r in runs)
    ]
    rows = []
    for method in methods:
        finals = [r["final"][method] for r in runs if method in r.get("final", {})]
        em = [f["exact_match"] for f in finals]
        wrong = [f["wrong_match"] for f in finals if "wrong_match" in f]
        rows.append([method, len(em), _mean(em), f"{min(em):.2f}", _mean(wrong),
                     _mean([f["preference_accuracy"] for f in finals])])  # fmt: skip
    return table(["final model on", "runs", "exact match", "worst run", "twin's answer", "preference accuracy"], rows)


def bad_runs_table(runs: list[dict]) -> str:
    rows = []
    for suffix in ("@1-epoch warmup", "@2 pairs", "@20% budget"):
        for method in ("rose", "less", DEFAULT):
            name = f"{method} {suffix}"
            rel = _values(runs, name, "relative_precision")
            if rel:
                rows.append(
                    [
                        name,
                        _mean(_values(runs, name, "precision")),
                        _mean(rel),
                        f"{min(rel):.2f}",
                        _mean(_values(runs, name, "harmful_share")),
                    ]
                )
    return table(["deliberately bad run", "precision", "x oracle (same budget)", "worst", "harmful share"], rows)


def health_table(health: dict[str, Any]) -> str:
    """Per signal, the threshold with the fewest errors (warn on bad, silent on good), and its counts."""
    rows = []
    for name, grid in health["signals"].items():

        def errors(row):
            bad_w, bad_n = map(int, row["bad"].split("/"))
            good_w, _ = map(int, row["good"].split("/"))
            return (bad_n - bad_w) + good_w

        best = min(grid, key=errors)
        rows.append([name, f"{best['threshold']:.3g}", best["bad"], best["middling"], best["good"], errors(best)])
    rows.sort(key=lambda row: row[-1])
    shipped = health["shipped"]
    confusion = table([f"rose_hf's verdict (warns unless ok: {shipped['signal']} < {shipped['threshold']}, or one pair "
                       "per subtask)", "warned: bad",
                       "middling", "good"],
                      [[subset, counts["bad"], counts["middling"], counts["good"]]
                       for subset, counts in shipped.items() if isinstance(counts, dict)])  # fmt: skip
    return confusion + "\n\n" + table(["signal (warn when below)", "best threshold", "warned: bad", "middling", "good",
                                        "errors (bad missed + good warned)"], rows)  # fmt: skip


def plot_frontier(runs: list[dict], path: str) -> str:
    """Precision against pool passes, one point per selection variant (held-out means)."""
    figure, axes = agg_figure(7.5, 4.5)
    labelled: dict[tuple[float, float], int] = {}  # points already labelled: stack the labels of equal points
    for method in FRONTIER:
        passes, precision = _values(runs, method, "passes"), _values(runs, method, "precision")
        if passes:
            x, y = float(np.mean(passes)), float(np.mean(precision))
            marker = "*" if method == DEFAULT else "o"
            axes.scatter([x], [y], marker=marker, s=120 if marker == "*" else 40)
            stacked = labelled.get((round(x, 3), round(y, 3)), 0)
            labelled[(round(x, 3), round(y, 3))] = stacked + 1
            axes.annotate(method, (x, y), textcoords="offset points", xytext=(5, 3 - 9 * stacked), fontsize=7)
    axes.set_xlabel("pool passes (warmup share + feature passes)")
    axes.set_ylabel("precision at 5% (oracle 1.0)")
    axes.set_title("What each pool pass buys (held-out seeds)")
    axes.grid(alpha=0.3)
    figure.savefig(path, format="png")
    return path


def render(results: dict[str, Any]) -> str:
    held, dev = results["held_out"], results["development"]
    parts = [
        "# Trust benchmark (issue 18): SmolLM2-135M-Instruct, real-data families",
        "",
        f"Held-out seeds: {len(held)} runs; development seeds (`make bench-real`): {len(dev)} runs. "
        f"Bands: bad < {BAD_BELOW} x the oracle's precision at the same budget, good >= {GOOD_FROM} x.",
        "",
    ]
    for title, runs in (("Held-out seeds", held), ("Development seeds", dev), ("All seeds", held + dev)):
        if runs:
            parts += [
                f"## {title}: selection at 5%",
                "",
                selection_table(runs, MAIN),
                "",
                family_table(runs, ("less", "rose", "robust", DEFAULT)),
                "",
                final_table(runs),
                "",
            ]
    if held:
        parts += [
            "## Cost frontier (held-out seeds)",
            "",
            frontier_table(held),
            "",
            "![frontier](plots/frontier.png)",
            "",
            "## Deliberately bad runs (held-out seeds)",
            "",
            bad_runs_table(held),
            "",
            "## Health signals: warnings by band (held-out selections, both warmups)",
            "",
            health_table(results["health"]),
            "",
        ]
    return "\n".join(parts)
