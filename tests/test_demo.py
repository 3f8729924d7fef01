"""The offline demo, `--quick`: report.md with the evaluation section, and its plots."""

from __future__ import annotations

import json

import pytest

from rose_hf.demo import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_demo(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--quick"])

    report = (tmp_path / "selection" / "report.md").read_text()
    assert "## Evaluation of the final models" in report
    for text in ("ROSE 5%", "Random 5%", "Base model (untrained)", "Preference accuracy", "Exact match"):
        assert text in report
    # The report's own sections (write_report) are there too.
    assert "## Score distribution" in report and "## Selection by data source" in report
    for name in ("demo_evaluation.png", "demo_selection.png", "scores.png", "sources.png"):
        path = tmp_path / "selection" / "report" / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert f"report/{name}" in report

    saved = json.loads((tmp_path / "demo.json").read_text())
    assert set(saved["final"]) == {"base", "rose", "random"}
    assert saved["selection"]["rose"]["k"] == saved["selection"]["random"]["k"] == 50  # 5% of 1000
    assert 0 <= results["final"]["rose"]["preference_accuracy"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "final", "selection", "warmup"]
