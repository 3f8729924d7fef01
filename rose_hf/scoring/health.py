"""A label-free verdict on a selection: do the two sides of the target, and the two halves of the pairs, agree?

Signals, each from the cached features alone (no labels, no second warmup):
    objective_agreement: the share of the budget's rows that the DPO side alone (the rows that move the preference
        margin the right way) and the SFT side alone (the rows most like the chosen answers) both select. When the
        rows that look like the target do not also move the preference, the target is ambiguous to the model and the
        selection is close to noise. THE RULE: noise below `HEALTH_THRESHOLD`.
    pair_split_agreement: the share of the budget's rows that the two halves of the pairs (alternating within each
        subtask, `pair_halves`) both select, each scored exactly as the run is. Recorded; with one pair per subtask
        there is no second half, and the verdict is "unchecked" (it warns: the selection rests on one pair).
    tail_separation: (mean relevance of the selection - pool median) / pool MAD, relevance being the cosine to the
        nearest validation chosen answer at the last checkpoint.
    preferred_share: of the `budget` rows most like the validation answers, the share whose DPO alignment is positive
        (recorded, not a rule: it can be high on a bad selection), and selected_preferred_share, the same within the
        selection.

The threshold is calibrated on the real-model benchmark (`make bench-trust`) against deliberately bad runs (too short
a warmup, too few validation pairs, a budget larger than the target's share); its report gives the figures and the
limits of that calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .budget import select_top

HEALTH_SIGNAL, HEALTH_THRESHOLD = "objective_agreement", 0.4  # calibrated by `make bench-trust`


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
    return len(set(select_top(a, size=budget).tolist()) & set(select_top(b, size=budget).tolist())) / budget


def selection_health(
    relevance: np.ndarray,
    preference: np.ndarray | None,
    selected: np.ndarray,
    budget: int,
    half_scores: tuple[np.ndarray, np.ndarray] | None = None,
    objective_scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The verdict on one selection, with its signals and, when it warns, the fix.

    Args:
        relevance: `(N,)` cosine to the nearest validation chosen answer (`rose_hf.scoring.robust.relevance_and_preference`).
        preference: `(N,)` mean cosine to the DPO gradients, or None without a preference side.
        selected: the selected rows.
        budget: the number of rows selected.
        half_scores: the run's scoring from each half of the validation pairs (`pair_halves`), or None when a half
            is empty.
        objective_scores: the ranking by the DPO side alone and by the SFT side alone, or None.

    Returns:
        `{"verdict": "ok" | "noise" | "unchecked", "message": str, "signals": {...}, "rule": str}`. "unchecked" warns
        too: one validation pair per subtask, or no preference side to compare.
    """
    finite = np.isfinite(relevance)
    median = float(np.median(relevance[finite])) if finite.any() else 0.0
    mad = float(np.median(np.abs(relevance[finite] - median))) + 1e-12 if finite.any() else 1.0
    signals: dict[str, float] = {}
    if objective_scores is not None:
        signals["objective_agreement"] = top_overlap(objective_scores[0], objective_scores[1], budget)
    if half_scores is not None:
        signals["pair_split_agreement"] = top_overlap(half_scores[0], half_scores[1], budget)
    signals["tail_separation"] = float((relevance[selected].mean() - median) / mad) if len(selected) else 0.0
    if preference is not None:
        top = np.argsort(-np.where(finite, relevance, -np.inf), kind="stable")[:budget]
        signals["preferred_share"] = float((preference[top] > 0).mean()) if len(top) else 0.0
        signals["selected_preferred_share"] = float((preference[selected] > 0).mean()) if len(selected) else 0.0
    rule = f"noise when {HEALTH_SIGNAL} < {HEALTH_THRESHOLD}; unchecked with one preference pair per subtask"
    if "pair_split_agreement" not in signals:
        message = (
            "one preference pair per subtask: the selection rests on a single pair each, and its reliability cannot "
            "be measured. Fix: give at least 2 preference pairs per subtask (the paper uses 5-10)"
        )
        return {"verdict": "unchecked", "signals": signals, "rule": rule, "message": message}
    if HEALTH_SIGNAL not in signals:
        message = "no preference side to compare the SFT side with (no DPO features), so the selection is unchecked"
        return {"verdict": "unchecked", "signals": signals, "rule": rule, "message": message}
    agreement = signals[HEALTH_SIGNAL]
    if agreement >= HEALTH_THRESHOLD:
        message = (f"the rows most like the chosen answers and the rows that most move the preference overlap by "
                   f"{agreement:.0%}")  # fmt: skip
        return {"verdict": "ok", "signals": signals, "rule": rule, "message": message}
    message = (
        f"the rows most like the chosen answers and the rows that most move the preference toward them overlap by only "
        f"{agreement:.0%}, so the target is ambiguous to the model and the selection is likely noise. Fix: give more, "
        "and more typical, preference pairs whose rejected answers are the near-misses you want avoided (the paper "
        "uses 5-10 per subtask), warm up longer (more epochs), or select a smaller share of the pool"
    )
    return {"verdict": "noise", "signals": signals, "rule": rule, "message": message}
