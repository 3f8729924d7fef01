"""The selection report, on a fake finished run: real feature store and selection, random features, no training."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from accelerate.state import PartialState
from datasets import Dataset

from rose_hf.cache.keys import feature_settings
from rose_hf.cache.store import STATUS_EMPTY, STATUS_OK, FeatureStore
from rose_hf.features.projection import make_projector, resolve_projection
from rose_hf.report import escape_cell, report_from_output_dir, write_report
from rose_hf.rose_config import RoseConfig
from rose_hf.scoring.budget import select_top
from rose_hf.scoring.selection import SelectionResult, select_from_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SOURCE_SIZES = {"alpha": 30, "beta": 20, "gamma": 10}
INVALID_ROWS = (31, 55)  # one beta row, one gamma row
SUBTASKS = ["x", "x", "y", "y", "z"]
DIM = 16
NUM_PARAMS = 100  # the fake LoRA's size: larger than DIM, so the sjlt projection is used
STEPS_AND_RATES = {10: [2e-5, 1e-5], 20: [5e-6, 5e-6]}  # mean LRs 1.5e-5 and 5e-6: weights 0.75 and 0.25
TOKENIZATION = {"pool_truncated": 3, "pool_without_completion": 2, "pairs_truncated": 1, "tokenize_seconds": 0.25}
SECTIONS = (
    "## Summary",
    "### Time and storage per stage",
    "## Score distribution",
    "## Selection by data source",
    "## Per-subtask contribution",
    "## Budget curve",
    "## Checkpoint weights",
    "## Top selected examples",
)
EXTRA = "## Evaluation\n\nWin rate of the selected model: 0.61 (fake)."


@pytest.fixture(scope="module", autouse=True)
def accelerate_state():
    # select_from_store logs through accelerate, which needs a state (as under any Trainer).
    return PartialState()


@dataclass
class FakeRun:
    output_dir: str
    pool: Dataset
    result: SelectionResult
    config: RoseConfig
    store: FeatureStore


def _pool(text_format: str = "prompt_completion", with_source: bool = True) -> Dataset:
    sources = [name for name, size in SOURCE_SIZES.items() for _ in range(size)]
    prompts = [f"question {i} from {source}" for i, source in enumerate(sources)]
    prompts[0] = "pipe | in\nprompt <b>bold</b> " + "long " * 60  # the top row: escaping and truncation
    completions = [f" answer {i}" for i in range(len(sources))]
    if text_format == "messages":
        data = {
            "messages": [
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                for p, c in zip(prompts, completions)
            ]
        }
    else:
        data = {"prompt": prompts, "completion": completions}
    if with_source:
        data["source"] = sources
    return Dataset.from_dict(data)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_run(output_dir: str, pool: Dataset, seed: int = 0, num_params: int = NUM_PARAMS, **settings) -> FakeRun:
    """Write two complete checkpoints through the real store API, then run the real selection.

    `num_params` is the fake LoRA's size: the projection is resolved and described as `Featurizer` does, so
    meta.json records what a real run would have used for these `settings`.
    """
    rng = np.random.default_rng(seed)
    num_rows = len(pool)
    defaults = dict(selection_fraction=0.2, projection="sjlt", projection_dim=DIM, validation_objective="sft",
                    feature_dtype="float16", chunk_size=25, scoring="paper")  # fmt: skip
    config = RoseConfig(selection_dir=output_dir, **{**defaults, **settings})
    kind, dim = resolve_projection(config.projection, num_params, config.projection_dim)
    projection = make_projector(kind, num_params, dim, seed=config.projection_seed).describe()
    direction = _unit(rng.normal(size=dim))
    run_args = {
        "base_model": "fake",
        "pool_fingerprint": pool._fingerprint,
        "pool_size": num_rows,
        **feature_settings(config),
    }
    store = FeatureStore(output_dir, run_args)
    store.prepare()
    # alpha rows lean towards the validation direction, so the selection is skewed towards alpha (and row 0 is top).
    lean = np.array([0.3 if i < SOURCE_SIZES["alpha"] else 0.0 for i in range(num_rows)])[:, None]
    for step, rates in STEPS_AND_RATES.items():
        features = _unit(lean * direction + rng.normal(size=(num_rows, dim)) * 0.3).astype(np.float32)
        features[0] = direction
        status = np.full(num_rows, STATUS_OK, dtype=np.int8)
        for row in INVALID_ROWS:
            features[row] = 0.0
            status[row] = STATUS_EMPTY
        checkpoint = store.checkpoint(step)
        checkpoint.create(num_rows, dim, "float16", config.chunk_size, learning_rates=rates)
        for chunk in range(checkpoint.num_chunks()):
            rows = checkpoint.chunk_rows(chunk)
            checkpoint.write_chunk(chunk, features[rows.start : rows.stop], status[rows.start : rows.stop])
        validation = _unit(direction + rng.normal(size=(len(SUBTASKS), dim)) * 0.1)
        checkpoint.write_validation({"dpo": validation, "sft": validation})
        checkpoint.finalize(meta={"pool_seconds": 1.5, "validation_seconds": 0.5, "projection": projection})
    result = select_from_store(store, pool, SUBTASKS, config, extra_info={"tokenization": dict(TOKENIZATION)})
    return FakeRun(output_dir, pool, result, config, store)


@pytest.fixture
def run(tmp_path) -> FakeRun:
    return make_run(str(tmp_path / "run"), _pool())


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _section(text: str, heading: str) -> str:
    # Up to the next heading of any level, so "## Summary" excludes its "### Time and storage" subsection.
    start = text.index(heading + "\n")
    following = re.search(r"\n#{1,6} ", text[start + len(heading) :])
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def _cells(line: str) -> list[str]:
    # Split on unescaped pipes only: escaped ones belong to the cell text.
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _table(section: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return _cells(lines[0]), [_cells(line) for line in lines[2:]]


def _check_images(output_dir: str, text: str) -> list[str]:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for image in images:
        path = os.path.join(output_dir, image)
        assert os.path.isfile(path), image
        assert os.path.getsize(path) > len(PNG_MAGIC), image
        with open(path, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC, image
    return images


def _expected_sources(pool: Dataset, selected: list[int]) -> tuple[Counter, Counter]:
    return Counter(pool["source"]), Counter(pool["source"][i] for i in selected)


def test_report_sections_images_and_extra(run):
    path = write_report(run.output_dir, run.pool, run.result, run.config, run.store, extra_sections=[EXTRA])
    assert path == os.path.join(run.output_dir, "report.md")
    text = _read(path)
    for heading in SECTIONS:
        assert heading + "\n" in text, heading
    images = _check_images(run.output_dir, text)
    assert sorted(images) == sorted(
        f"report/{name}" for name in ("scores.png", "sources.png", "subtasks.png", "budget.png", "checkpoints.png")
    )
    assert text.rstrip("\n").endswith(EXTRA)  # verbatim, last


def test_summary_and_costs(run):
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    summary = dict(_table(_section(text, "## Summary"))[1])
    num_selected = len(run.result.selected_indices)
    assert num_selected == 12  # 20% of 60
    assert summary["Pool rows"] == "60"
    assert summary["Selected rows"].startswith("12 (20.00% of the pool")
    assert summary["Rows without a usable gradient"].startswith(f"{len(INVALID_ROWS)} (")
    assert "2 with no completion token left" in summary["Rows without a usable gradient"]
    assert summary["Checkpoints used (step: weight)"] == "10: 0.750, 20: 0.250"
    assert summary["Validation objective"] == "sft"
    assert summary["Projection"].startswith(f"sjlt, {DIM} dims")
    assert summary["Truncated to max_length=2048"] == "3 pool rows, 1 preference pairs"
    costs = dict((row[0], row[1:]) for row in _table(_section(text, "### Time and storage per stage"))[1])
    assert costs["Tokenization (pool + pairs)"][0] == "0.25 s"
    for step in STEPS_AND_RATES:
        assert costs[f"Features, checkpoint {step}"][0].startswith("2.00 s (pool 1.50 s, validation 0.50 s)")
        assert costs[f"Features, checkpoint {step}"][1] != "n/a"
    assert "Scoring + selection" in costs and "**Total**" in costs


def test_source_shares_match_selection(run):
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    header, rows = _table(_section(text, "## Selection by data source"))
    assert header == ["Source", "Pool rows", "Share of pool", "Selected", "Share of selection", "Selection rate"]
    pool_counts, selected_counts = _expected_sources(run.pool, run.result.selected_indices)
    num_selected = len(run.result.selected_indices)
    assert selected_counts["alpha"] > selected_counts["beta"]  # the fake run is skewed as intended
    assert {row[0] for row in rows} == set(SOURCE_SIZES)
    for source, in_pool, pool_share, chosen, share, rate in rows:
        assert int(in_pool) == pool_counts[source]
        assert pool_share == f"{100 * pool_counts[source] / 60:.1f}%"
        assert int(chosen) == selected_counts[source]
        assert share == f"{100 * selected_counts[source] / num_selected:.1f}%"
        assert rate == f"{100 * selected_counts[source] / pool_counts[source]:.1f}%"
    assert sum(int(row[3]) for row in rows) == num_selected


def test_subtasks_budgets_checkpoints(run):
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    _, rows = _table(_section(text, "## Per-subtask contribution"))
    wins = run.result.info["argmax_subtask_counts"]
    means = run.result.info["per_subtask_mean"]
    assert [row[0] for row in rows] == ["x", "y", "z"]
    for name, mean, best, _ in rows:
        assert int(best) == wins[name]
        assert float(mean) == pytest.approx(means[name], abs=1e-4)
    assert sum(int(row[2]) for row in rows) == 60 - len(INVALID_ROWS)

    header, rows = _table(_section(text, "## Budget curve"))
    assert header[:4] == ["Budget", "Selected", "Lowest score", "Overlap with chosen"]
    assert header[4:] == ["alpha", "beta", "gamma"]
    valid = run.result.scores > np.finfo(np.float32).min
    chosen = set(run.result.selected_indices)
    by_label = {row[0]: row for row in rows}
    assert set(by_label) == {"1%", "2%", "5%", "10%", "20% (chosen)"}
    for label, fraction in {"1%": 0.01, "2%": 0.02, "5%": 0.05, "10%": 0.1, "20% (chosen)": 0.2}.items():
        indices = select_top(run.result.scores, fraction=fraction, valid=valid)
        row = by_label[label]
        assert int(row[1]) == len(indices)
        assert float(row[2]) == pytest.approx(float(run.result.scores[indices].min()), abs=1e-4)
        assert int(row[3].split()[0]) == len(chosen & set(indices.tolist()))
        counts = Counter(run.pool["source"][i] for i in indices)
        assert row[4:] == [f"{100 * counts[s] / len(indices):.1f}%" for s in ("alpha", "beta", "gamma")]

    _, rows = _table(_section(text, "## Checkpoint weights"))
    assert rows == [["10", "2", "1.5e-05", "0.7500"], ["20", "2", "5e-06", "0.2500"]]


def test_top_examples_are_escaped(run):
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    section = _section(text, "## Top selected examples")
    header, rows = _table(section)
    assert header == ["Rank", "Pool row", "Score", "source", "prompt", "completion"]
    assert len(rows) == 10
    assert all(len(row) == len(header) for row in rows)  # no pipe or newline broke a row
    assert [int(row[1]) for row in rows] == run.result.selected_indices[:10]
    assert rows[0][1] == "0"
    top_prompt = rows[0][4]
    assert top_prompt.startswith("pipe \\| in<br>prompt \\<b\\>bold\\</b\\>")
    assert top_prompt.endswith("…") and "long long" in top_prompt
    assert "<b>" not in section


def test_escape_cell():
    assert escape_cell("a|b\nc") == "a\\|b<br>c"
    assert escape_cell("x\r\ny\rz") == "x<br>y<br>z"
    assert escape_cell("*[link](u)* `code` <i>") == "\\*\\[link\\](u)\\* \\`code\\` \\<i\\>"
    assert escape_cell(None) == ""
    long = escape_cell("|" * 500)
    assert long.endswith("…") and long.count("\\|") == 200  # cut before escaping: no half escape sequence
    assert escape_cell("y" * 500, max_chars=None) == "y" * 500


def test_pool_without_source_column(run):
    write_report(run.output_dir, run.pool, run.result, run.config, run.store)
    assert os.path.exists(os.path.join(run.output_dir, "report", "sources.png"))
    pool = run.pool.remove_columns("source")
    text = _read(write_report(run.output_dir, pool, run.result, run.config, run.store))
    assert "Skipped: the pool has no `source` column." in _section(text, "## Selection by data source")
    images = _check_images(run.output_dir, text)
    assert "report/sources.png" not in images
    # A stale plot from the earlier report must not survive next to this one.
    assert not os.path.exists(os.path.join(run.output_dir, "report", "sources.png"))
    header, _ = _table(_section(text, "## Budget curve"))
    assert header == ["Budget", "Selected", "Lowest score", "Overlap with chosen"]


def test_messages_pool(tmp_path):
    run = make_run(str(tmp_path / "messages"), _pool("messages"), seed=1)
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    header, rows = _table(_section(text, "## Top selected examples"))
    assert header == ["Rank", "Pool row", "Score", "source", "messages"]
    assert rows[0][4].startswith("user: pipe \\| in<br>prompt")


def test_pool_of_wrong_length_is_refused(run):
    with pytest.raises(ValueError, match="pool has 59 rows"):
        write_report(run.output_dir, run.pool.select(range(59)), run.result, run.config, run.store)


def test_report_from_output_dir_with_pool(run):
    first = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    path = report_from_output_dir(run.output_dir, pool=run.pool)
    text = _read(path)
    for heading in SECTIONS:
        assert heading + "\n" in text, heading
    assert len(_check_images(run.output_dir, text)) == 5
    # The same numbers as the live report (timings and sizes included, read back from the run folder).
    for heading in SECTIONS[:2] + SECTIONS[3:]:
        assert _table(_section(text, heading)) == _table(_section(first, heading)), heading


def test_report_from_output_dir_without_pool(run):
    write_report(run.output_dir, run.pool, run.result, run.config, run.store)
    text = _read(report_from_output_dir(run.output_dir))
    for heading in SECTIONS:
        assert heading + "\n" in text, heading
    _check_images(run.output_dir, text)
    header, rows = _table(_section(text, "## Selection by data source"))
    assert header == ["Source", "Selected", "Share of selection"]
    _, selected_counts = _expected_sources(run.pool, run.result.selected_indices)
    num_selected = len(run.result.selected_indices)
    assert {row[0]: int(row[1]) for row in rows} == {s: c for s, c in selected_counts.items()}
    for source, _, share in rows:
        assert share == f"{100 * selected_counts[source] / num_selected:.1f}%"
    _, top = _table(_section(text, "## Top selected examples"))
    assert [int(row[1]) for row in top] == run.result.selected_indices[:10]
    assert top[0][4].startswith("pipe \\| in<br>prompt")
    summary = dict(_table(_section(text, "## Summary"))[1])
    assert summary["Projection"].startswith(f"sjlt, {DIM} dims")  # from run.json, not the defaults
    assert summary["Truncated to max_length=2048"] == "3 pool rows, 1 preference pairs"  # from report/report.json


def test_report_from_output_dir_without_saved_report(run):
    """A run folder with no earlier report: config and tokenization counts come from selection.json."""
    select_from_store(run.store, run.pool, SUBTASKS, run.config)  # loads the finished selection
    assert not os.path.exists(os.path.join(run.output_dir, "report"))
    text = _read(report_from_output_dir(run.output_dir))
    summary = dict(_table(_section(text, "## Summary"))[1])
    assert summary["Validation objective"] == "sft"
    assert summary["Projection"].startswith(f"sjlt, {DIM} dims")
    assert summary["Subtask aggregation"] == "max"
    assert summary["Selected rows"] == "12 (20.00% of the pool; selection_fraction=0.2)"
    assert summary["Truncated to max_length=2048"] == (
        f"{TOKENIZATION['pool_truncated']} pool rows, {TOKENIZATION['pairs_truncated']} preference pairs"
    )
    _, rows = _table(_section(text, "## Checkpoint weights"))
    assert [row[3] for row in rows] == ["0.7500", "0.2500"]
    # Without `selected/` and without a pool, the per-row sections are skipped rather than failing.
    shutil.rmtree(os.path.join(run.output_dir, "selected"))
    text = _read(report_from_output_dir(run.output_dir))
    assert "Skipped: neither the pool nor the selected rows are available." in text
    assert "Skipped: neither the pool nor `selected/` is available." in text


def test_report_from_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished selection"):
        report_from_output_dir(str(tmp_path))


def test_budget_curve_around_a_size_budget(run):
    """A budget given as a size (4 rows, 6.67%) is its own row, and larger budgets overlap it only partly."""
    config = dataclasses.replace(run.config, selection_size=4)
    result = select_from_store(run.store, run.pool, SUBTASKS, config, write=False)
    assert len(result.selected_indices) == 4
    text = _read(write_report(run.output_dir, run.pool, result, config, run.store))
    _, rows = _table(_section(text, "## Budget curve"))
    assert [row[0] for row in rows] == ["1%", "2%", "5%", "6.67% (chosen)", "10%", "20%"]
    overlaps = {row[0]: row[3] for row in rows}
    assert overlaps["6.67% (chosen)"] == "4 (100.0%)"
    assert overlaps["10%"] == "4 (66.7%)"
    assert overlaps["20%"] == "4 (33.3%)"
    assert overlaps["5%"] == "3 (100.0%)"
    summary = dict(_table(_section(text, "## Summary"))[1])
    assert summary["Selected rows"] == "4 (6.67% of the pool; selection_size=4)"


def _png_title(path: str) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("Title", "")


def test_projection_shown_as_used_and_as_asked(tmp_path):
    """A LoRA smaller than projection_dim keeps exact gradients: the report shows that, not the request."""
    run = make_run(str(tmp_path / "small_lora"), _pool(), projection="rademacher", projection_dim=8192)
    assert run.store.completed_checkpoints()[0].meta["dim"] == NUM_PARAMS  # what featurization stored
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    summary = dict(_table(_section(text, "## Summary"))[1])
    used, asked = summary["Projection"].split("; ", 1)
    assert used == f"none, {NUM_PARAMS} dims (exact gradients)"
    assert asked.startswith("asked for rademacher, 8192 dims") and f"{NUM_PARAMS} parameters" in asked
    assert summary["Feature storage"] == f"float16, {NUM_PARAMS} values per row"
    assert "8192" not in summary["Feature storage"]
    # Rebuilt from the folder alone, the same (read from meta.json and layout.json, not from the config).
    rebuilt = dict(_table(_section(_read(report_from_output_dir(run.output_dir)), "## Summary"))[1])
    assert rebuilt["Projection"] == summary["Projection"]


def test_projection_as_asked_has_no_note(run):
    summary = dict(_table(_section(_read(write_report(run.output_dir, run.pool, run.result, run.config, run.store)),
                                   "## Summary"))[1])  # fmt: skip
    assert summary["Projection"] == f"sjlt, {DIM} dims (seed 0)"
    assert summary["Feature storage"] == f"float16, {DIM} values per row"


def test_health_verdict_comes_first(run):
    result = dataclasses.replace(run.result, info={**run.result.info, "health": {"verdict": "weak", "message": "x"}})
    section = _section(_read(write_report(run.output_dir, run.pool, result, run.config, run.store)), "## Summary")
    first = [line for line in section.splitlines()[1:] if line.strip()][0]
    assert first == "**Verdict: weak.** x"
    unchecked = dataclasses.replace(run.result, info={k: v for k, v in run.result.info.items() if k != "health"})
    plain = _section(_read(write_report(run.output_dir, run.pool, unchecked, run.config, run.store)), "## Summary")
    assert "Verdict" not in plain


def test_logged_plot_count_equals_linked_pngs(run, caplog):
    """The log counts every plot report.md links, the extra sections' too (the demo adds two to `report/`)."""
    write_report(run.output_dir, run.pool, run.result, run.config, run.store)  # creates report/
    from rose_hf.report.plots import grouped_bars, save_figure

    save_figure(grouped_bars(["a"], {"m": [1.0]}, "y", "Extra plot"), os.path.join(run.output_dir, "report", "x.png"))
    extra = EXTRA + "\n\n![extra](report/x.png)"
    with caplog.at_level(logging.INFO, logger="rose_hf"):
        text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store, extra_sections=[extra]))
    images = _check_images(run.output_dir, text)
    assert len(images) == 6
    logged = list(re.finditer(r"wrote the selection report to .* \((\d+) plots in ", caplog.text))[-1]
    assert logged and int(logged.group(1)) == len(images)
    assert "5 from the selection report, 1 from the extra sections" in caplog.text


