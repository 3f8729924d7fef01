"""The scale benchmark: a few hundred rows end to end, with figures consistent with the files it wrote (no assertion
on speed: the machine is shared); and the 8B cost table's arithmetic against a row computed by hand."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks.scale.cost_table import PAPER, Hardware, Setting, cost_row, render_table
from benchmarks.scale.pool import preference_pairs, scale_pool
from benchmarks.scale.run import folder_bytes, main


def test_the_pool_is_tiled_in_arrow_with_distinct_prompts():
    pool = scale_pool(12_345)
    assert len(pool) == 12_345 and pool.column_names == ["prompt", "completion", "source"]
    assert len(set(pool.select(range(0, 12_345, 97))["prompt"])) == len(range(0, 12_345, 97))
    assert pool[4000 + 1]["completion"] == pool[1]["completion"]  # the 4,000-row base repeats
    assert len(preference_pairs(6)) == 6


@pytest.mark.slow
def test_a_small_scale_run_is_consistent_with_its_files(tmp_path, smollm2):
    rows = 300
    result = main(["--pool_size", str(rows), "--output_dir", str(tmp_path), "--warmup_rows", "16", "--keep",
                   "--no-report", "--tokenizer", smollm2.path, "--projection_dim", "64"])
    assert json.load(open(tmp_path / f"scale_{rows}.json")) == json.loads(json.dumps(result))
    assert (tmp_path / f"scale_{rows}.md").exists()
    stored = result["modes"]["stored"]
    selection_dir = tmp_path / f"run_{rows}_stored" / "selection"
    features = selection_dir / "features"
    assert len(stored["passes"]) == stored["plan"]["num_passes"] == 1
    for measured in stored["passes"]:
        assert measured["rows"] == rows
        assert measured["rows_per_second"] == pytest.approx(rows / measured["seconds"])
        assert measured["bytes"] == folder_bytes(str(features / f"checkpoint-{measured['step']}"))
    assert stored["feature_bytes_per_row"] == pytest.approx(folder_bytes(str(features)) / rows)
    tokens = folder_bytes(str(selection_dir / "tokens"))  # the in-memory pool's scratch tokens, counted apart
    assert tokens > 0 and stored["tokens_bytes_per_row"] == pytest.approx(tokens / rows)
    assert stored["disk_bytes_per_row"] == pytest.approx((folder_bytes(str(selection_dir)) - tokens) / rows)
    # the plan's exact part covers every array; its bound covers the whole folder
    arrays = sum(os.path.getsize(os.path.join(base, name)) for base, _, names in os.walk(selection_dir)
                 for name in names if name.endswith((".npy", ".done")))
    assert arrays <= stored["plan"]["array_bytes"] and stored["selection_dir_bytes"] <= stored["plan"]["total_bytes"]
    assert stored["num_selected"] == 15 and stored["reload_seconds"] > 0
    # the selection runs when the warmup ends: its window holds the scoring that selection.json records
    assert stored["score_select_seconds"] >= stored["score_seconds_recorded"] > 0
    assert stored["estimate"]["remaining_rows"] >= 0
    for stage in ("features", "selection", "reload"):
        assert stored[f"peak_rss_{stage}_beyond_baseline_mb"] == pytest.approx(
            stored[f"peak_rss_{stage}_mb"] - result["rss_baseline_mb"])
        assert stored[f"peak_anon_{stage}_beyond_baseline_mb"] == pytest.approx(
            stored[f"peak_anon_{stage}_mb"] - result["anon_baseline_mb"])
        assert 0 < stored[f"peak_anon_{stage}_mb"] <= stored[f"peak_rss_{stage}_mb"]
    compared = main(["--output_dir", str(tmp_path), "--compare", str(tmp_path / f"scale_{rows}.json")])
    assert compared["runs"][0]["pool_size"] == rows and (tmp_path / "scale_compare.md").exists()


def test_cost_table_matches_a_row_computed_by_hand():
    hardware = Hardware(parameters=8e9, gpus=8, peak_flops=1e15, mfu=0.3, feature_over_floor=1.5,
                        tokens_per_row=500, pairs=10)
    # floor: 8 x 0.3 x 1e15 / (6 x 8e9) = 50,000 tokens/s
    assert hardware.floor_tokens_per_second == pytest.approx(50_000)
    paper = cost_row(1_000_000, PAPER, hardware)
    # 4 epochs x 5% warmup = 0.2 pool-epochs; 4 feature passes at 1.5x: 6.2 plain-training pool-epochs
    assert paper["pool_epochs"] == pytest.approx(4.2) and paper["pool_epochs_time"] == pytest.approx(6.2)
    assert paper["hours"] == pytest.approx(6.2 * 1e6 * 500 / 50_000 / 3600)  # 17.2 h
    # The plan's bytes (tested byte for byte against a run's files in tests/rose_hf/test_plan.py): the features, and
    # a little more (statuses, validation features, headers, chunk records).
    assert paper["disk_bytes"] == pytest.approx(4 * 1_000_000 * 8192 * 2, rel=1e-3)
    new = cost_row(1001, Setting("b", checkpoints=2, prefilter_fraction=0.2, stored=False), hardware)
    assert new["featured_rows"] == 201  # ceil(0.2 x 1001)
    assert new["pool_epochs"] == pytest.approx(0.2 + 1 / 3 + 2 * 201 / 1001)
    # per pass 201 rows x 10 pairs x 2 objectives of float32 (+ validation features); the first stage's (1001, 10)
    # float32 cosines
    features = 2 * (201 * 10 * 2 * 4 + 2 * 10 * 8192 * 4)
    assert new["disk_bytes"] == pytest.approx(features + 1001 * 10 * 4, rel=0.02)
    table = render_table(hardware=hardware)
    assert table.startswith("EXTRAPOLATION") and table.count("\n| (") == 9
    assert math.isclose(Hardware().feature_over_floor, 1.31)
