"""The quality benchmark, reduced (1000-row pool, one seed): it runs end to end, writes its outputs, and ROSE beats
random selection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks.quality.run import QualityBenchConfig, run_quality_benchmark
from rose_fixtures.evaluation import oracle_scores, selection_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_selection_metrics_and_oracle():
    helpful = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    harmful = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    source = ["h", "h", "x", "x", "o", "o", "o", "o", "o", "o"]
    out = selection_metrics(np.array([0, 2, 4, 5]), helpful, harmful, source)
    assert (out["precision"], out["harmful_share"], out["recall"]) == (0.25, 0.25, 0.5)
    assert out["by_source"] == {"o": 2, "h": 1, "x": 1}
    order = np.argsort(-oracle_scores(helpful, harmful), kind="stable")
    assert order[:2].tolist() == [0, 1] and set(order[-2:].tolist()) == {2, 3}


@pytest.mark.slow
def test_reduced_benchmark(tmp_path):
    config = QualityBenchConfig.quick(output_dir=str(tmp_path), train_full_pool=False)
    results = run_quality_benchmark(config)

    for name in ("quality.json", "quality.md", "plots/selection_vs_budget.png", "plots/final_models.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    for name in ("plots/selection_vs_budget.png", "plots/final_models.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(results["summary"]))
    markdown = (tmp_path / "quality.md").read_text()
    for text in ("## Targets (issue 11)", "## Final models", "## Health check", "ROSE, robust scoring", "ROSE, paper scoring (default)", "LESS"):
        assert text in markdown

    summary = results["summary"]
    assert set(summary["selection"]) == {"random", "bm25", "rds", "less", "rose", "dpo+sft", "robust", "oracle"}
    assert set(summary["final"]) == {"base", "random", "bm25", "rds", "less", "rose", "dpo+sft", "robust", "oracle"}
    for model, metrics in summary["final"].items():
        assert 0 <= metrics["preference_accuracy"]["mean"] <= 1, model
        assert 0 <= metrics["exact_match"]["mean"] <= 1, model
    run = results["runs"][0]
    warmup = run["warmup"]
    assert warmup["steps"] == 4 * 7 and len(warmup["checkpoint_steps"]) == 4  # 50 warmup rows, batch 8, 4 epochs
    # Robust reads one checkpoint, paper all four: its feature time is a fraction of paper's.
    assert 0 < warmup["feature_seconds"]["robust"] < warmup["feature_seconds"]["paper"]
    assert run["health"]["robust"]["verdict"] in ("ok", "noise")

    # The targets are computed from the runs, as stated.
    targets = results["targets"]
    robust = summary["selection"]["robust"]["0.05"]["precision"]["mean"]
    oracle = summary["selection"]["oracle"]["0.05"]["precision"]["mean"]
    assert targets["precision"]["ratio"] == pytest.approx(robust / oracle)
    assert targets["precision"]["holds"] == (robust >= 0.9 * oracle and targets["precision"]["worst_run_ratio"] >= 0.6)

    # A selection beats chance at a reduced size: robust's 5% is more often helpful than a random 5%.
    random = summary["selection"]["random"]["0.05"]["precision"]["mean"]
    assert robust > random, (robust, random)

    # A second call finds every run done and reuses it.
    again = run_quality_benchmark(config)
    assert again["runs"][0]["seconds"] == results["runs"][0]["seconds"]


def test_trust_calibration_counts_warnings_by_band():
    """The trust benchmark's health tables count, per band, the cases the verdict and each threshold warn on."""
    from benchmarks.quality.trust_analysis import calibrate
    from benchmarks.quality.trust_render import health_table

    def case(rel, agreement, verdict):
        return {"relative_precision": rel, "signals": {"objective_agreement": agreement, "verdict": verdict}}

    run = {"family": "f", "seed": 3, "selections": {
        "a": {**case(0.3, 0.1, "noise"), "second_warmup": {"relative_precision": 0.9},
              "second_warmup_signals": case(0.9, 0.8, "ok")["signals"]},
        "b": case(0.6, 0.5, "ok"), "c": case(0.95, 0.2, "noise"), "d": case(0.4, None, "unchecked"),
        "random": {"relative_precision": 0.1},  # no signals: not a case
    }}  # fmt: skip
    health = calibrate([run])
    bands = sorted((c["selection"], c["band"]) for c in health["cases"])
    assert bands == [("a", "bad"), ("b", "middling"), ("c", "good"), ("d", "bad"), ("second warmup: a", "good")]
    assert health["shipped"]["every selection"] == {"bad": "2/2", "middling": "0/1", "good": "1/2"}
    grid = {row["threshold"]: row for row in health["signals"]["objective_agreement"]}
    assert grid[0.5] == {"threshold": 0.5, "bad": "2/2", "middling": "0/1", "good": "1/2"}  # None warns: unchecked
    assert "objective_agreement" in health_table(health)
