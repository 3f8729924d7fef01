"""The speed benchmark: its quick run is complete and internally consistent (every reported ratio recomputes from the
raw timings it reports), its unprojected features are the exact per-example gradients, its scoring child scores the
rows it was given. No assertion on how fast anything is: the machine is shared."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
from helpers import ROOT

from benchmarks.common import fmt, fmt_stat, table
from benchmarks.speed.config import QUICK_SIZES, SpeedBenchConfig
from benchmarks.speed.quality import rank_correlation, top_overlap
from benchmarks.speed.render import render_markdown
from benchmarks.speed.run import main
from benchmarks.speed.scoring import run_scoring_child, write_pool_file

KINDS = ("rademacher", "sjlt", "none")


def _positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} = {value!r} is not a number"
    assert math.isfinite(value) and value > 0, f"{where} = {value!r} is not positive and finite"


# `seconds_all` is rounded to the microsecond: recomputed figures agree to that.
def _close(value: float, expected: float, where: str, rel: float = 1e-2) -> None:
    assert value == pytest.approx(expected, rel=rel, abs=2e-6), f"{where}: reported {value}, recomputed {expected}"


@pytest.mark.slow
def test_quick_speed_benchmark_is_complete_and_consistent(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--quick", "--device", "cpu"])

    # The JSON round-trips, and the markdown is a function of the JSON alone.
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved == json.loads(json.dumps(results))
    markdown = (tmp_path / "speed.md").read_text()
    assert markdown == render_markdown(saved)
    for heading in ("## Headline", "## Throughput", "## Where the time goes", "## torch.func vmap", "## Scoring",
                    "## Projection quality", "## Real shape"):  # fmt: skip
        assert heading in markdown, heading

    config, model = saved["config"], saved["model"]
    assert config["quick"] and config["batch_sizes"] == list(QUICK_SIZES["batch_sizes"])
    seq_len, target, default = config["seq_len"], config["target_batch_size"], config["default_projection"]
    assert saved["environment"]["torch"] and saved["environment"]["device_name"]

    # Floor: the per-batch figures are the median of the timed repeats.
    floor = {row["batch_size"]: row for row in saved["floor"]}
    assert list(floor) == config["batch_sizes"]
    for b, row in floor.items():
        assert len(row["seconds_all"]) >= config["repeats"]
        _close(row["seconds_per_batch"], statistics.median(row["seconds_all"]), f"floor[{b}]")
        _close(row["examples_per_s"], b / row["seconds_per_batch"], f"floor[{b}].examples_per_s", rel=1e-9)
        _close(row["tokens_per_s"], row["examples_per_s"] * seq_len, f"floor[{b}].tokens_per_s", rel=1e-9)
        _positive(row["peak_memory_mb"], f"floor[{b}].peak_memory_mb")

    # Extraction: featurize time per example + the amortised write, and the ratios to the floor, from raw timings.
    assert set(saved["extraction"]) == set(KINDS)
    vs_floor = saved["ratios"]["extraction_vs_floor_per_example"]
    for kind, rows in saved["extraction"].items():
        write = saved["write"][kind]["seconds_per_row"]
        _positive(write, f"write.{kind}")
        assert [row["batch_size"] for row in rows] == config["batch_sizes"]
        for row in rows:
            b, where = row["batch_size"], f"extraction.{kind}[{row['batch_size']}]"
            assert row["write_seconds_per_example"] == write
            per_example = statistics.median(row["seconds_all"]) / b + write
            _close(row["seconds_per_example"], per_example, where)
            _close(row["examples_per_s"], 1 / row["seconds_per_example"], where, rel=1e-9)
            paired = statistics.median(
                [(t / b + write) / (f / b) for t, f in zip(row["seconds_all"], floor[b]["seconds_all"], strict=True)]
            )
            _close(row["vs_floor_paired"], paired, f"{where}.vs_floor_paired")
            _close(vs_floor[kind][str(b)], per_example / floor[b]["seconds_per_example"], f"ratio {where}")
    assert saved["extraction"]["none"][0]["feature_dim"] == model["lora_parameters"]
    assert model["projection_dims"] == {"rademacher": config["projection_dim"], "sjlt": config["projection_dim"],
                                        "none": model["lora_parameters"]}  # fmt: skip

    # Phases: shares of their own sum; the assembly is the bmm plus the flattening.
    phases = saved["phases"]
    assembly = phases["assembly"]
    _close(assembly["seconds"], assembly["bmm_seconds"] + assembly["flatten_seconds"], "assembly", rel=1e-9)
    _positive(assembly["bmm_seconds"], "bmm_seconds")
    by_difference = phases["forward_backward_assembly"]["seconds"] - phases["forward_backward"]["seconds"]
    _close(assembly["by_difference_seconds"], by_difference, "by_difference", rel=1e-9)
    assert assembly["per_example_gradient_mb"] == pytest.approx(target * model["lora_parameters"] * 4 / 2**20)
    for kind in KINDS:
        shares = phases["shares"][kind]
        parts = [phases[name]["seconds"] for name in ("forward_backward", "assembly", "adam")]
        parts += [phases[name][kind]["seconds"] for name in ("projection", "normalise", "to_host", "write")]
        _close(shares["sum_of_phases_seconds"], sum(parts), f"phases.{kind}", rel=1e-9)
        assert sum(v for k, v in shares.items() if k != "sum_of_phases_seconds") == pytest.approx(1.0)
        _close(shares["projection"], phases["projection"][kind]["seconds"] / sum(parts), f"share.{kind}", rel=1e-9)
        _close(phases["write"][kind]["seconds"], saved["write"][kind]["seconds_per_row"] * target, "write", 1e-9)

    # The LESS-style loop computes our features, and its throughput is its median time plus the same write.
    reference = saved["less_reference"]
    assert reference["max_abs_feature_difference_vs_rose_hf"] < 1e-3
    reference_write = saved["write"][reference["projection"]]["seconds_per_row"]
    _close(
        reference["seconds_per_example"],
        statistics.median(reference["seconds_all"]) + reference_write,
        "less_reference",
    )

    headline = saved["ratios"]["headline"]
    assert (headline["projection"], headline["batch_size"]) == (default, target)
    assert headline["extraction_vs_floor"] == vs_floor[default][str(target)]
    assert headline["meets_target"] == (headline["extraction_vs_floor"] <= headline["target"])
    ours = next(row for row in saved["extraction"][default] if row["batch_size"] == target)
    _close(
        headline["speedup_vs_less_reference"], ours["examples_per_s"] / reference["examples_per_s"], "speedup", 1e-9
    )
    _close(headline["extraction_vs_floor_paired"], ours["vs_floor_paired"], "paired", rel=1e-9)
    _close(headline["hooks_assembly_overhead_vs_forward_backward"],
           assembly["seconds"] / phases["forward_backward"]["seconds"], "hooks overhead", rel=1e-9)  # fmt: skip

    # torch.func agrees with the hooks where it runs (eager attention always does).
    assert saved["vmap"]["eager"]["status"] == "ok"
    assert saved["vmap"]["eager"]["relative_difference_vs_hooks"] < 1e-3
    _close(saved["ratios"]["vmap_eager_seconds_vs_hooks"],
           saved["vmap"]["eager"]["seconds_per_batch"] / saved["vmap"]["eager"]["hooks"]["seconds_per_batch"],
           "vmap ratio", rel=1e-9)  # fmt: skip
    assert saved["vmap"]["sdpa"]["status"] == "ok" or saved["vmap"]["sdpa"]["error"]

    # Scoring: every pool asked for was scored, and the throughput follows from the reported rows and seconds.
    runs = saved["scoring"]["runs"]
    assert [run["rows"] for run in runs] == list(QUICK_SIZES["pool_sizes"])
    for run in runs:
        assert run["dim"] == config["scoring_dim"] and run["scores_finite"]
        _close(run["rows_per_s"], run["rows"] / run["seconds"], f"scoring[{run['rows']}]", rel=1e-9)
        assert run["file_mb"] == pytest.approx(run["rows"] * run["dim"] * 2 / 2**20)
        _positive(run["peak_anon_mb"], "peak_anon_mb")
    assert saved["ratios"]["scoring_rows_largest_vs_smallest"] == runs[-1]["rows"] / runs[0]["rows"]

    # Quality: the pipeline's unprojected features rank the pool exactly as the exact gradients do; the sketches
    # keep most of the ranking (deterministic seeds: a broken projection would sit near 0).
    kinds = saved["quality"]["kinds"]
    assert set(kinds) == set(KINDS)
    assert kinds["none"]["spearman_vs_exact"] == pytest.approx(1.0, abs=1e-6)
    assert kinds["none"]["top5_overlap_vs_exact"] == 1.0
    for kind in ("rademacher", "sjlt"):
        assert 0.8 < kinds[kind]["spearman_vs_exact"] <= 1, kind
    assert saved["ratios"]["quality"]["none_spearman_vs_exact"] == kinds["none"]["spearman_vs_exact"]
    assert saved["quality"]["int8_vs_float16"]["spearman"] > 0.99


def test_none_features_are_exact_per_example_gradients():
    """`Featurizer` with projection 'none' on the benchmark's quick model == a loop over single examples of
    `loss.backward()`, the LoRA `.grad` flattened, Adam (written out) and L2 normalisation."""
    import numpy as np
    import torch

    from benchmarks.speed.workload import build_lora_model, random_adam_state, synthetic_batch
    from rose_fixtures.tasks import vocabulary
    from rose_fixtures.tiny import build_tokenizer
    from rose_hf import RoseConfig
    from rose_hf.cache.store import STATUS_OK
    from rose_hf.features.featurizer import Featurizer
    from rose_hf.features.gradients import feature_mode

    config = SpeedBenchConfig(quick=True)
    cpu = torch.device("cpu")
    tokenizer = build_tokenizer(vocabulary())
    model = build_lora_model(config, tokenizer, cpu, torch.float32, "sdpa")
    batch = synthetic_batch(4, config.seq_len, len(tokenizer), seed=3, device=cpu)
    featurizer = Featurizer(model, RoseConfig(selection_dir="unused", projection="none", scoring="paper"), device=cpu)
    adam = random_adam_state(featurizer.collector.num_params, seed=0)
    with feature_mode(model):
        features, status = featurizer.pool_features(batch, adam)
        named = dict(model.named_parameters())
        params = [named[name] for name in featurizer.collector.names]
        expected = []
        for i in range(4):
            for param in params:
                param.grad = None
            model(**{key: value[i : i + 1] for key, value in batch.items()}, use_cache=False).loss.backward()
            g = torch.cat([param.grad.reshape(-1) for param in params])
            m = adam.beta1 * adam.exp_avg + (1 - adam.beta1) * g
            v = adam.beta2 * adam.exp_avg_sq + (1 - adam.beta2) * g * g
            row = m / torch.sqrt(v + adam.eps)
            expected.append((row / row.norm()).detach().numpy())
    assert features.shape == (4, featurizer.collector.num_params) and (status == STATUS_OK).all()
    np.testing.assert_allclose(features, np.stack(expected), atol=1e-5)


def test_scoring_child_scores_the_rows_it_was_given(tmp_path):
    import numpy as np

    rows, dim = 1500, 48
    pool_path, validation_path = str(tmp_path / "pool.npy"), str(tmp_path / "validation.npy")
    write_pool_file(pool_path, rows, dim, seed=1)
    pool = np.load(pool_path)
    assert pool.shape == (rows, dim) and pool.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(pool.astype(np.float32), axis=1), 1.0, atol=2e-3)  # unit rows
    np.save(validation_path, np.random.default_rng(0).standard_normal((4, dim)).astype(np.float32))

    child = run_scoring_child(pool_path, validation_path)
    assert (child["rows"], child["dim"], child["scored_rows"]) == (rows, dim, rows)
    assert child["finite"] and child["num_invalid"] == 0
    assert child["peak_anon_kb"] >= child["before_kb"]["RssAnon"] > 0


def test_config_presets_and_validation():
    from rose_hf.features.projection import PROJECTION_KINDS as PROJECTIONS

    quick = SpeedBenchConfig(quick=True, batch_sizes=(2, 8))
    assert quick.batch_sizes == (2, 8, 16)  # the target batch size is always measured
    assert quick.seq_len == QUICK_SIZES["seq_len"]
    assert SpeedBenchConfig().projection_dim == 8192
    assert SpeedBenchConfig().projections == PROJECTIONS  # the library's kinds, all timed by default
    with pytest.raises(ValueError, match="projections"):
        SpeedBenchConfig(projections=("gaussian",))
    with pytest.raises(ValueError, match="default_projection"):
        SpeedBenchConfig(projections=("rademacher",))  # the default (sjlt) must be measured


def test_help_imports_no_torch():
    code = "import sys; from benchmarks.speed.run import make_parser; make_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rank_statistics():
    import numpy as np

    a = np.arange(40, dtype=np.float64)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert top_overlap(a, a) == 1.0
    assert top_overlap(a, -a) == 0.0


def test_shared_report_helpers():
    assert [fmt(None), fmt(True), fmt(0), fmt(12345.6), fmt(0.123456), fmt(123.456), fmt(0.000123)] == [
        "-", "yes", "0", "12,346", "0.123", "123.5", "1.23e-04"
    ]  # fmt: skip
    assert fmt_stat({"mean": 0.5, "std": 0.1, "values": [0.4, 0.6]}) == "0.500 ± 0.100"
    assert fmt_stat({"mean": 0.5, "values": [0.5]}, 2) == "0.50" and fmt_stat(None) == "n/a"
    assert table(["a", "b"], [[1, "x"], [None, 2.5]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x |",
                                                                        "| - | 2.5 |"]  # fmt: skip


def test_real_shape_section_alone_keeps_the_other_sections_and_is_consistent(tmp_path):
    """`--sections real_shape` on tiny sizes: the committed core results stay as they were (JSON and report), and the
    new section's figures recompute from its raw timings; the LESS-style loop computes our features."""
    import shutil
    from pathlib import Path

    from benchmarks.speed.config import REAL_SHAPE_QUICK

    committed = Path(ROOT) / "benchmarks" / "results" / "speed_cpu.json"
    shutil.copy(committed, tmp_path / "speed.json")
    before = {k: v for k, v in json.loads(committed.read_text()).items() if k != "real_shape"}  # the core sections
    main(["--output_dir", str(tmp_path), "--quick", "--device", "cpu", "--sections", "real_shape"])

    saved = json.loads((tmp_path / "speed.json").read_text())
    assert {k: v for k, v in saved.items() if k != "real_shape"} == before
    markdown = (tmp_path / "speed.md").read_text()
    assert markdown == render_markdown(saved)
    assert markdown.startswith(render_markdown(before)) and "## Real shape" in markdown

    section = saved["real_shape"]
    model, rows, ratios = section["model"], section["rows"], section["ratios"]
    assert model["weights"].startswith("random")  # 'auto' takes SmolLM2's weights only at SmolLM2's shape
    h, heads, kv_heads, r = (REAL_SHAPE_QUICK[k] for k in ("hidden_size", "num_heads", "num_kv_heads", "lora_r"))
    kv = h // heads * kv_heads  # grouped-query attention: k and v project to fewer dimensions than q
    assert model["lora_parameters"] == REAL_SHAPE_QUICK["num_layers"] * r * (2 * (h + h) + 2 * (h + kv))
    n = REAL_SHAPE_QUICK["rows"]
    assert rows["count"] == n and rows["min_tokens"] <= rows["mean_tokens"] <= rows["max_tokens"]
    assert rows["tokens"] < rows["padded_tokens"], "mixed lengths: the batches are padded"
    write = section["write"]["seconds_per_row"] * n
    _positive(write, "real_shape.write")
    for name, extra in (("floor", 0.0), ("features", write), ("less_style", write)):
        entry = section[name]
        assert len(entry["seconds_all"]) >= REAL_SHAPE_QUICK["repeats"]
        _close(entry["seconds_per_epoch"], statistics.median(entry["seconds_all"]) + extra, f"{name} epoch")
        _close(entry["examples_per_s"], n / entry["seconds_per_epoch"], f"{name} rows/s", rel=1e-9)
        _close(entry["tokens_per_s"], rows["tokens"] / entry["seconds_per_epoch"], f"{name} tokens/s", rel=1e-9)
    floor, features, less = (section[k]["seconds_per_epoch"] for k in ("floor", "features", "less_style"))
    _close(ratios["features_vs_floor"], features / floor, "features_vs_floor", rel=1e-9)
    _close(ratios["less_style_vs_features"], less / features, "less_style_vs_features", rel=1e-9)
    paired = statistics.median(
        (f + write) / b
        for f, b in zip(section["features"]["seconds_all"], section["floor"]["seconds_all"], strict=True)
    )
    _close(ratios["features_vs_floor_paired"], paired, "features_vs_floor_paired")
    assert section["max_abs_feature_difference_less_vs_rose_hf"] < 1e-4


def test_real_shape_config_validation():
    from benchmarks.speed.config import SMOLLM2_SHAPE, RealShapeConfig

    full = SpeedBenchConfig().real_shape
    assert {k: getattr(full, k) for k in SMOLLM2_SHAPE} == SMOLLM2_SHAPE and full.lora_r == 8
    assert SpeedBenchConfig(quick=True).real_shape.num_layers == 2
    with pytest.raises(ValueError, match="needs SmolLM2's shape"):
        SpeedBenchConfig(quick=True, real_shape=RealShapeConfig(weights="smollm2"))
    with pytest.raises(ValueError, match="num_kv_heads"):
        SpeedBenchConfig(real_shape=RealShapeConfig(num_kv_heads=4))
    with pytest.raises(ValueError, match="sections"):
        SpeedBenchConfig(sections=("everything",))
