"""The speed benchmark's quick mode runs end to end and writes a complete report (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.speed.run import QUICK_SIZES, SpeedBenchConfig, main, rank_correlation, top_overlap


def _positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} = {value!r} is not a number"
    assert math.isfinite(value) and value > 0, f"{where} = {value!r} is not positive and finite"


def _timing(entry: dict, where: str) -> None:
    for key in ("seconds_per_example", "examples_per_s", "tokens_per_s", "peak_memory_mb"):
        _positive(entry[key], f"{where}.{key}")


@pytest.mark.slow
def test_quick_speed_benchmark_writes_every_section(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--quick", "--device", "cpu"])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved == json.loads(json.dumps(results))
    markdown = (tmp_path / "speed.md").read_text()
    assert "# rose_hf speed benchmark" in markdown and "| floor" in markdown

    for key in ("environment", "config", "model", "floor", "write", "extraction", "phases", "less_reference", "vmap",
                "scoring", "quality", "ratios"):  # fmt: skip
        assert key in saved, key
    assert saved["environment"]["torch"] and saved["environment"]["device_name"]
    _positive(saved["environment"]["torch_num_threads"], "threads")
    assert saved["config"]["quick"] and saved["config"]["batch_sizes"] == list(QUICK_SIZES["batch_sizes"])
    _positive(saved["model"]["lora_parameters"], "lora_parameters")

    sizes = saved["config"]["batch_sizes"]
    assert [row["batch_size"] for row in saved["floor"]] == sizes
    for row in saved["floor"]:
        _timing(row, f"floor[{row['batch_size']}]")
    assert set(saved["extraction"]) == {"rademacher", "sjlt", "none"}
    for kind, rows in saved["extraction"].items():
        assert [row["batch_size"] for row in rows] == sizes
        for row in rows:
            _timing(row, f"extraction.{kind}[{row['batch_size']}]")
            _positive(row["write_seconds_per_example"], "write")
            _positive(row["vs_floor_paired"], "vs_floor_paired")
        _positive(saved["write"][kind]["seconds_per_row"], f"write.{kind}")
    assert saved["extraction"]["none"][0]["feature_dim"] == saved["model"]["lora_parameters"]

    phases = saved["phases"]
    for name in ("forward_backward", "assembly", "adam"):
        _positive(phases[name]["seconds"], f"phases.{name}")
    for name in ("projection", "normalise", "to_host", "write"):
        for kind in ("rademacher", "sjlt", "none"):
            _positive(phases[name][kind]["seconds"], f"phases.{name}.{kind}")
    for name in ("forward_backward", "adam"):
        _positive(phases[name]["peak_memory_mb"], f"phases.{name}.peak_memory_mb")
    shares = phases["shares"]["rademacher"]
    assert sum(v for k, v in shares.items() if k != "sum_of_phases_seconds") == pytest.approx(1.0)

    reference = saved["less_reference"]
    _timing(reference, "less_reference")
    # The LESS-style loop and the batched hooks compute the same features.
    assert reference["max_abs_feature_difference_vs_rose_hf"] < 1e-3

    assert saved["vmap"]["eager"]["status"] == "ok"
    _timing(saved["vmap"]["eager"], "vmap.eager")
    assert saved["vmap"]["eager"]["relative_difference_vs_hooks"] < 1e-3
    assert saved["vmap"]["sdpa"]["status"] in ("ok", "failed")
    if saved["vmap"]["sdpa"]["status"] == "failed":
        assert saved["vmap"]["sdpa"]["error"]

    runs = saved["scoring"]["runs"]
    assert [run["rows"] for run in runs] == list(QUICK_SIZES["pool_sizes"])
    for run in runs:
        for key in ("seconds", "rows_per_s", "peak_rss_mb", "peak_anon_mb", "file_mb"):
            _positive(run[key], f"scoring[{run['rows']}].{key}")
        assert run["scores_finite"]
    _positive(saved["scoring"]["peak_rss_ratio_largest_vs_smallest"], "scoring ratio")

    quality = saved["quality"]
    assert set(quality["kinds"]) == {"rademacher", "sjlt"}
    for kind, entry in quality["kinds"].items():
        assert -1 <= entry["spearman_vs_exact"] <= 1 and 0 <= entry["top5_overlap_vs_exact"] <= 1, kind
    assert 0 <= quality["int8_vs_float16"]["top5_overlap"] <= 1

    headline = saved["ratios"]["headline"]
    for key in ("extraction_vs_floor", "extraction_vs_floor_paired", "extraction_vs_floor_best_of_repeats", "speedup_vs_less_reference",
                "hooks_assembly_overhead_vs_forward_backward"):  # fmt: skip
        _positive(headline[key], f"headline.{key}")
    for kind, by_batch in saved["ratios"]["extraction_vs_floor_per_example"].items():
        for batch_size, ratio in by_batch.items():
            _positive(ratio, f"ratio.{kind}[{batch_size}]")


def test_config_presets_and_validation():
    quick = SpeedBenchConfig(quick=True, batch_sizes=(2, 8))
    assert quick.batch_sizes == (2, 8, 16)  # the target batch size is always measured
    assert quick.seq_len == QUICK_SIZES["seq_len"]
    assert SpeedBenchConfig().projection_dim == 8192
    with pytest.raises(ValueError, match="projections"):
        SpeedBenchConfig(projections=("gaussian",))
    with pytest.raises(ValueError, match="default_projection"):
        SpeedBenchConfig(projections=("rademacher",))  # the default (sjlt) must be measured


def test_rank_statistics():
    import numpy as np

    a = np.arange(40, dtype=np.float64)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert top_overlap(a, a) == 1.0
    assert top_overlap(a, -a) == 0.0