def test_every_plot_has_a_title_and_its_legend_covers_nothing(run, monkeypatch):
    from rose_hf.report.context import ReportContext
    from rose_hf.report.plots import figure_title

    figures = {}
    original = ReportContext.image

    def keep(self, figure, name, alt):  # the real save, plus a handle on the figure to inspect
        figures[name] = figure
        return original(self, figure, name, alt)

    monkeypatch.setattr(ReportContext, "image", keep)
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    images = _check_images(run.output_dir, text)
    assert sorted(f"report/{name}" for name in figures) == sorted(images)
    for name, figure in figures.items():
        title = figure_title(figure)
        assert title and _png_title(os.path.join(run.output_dir, "report", name)) == title, name
        figure.canvas.draw()
        for legend in figure.legends + [axes.get_legend() for axes in figure.axes if axes.get_legend()]:
            box = legend.get_window_extent()
            for axes in figure.axes:
                assert not box.overlaps(axes.get_window_extent()), f"{name}: the legend covers the plot"
    assert figures["sources.png"].legends and figures["budget.png"].legends  # the two that had covering legends


def test_report_valid_rows_follow_select_top(run):
    """A row flagged valid but holding INVALID_SCORE is not valid (select_top's rule): not counted as valid."""
    from rose_hf.report.context import ReportContext
    from rose_hf.scoring.similarity import INVALID_SCORE

    scores = run.result.scores.copy()
    scores[5] = INVALID_SCORE
    result = dataclasses.replace(run.result, scores=scores)
    ctx = ReportContext(run.output_dir, run.pool, None, result, run.config, run.store)
    expected = np.zeros(len(scores), dtype=bool)
    expected[select_top(scores, size=len(scores) - len(INVALID_ROWS) - 1, valid=run.result.valid)] = True
    assert np.array_equal(ctx.valid, expected)


