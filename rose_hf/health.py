"""A label-free verdict on a selection: would the same validation set, split in two, pick the same rows?

The pairs define the target. If the target is clear, each half of them picks much the same rows, and the selection
stands on all of them; if the halves pick different rows, which rows win depends on which pairs happen to be there, and
the selection is close to noise. So the main signal is `pair_split_agreement`: the share of the budget's rows that the
two halves of the pairs (alternating within each subtask, `pair_halves`) both select, each half scored exactly as the
run is (same scoring, objective, checkpoints). It needs no labels and no second warmup: the features are cached, and
each half costs one more scoring pass over them, not a gradient.

Calibrated on the real-model benchmark (`python -m benchmarks.quality.trust`, README "Can you trust a selection?"),
including deliberately bad runs (a 1-epoch warmup, 2 validation pairs, a budget larger than the target's share).

Other signals, recorded for the report and the trainer's logs but not in the rule (they separated bad from good runs
less well there):
    tail_separation: (mean relevance of the selection - pool median) / pool MAD, relevance being the cosine to the
        nearest validation chosen answer at the last checkpoint.
    preferred_share: of the `budget` rows most like the validation answers, the share whose DPO alignment is positive
        (the rule before issue 18: it said "ok" on every bad run of the real model).
    selected_preferred_share: the same share within the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HEALTH_SIGNAL, HEALTH_THRESHOLD = "pair_split_agreement", 0.3  # calibrated on the real benchmark (README)


def pair_halves(subtasks: Sequence[str]) -> tuple[list[int], list[int]]:
    """Two halves of the validation pairs: within each subtask, pairs alternate between the halves (in order).

    A subtask with one pair is in the first half only; with one pair per subtask the second half is empty.

    Example:
    ```python
    >>> pair_halves(["a", "a", "b", "a", "b"])
    ([0, 2, 3], [1, 4])
    ```
    """
    halves: tuple[list[int], list[int]] = ([], [])
    seen: dict[str, int] = {}
    for index, name in enumerate(subtasks):
        halves[seen.get(name, 0) % 2].append(index)
        seen[name] = seen.get(name, 0) + 1
    return halves


def top_overlap(a: np.ndarray, b: np.ndarray, budget: int) -> float:
    """Share of the `budget` best rows of `a` that are also among the `budget` best of `b` (`select_top`'s rule)."""
    from .selection import select_top

    return len(set(select_top(a, size=budget).tolist()) & set(select_top(b, size=budget).tolist())) / budget


def selection_health(
    relevance: np.ndarray,
    preference: np.ndarray | None,
    selected: np.ndarray,
    budget: int,
    half_scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The verdict on one selection, with its signals and, when it warns, the fix.

    Args:
        relevance: `(N,)` cosine to the nearest validation chosen answer (`rose_hf.robust.relevance_and_preference`).
        preference: `(N,)` mean cosine to the DPO gradients, or None without a preference side.
        selected: the selected rows.
        budget: the number of rows selected.
        half_scores: the run's scoring from each half of the validation pairs (`pair_halves`), or None when a half
            is empty.

    Returns:
        `{"verdict": "ok" | "noise" | "unchecked", "message": str, "signals": {...}, "rule": str}`; "unchecked"
        (one validation pair per subtask) warns as well: the selection rests on a single pair per subtask.
    """
    finite = np.isfinite(relevance)
    median = float(np.median(relevance[finite])) if finite.any() else 0.0
    mad = float(np.median(np.abs(relevance[finite] - median))) + 1e-12 if finite.any() else 1.0
    signals: dict[str, float] = {}
    if half_scores is not None:
        signals["pair_split_agreement"] = top_overlap(half_scores[0], half_scores[1], budget)
    signals["tail_separation"] = float((relevance[selected].mean() - median) / mad) if len(selected) else 0.0
    if preference is not None:
        top = np.argsort(-np.where(finite, relevance, -np.inf), kind="stable")[:budget]
        signals["preferred_share"] = float((preference[top] > 0).mean()) if len(top) else 0.0
        signals["selected_preferred_share"] = float((preference[selected] > 0).mean()) if len(selected) else 0.0
    rule = f"noise when {HEALTH_SIGNAL} < {HEALTH_THRESHOLD}"
    if HEALTH_SIGNAL not in signals:
        message = (
            "one validation pair per subtask, so the two halves of the pairs cannot be compared and the selection "
            "rests on a single pair per subtask. Fix: give at least 2 preference pairs per subtask (the paper uses "
            "5-10)"
        )
        return {"verdict": "unchecked", "signals": signals, "rule": rule, "message": message}
    agreement = signals[HEALTH_SIGNAL]
    if agreement >= HEALTH_THRESHOLD:
        message = f"the two halves of the preference pairs pick {agreement:.0%} of the same rows"
        return {"verdict": "ok", "signals": signals, "rule": rule, "message": message}
    message = (
        f"the two halves of the preference pairs pick only {agreement:.0%} of the same rows, so which rows win depends "
        "on which pairs are given: the selection is likely noise. Fix: give more, and more typical, preference pairs "
        "(the paper uses 5-10 per subtask), warm up longer (more epochs), or select a smaller share of the pool"
    )
    return {"verdict": "noise", "signals": signals, "rule": rule, "message": message}
