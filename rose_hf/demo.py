"""The offline end-to-end demo: ROSE picks 5% of a synthetic pool for a target task, and the model trained on it is
compared with one trained on a random 5% and with the untrained base model.

Everything runs on a CPU without a network: a tiny Llama is pretrained on the synthetic mixture (about 35 s, once;
cached in `outputs/cache`), LoRA-warmed up on a random 5% of the pool with `RoseDataSelector` attached, and the
selection is scored against the known ground truth (the pool holds correct AND plausible-but-wrong examples of the
target task). It is the one-seed, one-budget version of `rose-hf bench quality`, built from the same pieces.

Run (measured: 46 s on 2 shared CPU cores from a fresh cache, pretraining included; `--quick` about 30 s):
```
rose-hf demo --output_dir outputs/demo
make demo
```
Writes `<output_dir>/report.md` (the selection report plus an evaluation section), its PNG plots in
`<output_dir>/report/`, `<output_dir>/demo.json` (every number) and the feature cache of the selection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

EVALUATION_PLOT = "demo_evaluation.png"
SELECTION_PLOT = "demo_selection.png"
MODELS = ("base", "rose", "random")
MODEL_LABELS = {"base": "Base model (untrained)", "rose": "ROSE 5%", "random": "Random 5%"}


def _bar_plot(path: str, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")


def _evaluation_section(results: dict[str, Any], plot_dir_name: str) -> str:
    """The markdown appended to the selection report: final-model evaluation, ROSE vs random vs base."""
    final, selection = results["final"], results["selection"]
    k = selection["rose"]["k"]
    lines = [
        "## Evaluation of the final models",
        "",
        f"Three models on the held-out test split of the target task `{results['target_family']}` "
        f"({results['num_test_pairs']} preference pairs, {results['num_test_prompts']} prompts): the untrained base "
        f"model, a fresh LoRA trained on ROSE's selection ({k} rows), and one trained on {k} random rows, with the "
        f"warmup's settings ({results['config']['epochs']} epochs, lr {results['config']['learning_rate']:g}, batch "
        f"{results['config']['batch_size']}). The pool holds {results['ground_truth']['helpful']} helpful rows (target "
        f"task, correct) and {results['ground_truth']['harmful']} harmful ones (target task, systematically wrong).",
        "",
        "| Model | Helpful rows trained on | Harmful rows trained on | Preference accuracy | Reward accuracy vs base "
        "| Exact match | Wrong-answer match |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        metrics = final[name]
        sel = selection.get(name)
        helpful = f"{sel['num_helpful']} ({sel['precision']:.0%})" if sel else "—"
        harmful = f"{sel['num_harmful']} ({sel['harmful_share']:.0%})" if sel else "—"
        reward = f"{metrics['reward_accuracy']:.3f}" if "reward_accuracy" in metrics else "—"
        lines.append(
            f"| {MODEL_LABELS[name]} | {helpful} | {harmful} | {metrics['preference_accuracy']:.3f} | {reward} | "
            f"{metrics['exact_match']:.3f} | {metrics['wrong_match']:.3f} |"
        )
    lines += [
        "",
        "*Preference accuracy*: share of test pairs where the model gives the correct answer a higher summed "
        "log-probability than the wrong one. *Reward accuracy*: share of pairs whose DPO implicit reward margin "
        "against the base model is positive (training widened the margin). *Exact match*: greedy generation equals "
        "the reference; *wrong-answer match*: it equals the systematic wrong answer instead.",
        "",
        f"![Evaluation of the final models]({plot_dir_name}/{EVALUATION_PLOT})",
        "",
        f"![What ROSE and random selected, by source]({plot_dir_name}/{SELECTION_PLOT})",
        "",
        "### What this run shows",
        "",
    ]
    rose, rand = selection["rose"], selection["random"]
    lines.append(
        f"- Selection: ROSE's {k} rows are {rose['precision']:.0%} helpful and {rose['harmful_share']:.0%} harmful; "
        f"random's are {rand['precision']:.0%} and {rand['harmful_share']:.0%} (the best possible precision at this "
        f"budget is {results['oracle_precision']:.0%})."
    )
    diff = final["rose"]["preference_accuracy"] - final["random"]["preference_accuracy"]
    lines.append(
        f"- Final models: preference accuracy ROSE {final['rose']['preference_accuracy']:.3f} vs random "
        f"{final['random']['preference_accuracy']:.3f} ({diff:+.3f}) vs base {final['base']['preference_accuracy']:.3f}; "
        f"exact match ROSE {final['rose']['exact_match']:.3f} vs random {final['random']['exact_match']:.3f}. One "
        "seed, one run: `rose-hf bench quality` gives the mean and spread over seeds and the other baselines."
    )
    examples = final["rose"].get("examples", [])[:3]
    if examples:
        lines += [
            "",
            "Greedy generations of the ROSE model:",
            "",
            "| Prompt | Generation | Reference |",
            "|---|---|---|",
        ]
        lines += [f"| `{e['prompt']}` | `{e['generation']}` | `{e['reference']}` |" for e in examples]
    seconds = results["seconds"]
    lines += [
        "",
        f"Wall time: {seconds['total']:.0f} s in all (base model {seconds['base_model']:.0f} s, warmup + features "
        f"{seconds['warmup_and_features']:.0f} s, final training {seconds['final_training']:.0f} s, evaluation "
        f"{seconds['evaluation']:.0f} s).",
    ]
    return "\n".join(lines)


def run_demo(
    output_dir: str = "outputs/demo",
    quick: bool = False,
    seed: int = 0,
    pool_size: int | None = None,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Pretrain (cached) -> warmup with ROSE features -> select 5% -> train ROSE and random models -> evaluate -> report.

    Args:
        output_dir: the run folder: `report.md`, `report/*.png`, `demo.json`, the feature cache.
        quick: a 1000-row pool and smaller test splits (about a minute).
        seed: the synthetic task, warmup slice, LoRA init and random selection.
        pool_size: override the pool size (default 4000, or 1000 with `quick`).
        num_threads: torch CPU threads (1: see `benchmarks.quality.run`'s design note); None leaves torch's default.

    Returns:
        Everything written to `demo.json`, plus `report` (the path of `report.md`).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .report import write_report
    from .scoring import select_top
    from .synthetic.base_model import tiny_base_model
    from benchmarks.quality.baselines import random_scores
    from .synthetic.evaluation import evaluate_model
    from benchmarks.quality.run import (
        QualityBenchConfig,
        _log,
        _training_rows,
        make_task,
        selection_metrics,
        train_lora,
        warmup_and_gradient_scores,
    )

    start = time.perf_counter()
    overrides: dict[str, Any] = {"output_dir": output_dir, "seeds": (seed,), "methods": ("random", "rose")}
    if pool_size is not None:
        overrides["pool_size"] = pool_size
    config = QualityBenchConfig.quick(**overrides) if quick else QualityBenchConfig(**overrides)
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    seconds: dict[str, float] = {}
    try:
        os.makedirs(output_dir, exist_ok=True)
        tick = time.perf_counter()
        base_path = tiny_base_model()
        seconds["base_model"] = time.perf_counter() - tick
        task = make_task(config, seed)
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        helpful, harmful = task.helpful_mask(), task.harmful_mask()
        source = list(task.pool["source"])

        _log(
            f"rose_hf demo: warmup on {config.warmup_fraction:.0%} of a {len(task.pool)}-row pool with ROSE attached."
        )
        tick = time.perf_counter()
        gradient = warmup_and_gradient_scores(
            config,
            task,
            base_path,
            tokenizer,
            os.path.join(output_dir, "_runs"),
            seed,
            with_less=False,
            rose_dir=output_dir,
        )
        seconds["warmup_and_features"] = time.perf_counter() - tick
        selector = gradient["selector"]
        result = selector.result
        rose_indices = np.asarray(result.selected_indices)
        random_indices = select_top(random_scores(len(task.pool), seed), size=len(rose_indices))
        oracle = min(1.0, int(helpful.sum()) / len(rose_indices))
        selection = {
            "rose": selection_metrics(rose_indices, helpful, harmful, source),
            "random": selection_metrics(random_indices, helpful, harmful, source),
        }

        tick = time.perf_counter()
        models = {}
        training = {}
        for name, indices in (("rose", rose_indices), ("random", random_indices)):
            _log(f"rose_hf demo: training a fresh LoRA on the {name} selection ({len(indices)} rows).")
            models[name], training[name] = train_lora(
                config,
                base_path,
                tokenizer,
                _training_rows(task.pool, indices),
                os.path.join(output_dir, "_runs", "final", name),
                seed,
            )
        seconds["final_training"] = time.perf_counter() - tick

        tick = time.perf_counter()
        _log("rose_hf demo: evaluating the base, ROSE and random models on the held-out split.")
        evaluate = dict(beta=config.beta, max_new_tokens=config.max_new_tokens)
        final = {
            "base": evaluate_model(
                AutoModelForCausalLM.from_pretrained(base_path),
                tokenizer,
                task.test_pairs,
                task.test_prompts,
                **evaluate,
            )
        }
        reference = (np.asarray(final["base"]["chosen_logps"]), np.asarray(final["base"]["rejected_logps"]))
        for name, model in models.items():
            final[name] = evaluate_model(
                model, tokenizer, task.test_pairs, task.test_prompts, reference_logps=reference, **evaluate
            )
        for metrics in final.values():
            metrics.pop("chosen_logps", None)
            metrics.pop("rejected_logps", None)
        seconds["evaluation"] = time.perf_counter() - tick
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(os.path.join(output_dir, "_runs"), ignore_errors=True)  # warmup checkpoints: not needed any more

    plot_dir = os.path.join(output_dir, "report")
    os.makedirs(plot_dir, exist_ok=True)
    metric_names = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match")
    _bar_plot(
        os.path.join(plot_dir, EVALUATION_PLOT),
        [m.replace("_", " ") for m in metric_names],
        {MODEL_LABELS[name]: [final[name].get(m, 0.0) for m in metric_names] for name in MODELS},
        "share of test pairs / prompts",
        f"Final models on held-out `{task.config.target_family}` (reward accuracy: base has none)",
    )
    sources = sorted(set(selection["rose"]["by_source"]) | set(selection["random"]["by_source"]))
    _bar_plot(
        os.path.join(plot_dir, SELECTION_PLOT),
        sources,
        {MODEL_LABELS[name]: [selection[name]["by_source"].get(s, 0) for s in sources] for name in ("rose", "random")},
        "selected rows",
        f"{len(rose_indices)} rows selected by ROSE and at random, by source",
    )
    seconds["total"] = time.perf_counter() - start
    results: dict[str, Any] = {
        "config": {k: v for k, v in config.__dict__.items()},
        "seed": seed,
        "target_family": task.config.target_family,
        "num_test_pairs": len(task.test_pairs),
        "num_test_prompts": len(task.test_prompts),
        "ground_truth": {"helpful": int(helpful.sum()), "harmful": int(harmful.sum()), "pool": len(task.pool)},
        "oracle_precision": oracle,
        "selection": selection,
        "final": final,
        "training": training,
        "warmup": gradient["warmup"],
        "seconds": seconds,
    }
    report = write_report(
        output_dir,
        task.pool,
        result,
        gradient["rose_config"],
        selector.pipeline.store,
        extra_sections=[_evaluation_section(results, "report")],
    )
    results["report"] = report
    with open(os.path.join(output_dir, "demo.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    _log(f"rose_hf demo: done in {seconds['total']:.0f}s -> {report}")
    return results


def make_parser() -> argparse.ArgumentParser:
    """Command-line flags of `rose-hf demo`."""
    parser = argparse.ArgumentParser(
        prog="rose-hf demo",
        description="Offline end-to-end ROSE demo on a tiny pretrained model: select 5% of a synthetic pool, train on "
        "it, compare with random and the base model, write report.md with plots.",
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="Where report.md, plots and caches go.")
    parser.add_argument("--quick", action="store_true", help="A 1000-row pool and smaller test splits (~1 minute).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the task, warmup, LoRA init and random pick.")
    parser.add_argument("--pool_size", type=int, default=None, help="Pool rows (default 4000; --quick: 1000).")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: leave torch's default).")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`rose-hf demo [--output_dir outputs/demo] [--quick] [--seed 0] [--pool_size N]`."""
    args = make_parser().parse_args(argv)
    from accelerate import PartialState

    from benchmarks.quality.run import _quiet

    PartialState()  # accelerate's logger needs it
    _quiet()
    results = run_demo(args.output_dir, args.quick, args.seed, args.pool_size, args.num_threads or None)
    print(f"rose_hf demo: report -> {results['report']} ({results['seconds']['total']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