def _interval(text: str) -> tuple[float, float]:
    low, high = re.search(r"lie in [\[(](-?\d+), (-?\d+)\]", text).groups()
    return float(low), float(high)


@pytest.mark.parametrize(
    "scoring, objective, kind",
    [
        ("paper", "dpo", "cosine"),
        ("paper", "sft", "cosine"),
        ("paper", "dpo+sft", "rank"),
        ("robust", "dpo", "demoted"),
        ("robust", "dpo+sft", "demoted"),
        ("robust", "sft", "relevance"),
    ],
)
def test_the_report_says_what_was_scored_and_the_scores_lie_where_it_says(tmp_path, scoring, objective, kind):
    run = make_run(str(tmp_path / "run"), _pool(), scoring=scoring, validation_objective=objective)
    text = _read(write_report(run.output_dir, run.pool, run.result, run.config, run.store))
    summary = _section(text, "## Summary").replace("\n", " ")
    scores = run.result.scores[run.result.scores > np.finfo(np.float32).min]
    if kind == "demoted":
        low, high = map(float, re.search(r"in \[(-?\d+), (-?\d+)\], for the rows", summary).groups())
        demoted = re.search(r"demoted by (\d+), into \[(-?\d+), (-?\d+)\]", summary)
        shift, demoted_low, demoted_high = map(float, demoted.groups())
        kept, moved = scores[scores >= low], scores[scores < low]
        assert kept.size and moved.size  # the fake run has rows on both sides of the preference gate
        assert kept.max() <= high and demoted_low <= moved.min() and moved.max() <= demoted_high
        assert shift == high - demoted_high
    else:
        low, high = _interval(summary)
        assert low <= scores.min() and scores.max() <= high
    assert ("mean normalised ranks" in summary) == (kind == "rank")
    assert ("Scores are checkpoint-weighted cosine similarities" in summary) == (kind == "cosine")
    assert ("Scores are each row's relevance" in summary) == (kind in ("relevance", "demoted"))
    subtasks = _section(text, "## Per-subtask contribution")
    assert ("no per-subtask step" in subtasks) == (scoring == "robust")
    assert ("far to the left" in _section(text, "## Score distribution")) == (kind == "demoted")


def test_the_dpo_weight_is_reported_and_a_selection_recorded_before_it_existed_reads_as_half(run):
    """`dpo_weight` shows in the summary; a `selection.json` written before the field existed was scored with the
    plain mean rank, and says so."""
    import json

    config = dataclasses.replace(run.config, validation_objective="dpo+sft", dpo_weight=0.75)
    select_from_store(run.store, run.pool, SUBTASKS, config)
    summary = dict(_table(_section(_read(report_from_output_dir(run.output_dir)), "## Summary"))[1])
    assert summary["Validation objective"].endswith("DPO side weighted 0.75")
    path = os.path.join(run.output_dir, "selection.json")
    with open(path) as handle:
        recorded = json.load(handle)
    del recorded["config"]["dpo_weight"]
    with open(path, "w") as handle:
        json.dump(recorded, handle)
    summary = dict(_table(_section(_read(report_from_output_dir(run.output_dir)), "## Summary"))[1])
    assert summary["Validation objective"].endswith("DPO side weighted 0.5")
    select_from_store(run.store, run.pool, SUBTASKS, run.config)  # leave the module's run as the other tests expect
