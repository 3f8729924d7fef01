"""Quality benchmark: does ROSE pick the helpful examples, avoid the harmful ones, and train a better model?

On the synthetic task (`rose_hf.synthetic.tasks`: target `sort`; the pool holds 4% correct sorts, 4% plausible but
wrong sorts (descending) and 92% other tasks) every method selects from the SAME pool for the SAME tiny pretrained
base model (`rose_hf.synthetic.base_model`), at the same budgets:

- random; BM25 (`bm25s`); RDS (representation similarity under the base model);
- LESS (`validation_objective="sft"`: cross-entropy gradient of prompt + chosen);
- ROSE (`validation_objective="dpo"`: DPO-loss gradient of the preference pairs);
- and, as references, an oracle (all helpful rows first, harmful rows last) and the full pool.

LESS and ROSE share ONE warmup run per seed: `RoseDataSelector` (ROSE) computes the Adam-preconditioned pool features
at every checkpoint, and a second callback computes LESS's validation features at the same checkpoints from the same
adapter and optimizer state. Pool features do not depend on the validation objective, so LESS's scores are exactly
those a separate LESS run with this warmup would give, at half the feature cost, and the two methods differ ONLY in
the validation gradient. One feature computation serves every budget (the ranking is cut at 1, 5, 10, 20%).

Measured per seed, then mean and spread over seeds:
- selection at each budget: precision (share of the selection that is helpful), harmful share, recall of helpful;
- final models (fresh LoRA from the base model on each method's 5% selection, warmup settings; the full pool as
  the reference; the untrained base model as the floor): preference accuracy on held-out pairs, DPO implicit-reward
  accuracy against the base model, exact match of greedy generations (and how often they are the WRONG behaviour).

Run (measured: about 8 minutes on 2 shared CPU cores for 3 seeds; `--quick` about a minute):
```
python -m benchmarks.quality.run --output_dir outputs/bench_quality
python -m benchmarks.quality.run --output_dir outputs/bench_quality_quick --quick
```
Writes `quality.json` (everything), `quality.md` (tables) and `plots/*.png` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.common import agg_figure, fmt_stat, log

if TYPE_CHECKING:  # heavy imports stay inside functions so that `--help` is instant
    import numpy as np

    from rose_hf.synthetic.recipe import TinyRecipe
    from rose_hf.synthetic.tasks import SyntheticTask

# =====================================================================================================================
# DESIGN — fixed from ROSE_METHOD.md's paper setting, scaled down to a 64-dim, 2-layer model on 2 CPU cores, BEFORE
# any result was looked at. Not to be changed after seeing results except to fix bugs.
#
# Data      pool 4000 rows: 4% sort/correct (helpful, 160), 4% sort/wrong (harmful, 160), 92% five other tasks;
#           10 validation pairs (5 per subtask: short / long lists); 200 held-out test pairs, 100 test prompts.
#           The seed changes the task (pool, validation, test), the warmup slice, the LoRA init, the data order and
#           the random baseline; the base model is the same for every seed (pretrained once, cached).
# Warmup    paper: LoRA on a random 5% of the pool, 4 epochs, one checkpoint per epoch, linear decay, warmup ratio
#           0.03, weight decay 0, AdamW, loss on completion tokens. Same here: 200 rows, batch 8 -> 25 steps per
#           epoch, 100 steps, 4 checkpoints. LoRA r=8, alpha=32 (the paper's alpha/r = 4), dropout 0.1, on
#           q,k,v,o. Learning rate 1e-3: the paper's 2e-5 is for a 7B model with r=128; a LoRA on a 64-dim model
#           needs a far larger step to move in 100 steps (1e-3 is the tiny recipe's, and a common LoRA rate for
#           small models); chosen from the warmup training loss only.
# Features  paper defaults: Adam preconditioning with the live optimizer state, beta 0.1, sigmoid DPO loss,
#           Rademacher projection to 8192 dims with seed 0, float16 storage, max over subtasks. The LoRA has 7,168
#           parameters <= 8192, so `resolve_projection` keeps exact gradients (projection "none"), which a random
#           projection could only approximate.
# Budgets   1, 5, 10, 20% of the pool; final models on the 5% selection (200 rows). With 160 helpful rows in a
#           4000-row pool, precision at 5% is at most 160/200 = 0.8 (the oracle's value): read it against that.
# Final     fresh LoRA from the base model on the selection with the warmup's settings (4 epochs, lr 1e-3, batch 8);
#           full pool: the same settings over all 4000 rows (2000 steps); base model untrained as the floor.
# Eval      preference accuracy (summed completion log-probs, chosen > rejected) on the 200 test pairs; DPO reward
#           accuracy against the base model with beta 0.1; greedy exact match on the 100 test prompts.
# Seeds     3 (0, 1, 2): mean and standard deviation over seeds.
# Threads   1 torch thread: ops on a 64-dim model are too small to split, and two threads on a shared 2-core
#           machine were measured ~100x slower per step (spin-waiting). Results do not depend on it.
# =====================================================================================================================

METHODS: tuple[str, ...] = ("random", "bm25", "rds", "less", "rose")
REFERENCE_SELECTORS: tuple[str, ...] = ("oracle",)
FULL, BASE = "full_pool", "base"
LABELS = {
    "random": "Random",
    "bm25": "BM25",
    "rds": "RDS (hidden states)",
    "less": "LESS (SFT gradient)",
    "rose": "ROSE (DPO gradient)",
    "oracle": "Oracle (ground truth)",
    FULL: "Full pool",
    BASE: "Base model (untrained)",
}
SELECTION_METRICS = ("precision", "harmful_share", "recall")
FINAL_METRICS = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match", "mean_margin")
RESULT_FILE, MARKDOWN_FILE, PLOT_DIR = "quality.json", "quality.md", "plots"


@dataclass
class QualityBenchConfig:
    """Settings of the quality benchmark; the defaults are the fixed design written at the top of this module.

    Args:
        output_dir: where `quality.json`, `quality.md`, `plots/` and the per-seed folders go.
        seeds: one full run per seed (task, warmup slice, LoRA init, data order, random baseline).
        pool_size, target_correct_fraction, target_wrong_fraction, n_per_subtask, n_test_pairs, n_test_prompts:
            the synthetic task (`SyntheticTaskConfig`).
        warmup_fraction: share of the pool in the warmup.
        epochs, learning_rate, batch_size: warmup AND final training (the paper uses the same settings).
        lora_r, lora_alpha, lora_dropout: the LoRA adapter (on q, k, v, o).
        max_length: token limit of training and feature sequences.
        beta: DPO beta of ROSE's validation loss and of the reward-accuracy metric.
        projection, projection_dim, preconditioner, feature_dtype: `RoseConfig` feature settings (paper defaults).
        budgets: shares of the pool at which selections are measured.
        final_budget: share of the pool each method's final model is trained on.
        methods: selectors to compare (subset of `METHODS`).
        train_final: train and evaluate final models (off: selection metrics only).
        train_full_pool: train the full-pool reference model.
        max_new_tokens: greedy generation limit for exact match.
        num_threads: torch CPU threads (see the design note).
        cache_dir: where the tiny base model is cached.
        keep_checkpoints: keep warmup checkpoints and feature caches on disk (they are deleted after each seed).
    """

    output_dir: str = "outputs/bench_quality"
    seeds: tuple[int, ...] = (0, 1, 2)
    pool_size: int = 4000
    target_correct_fraction: float = 0.04
    target_wrong_fraction: float = 0.04
    n_per_subtask: int = 5
    n_test_pairs: int = 200
    n_test_prompts: int = 100
    warmup_fraction: float = 0.05
    epochs: int = 4
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    max_length: int = 64
    beta: float = 0.1
    projection: str = "rademacher"
    projection_dim: int = 8192
    preconditioner: str = "adam"
    feature_dtype: str = "float16"
    budgets: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    final_budget: float = 0.05
    methods: tuple[str, ...] = METHODS
    train_final: bool = True
    train_full_pool: bool = True
    max_new_tokens: int = 8
    num_threads: int | None = 1
    cache_dir: str | None = None
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.budgets = tuple(float(b) for b in self.budgets)
        self.methods = tuple(self.methods)
        if not self.seeds:
            raise ValueError("QualityBenchConfig.seeds is empty: pass at least one seed, e.g. seeds=(0,).")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"QualityBenchConfig.methods has unknown {unknown}; use a subset of {list(METHODS)}.")
        if not all(0 < b <= 1 for b in self.budgets) or not 0 < self.final_budget <= 1:
            raise ValueError("QualityBenchConfig.budgets and final_budget must be shares of the pool in (0, 1].")
        if self.final_budget not in self.budgets:
            self.budgets = tuple(sorted(set(self.budgets) | {self.final_budget}))

    @classmethod
    def quick(cls, **overrides: Any) -> QualityBenchConfig:
        """The reduced version: one seed, a 1000-row pool (40 helpful, 40 harmful), 100 test pairs, 50 prompts.

        Everything else (warmup epochs, learning rate, LoRA, features) is the full design, so the quick run tests the
        same method at a smaller scale (warmup 50 rows -> 7 steps per epoch).
        """
        values = dict(seeds=(0,), pool_size=1000, n_test_pairs=100, n_test_prompts=50)
        return cls(**(values | overrides))


# --- one warmup, two validation objectives ----------------------------------------------------------------------------
def _recipe(config: QualityBenchConfig, epochs: int | None = None) -> TinyRecipe:
    from rose_hf.synthetic.recipe import TinyRecipe

    return TinyRecipe(
        epochs=epochs or config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        max_length=config.max_length,
        warmup_fraction=config.warmup_fraction,
    )


def _rose_config(config: QualityBenchConfig, seed: int):
    from rose_hf import RoseConfig

    return RoseConfig(
        beta=config.beta,
        projection=config.projection,
        projection_dim=config.projection_dim,
        preconditioner=config.preconditioner,
        feature_dtype=config.feature_dtype,
        subtask_aggregation="max",
        selection_fraction=config.final_budget,
        warmup_fraction=config.warmup_fraction,
        max_length=config.max_length,
        seed=seed,
        overwrite=True,
        report=False,
    )


def warmup_and_gradient_scores(
    config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int
) -> dict[str, Any]:
    """ONE warmup and selection with `RoseTrainer`, then LESS's scores from the same cached features.

    Every checkpoint caches the validation features of both objectives, so LESS (`validation_objective="sft"`) and
    ROSE (`"dpo"`) are scored from the same pool features: they differ ONLY in the validation gradient, and LESS's
    scores are exactly those a separate LESS run with this warmup would give.

    Returns:
        `{"scores": {"rose": (N,), "less": (N,)}, "valid": (N,), "warmup": {...diagnostics}}`.
    """
    import dataclasses

    import numpy as np
    from transformers import AutoModelForCausalLM, set_seed

    from rose_hf import RoseTrainer
    from rose_hf.selection import score_store
    from rose_hf.store import FeatureStore

    start = time.perf_counter()
    recipe = _recipe(config)
    set_seed(seed)  # PEFT initialises the adapter before Trainer seeds anything
    trainer = RoseTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_path),
        args=recipe.sft_config(run_dir, seed),
        train_dataset=task.pool,
        preference_dataset=task.validation,
        peft_config=recipe.lora_config(),
        rose_config=_rose_config(config, seed),
        processing_class=tokenizer,
    )
    trainer.run_warmup()
    result = trainer.run_selection()
    store = FeatureStore(trainer.rose_config.output_dir)
    subtasks = list(task.validation["subtask"])
    less = dataclasses.replace(trainer.rose_config, validation_objective="sft")
    less_scores, _, _, _, _ = score_store(store, subtasks, less, num_rows=len(task.pool))
    checkpoints = store.completed_checkpoints()
    log_history = trainer.warmup_trainer.state.log_history if trainer.warmup_trainer else []
    losses = [e["loss"] for e in log_history if "loss" in e]
    info = {
        "rows": len(trainer.warmup_indices),
        "steps": int(checkpoints[-1].step),
        "checkpoint_steps": [int(c.step) for c in checkpoints],
        "checkpoint_weights": [float(w) for w in result.weights],
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "projection": checkpoints[0].meta["projection"],
        "num_invalid": int((~result.valid).sum()),
        "seconds": time.perf_counter() - start,
        "feature_seconds": sum(
            c.meta.get("pool_seconds", 0.0) + c.meta.get("validation_seconds", 0.0) for c in checkpoints
        ),
    }
    return {"scores": {"rose": np.asarray(result.scores), "less": less_scores}, "valid": result.valid, "warmup": info}


# --- one seed ---------------------------------------------------------------------------------------------------------
def make_task(config: QualityBenchConfig, seed: int) -> SyntheticTask:
    """The seed's synthetic task with the benchmark's sizes."""
    from rose_hf.synthetic.tasks import SyntheticTaskConfig, make_synthetic_task

    return make_synthetic_task(
        SyntheticTaskConfig(
            pool_size=config.pool_size,
            target_correct_fraction=config.target_correct_fraction,
            target_wrong_fraction=config.target_wrong_fraction,
            n_per_subtask=config.n_per_subtask,
            n_test_pairs=config.n_test_pairs,
            n_test_prompts=config.n_test_prompts,
            seed=seed,
        )
    )


def method_scores(
    config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scores of every configured method (plus the oracle) on the seed's pool, and timing/warmup info."""
    from transformers import AutoModelForCausalLM

    from rose_hf.synthetic.evaluation import oracle_scores, random_scores

    from .baselines import bm25_scores, rds_scores

    scores: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"seconds": {}}
    if {"less", "rose"} & set(config.methods):
        gradient = warmup_and_gradient_scores(config, task, base_path, tokenizer, os.path.join(run_dir, "rose"), seed)
        info["warmup"] = gradient["warmup"]
        info["seconds"]["warmup_and_features"] = gradient["warmup"]["seconds"]
        for name in ("less", "rose"):
            if name in config.methods:
                scores[name] = gradient["scores"][name]
    if "random" in config.methods:
        scores["random"] = random_scores(len(task.pool), seed)
    if "bm25" in config.methods:
        start = time.perf_counter()
        scores["bm25"] = bm25_scores(task.pool, task.validation)
        info["seconds"]["bm25"] = time.perf_counter() - start
    if "rds" in config.methods:
        start = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(base_path)
        scores["rds"] = rds_scores(base, tokenizer, task.pool, task.validation)
        info["seconds"]["rds"] = time.perf_counter() - start
    scores["oracle"] = oracle_scores(task.helpful_mask(), task.harmful_mask())
    return {m: scores[m] for m in (*config.methods, "oracle")}, info


def run_seed(config: QualityBenchConfig, seed: int, base_path: str) -> dict[str, Any]:
    """Selections, final models and evaluations of one seed; cached in `<output_dir>/seed_<seed>/result.json`.

    Args:
        config: the benchmark settings.
        seed: the seed.
        base_path: the tiny base model folder.
    """
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose_hf.selection import budget_curve, select_top
    from rose_hf.synthetic.evaluation import evaluate_model, selection_metrics
    from rose_hf.synthetic.recipe import train_lora, training_rows

    run_dir = os.path.join(config.output_dir, f"seed_{seed}")
    result_path = os.path.join(run_dir, "result.json")
    fingerprint = _config_fingerprint(config, base_path)
    if os.path.exists(result_path):
        with open(result_path) as handle:
            saved = json.load(handle)
        if saved.get("fingerprint") == fingerprint:
            log(f"rose_hf: seed {seed} already done in {run_dir}; reusing it.")
            return saved
    if os.path.isdir(run_dir):  # a run with other settings, or an unfinished one: start clean
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    start = time.perf_counter()
    task = make_task(config, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    source = list(task.pool["source"])

    log(f"rose_hf: seed {seed}: scoring the pool with {', '.join(config.methods)}.")
    scores, info = method_scores(config, task, base_path, tokenizer, run_dir, seed)
    np.savez_compressed(os.path.join(run_dir, "scores.npz"), **scores)
    selection = {
        method: {
            f"{budget:g}": selection_metrics(indices, helpful, harmful, source)
            for budget, indices in budget_curve(method_scores_array, config.budgets).items()
        }
        for method, method_scores_array in scores.items()
    }
    out: dict[str, Any] = {
        "seed": seed,
        "fingerprint": fingerprint,
        "selection": selection,
        "ground_truth": {"helpful": int(helpful.sum()), "harmful": int(harmful.sum()), "pool": len(task.pool)},
        **info,
    }

    if config.train_final:
        final: dict[str, Any] = {}
        training: dict[str, Any] = {}
        base = AutoModelForCausalLM.from_pretrained(base_path)
        log(f"rose_hf: seed {seed}: evaluating the base model.")
        base_metrics = evaluate_model(
            base, tokenizer, task.test_pairs, task.test_prompts, beta=config.beta, max_new_tokens=config.max_new_tokens
        )
        reference = (np.asarray(base_metrics["chosen_logps"]), np.asarray(base_metrics["rejected_logps"]))
        final[BASE] = base_metrics
        del base
        runs = {method: select_top(scores[method], fraction=config.final_budget) for method in scores}
        if config.train_full_pool:
            runs[FULL] = np.arange(len(task.pool))
        for name, indices in runs.items():
            log(f"rose_hf: seed {seed}: training on {name} ({len(indices)} rows).")
            model, training[name] = train_lora(
                _recipe(config),
                base_path,
                tokenizer,
                training_rows(task.pool, indices),
                os.path.join(run_dir, "final", name),
                seed,
            )
            final[name] = evaluate_model(
                model,
                tokenizer,
                task.test_pairs,
                task.test_prompts,
                reference_logps=reference,
                beta=config.beta,
                max_new_tokens=config.max_new_tokens,
            )
            del model
        for metrics in final.values():  # per-pair log-probs are only needed as the reference above
            metrics.pop("chosen_logps", None)
            metrics.pop("rejected_logps", None)
        out["final"] = final
        out["training"] = training
        out["seconds"]["final_training"] = sum(t["seconds"] for t in training.values())
    out["seconds"]["total"] = time.perf_counter() - start
    if not config.keep_checkpoints:
        for name in ("rose", "final"):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    with open(result_path, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def _config_fingerprint(config: QualityBenchConfig, base_path: str) -> dict[str, Any]:
    values = asdict(config)
    for key in ("output_dir", "seeds", "num_threads", "cache_dir", "keep_checkpoints"):
        values.pop(key)
    return json.loads(json.dumps({**values, "base_model": os.path.basename(base_path)}))


# --- aggregation over seeds ---------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, Any]:
    import numpy as np

    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return {"mean": None, "std": None, "values": values}
    return {
        "mean": float(np.mean(clean)),
        "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0,
        "values": clean,
    }


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every selection and final-model metric."""
    methods = list(per_seed[0]["selection"])
    budgets = list(per_seed[0]["selection"][methods[0]])
    selection = {
        method: {
            budget: {m: _stats([s["selection"][method][budget][m] for s in per_seed]) for m in SELECTION_METRICS}
            for budget in budgets
        }
        for method in methods
    }
    summary: dict[str, Any] = {"selection": selection}
    if "final" in per_seed[0]:
        models = list(per_seed[0]["final"])
        summary["final"] = {
            model: {m: _stats([s["final"][model].get(m) for s in per_seed]) for m in FINAL_METRICS} for model in models
        }
    return summary


def check_expectations(summary: dict[str, Any], per_seed: list[dict[str, Any]], final_budget: float) -> dict[str, Any]:
    """The three claims the benchmark tests, each with its numbers and a plain verdict (no tuning towards it).

    - ROSE's harmful share at the final budget is clearly below LESS's: lower in EVERY seed and by at least 0.05 on
      average.
    - ROSE's precision at the final budget is near the best possible: at least 90% of the oracle's (the oracle's is
      below 1 whenever the budget exceeds the number of helpful rows).
    - ROSE's final model matches the full-pool model: preference accuracy and exact match each within
      max(0.02, 2 standard errors of the per-seed difference) of the full pool's, or better.
    """
    import numpy as np

    budget = f"{final_budget:g}"
    out: dict[str, Any] = {}
    sel = summary["selection"]
    if "rose" in sel and "less" in sel:
        rose = [s["selection"]["rose"][budget]["harmful_share"] for s in per_seed]
        less = [s["selection"]["less"][budget]["harmful_share"] for s in per_seed]
        gap = float(np.mean(np.subtract(less, rose)))
        holds = all(r < le for r, le in zip(rose, less)) and gap >= 0.05
        out["rose_harmful_below_less"] = {"rose": rose, "less": less, "mean_gap": gap, "holds": bool(holds)}
    if "rose" in sel:
        rose = sel["rose"][budget]["precision"]["mean"]
        oracle = sel["oracle"][budget]["precision"]["mean"]
        out["rose_precision_near_best"] = {
            "rose": rose,
            "oracle": oracle,
            "ratio_to_oracle": rose / oracle if oracle else None,
            "holds": bool(oracle and rose / oracle >= 0.9),
        }
    if "final" in summary and "rose" in summary["final"] and FULL in summary["final"]:
        verdict: dict[str, Any] = {}
        for metric in ("preference_accuracy", "exact_match"):
            diffs = [s["final"]["rose"][metric] - s["final"][FULL][metric] for s in per_seed]
            sem = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
            tolerance = max(0.02, 2 * sem)
            verdict[metric] = {
                "rose_minus_full": diffs,
                "mean_diff": float(np.mean(diffs)),
                "tolerance": tolerance,
                "holds": bool(np.mean(diffs) >= -tolerance),
            }
        verdict["holds"] = all(v["holds"] for v in verdict.values() if isinstance(v, dict))
        out["rose_matches_full_pool"] = verdict
    return out


# --- outputs ------------------------------------------------------------------------------------------------------------
def plot_selection(summary: dict[str, Any], path: str) -> str:
    """Precision, harmful share and recall against the budget, one line per method (mean ± std over seeds)."""
    sel = summary["selection"]
    figure, axes = agg_figure(13, 3.8, ncols=3)
    for ax, metric in zip(axes, SELECTION_METRICS):
        for method, per_budget in sel.items():
            budgets = [float(b) for b in per_budget]
            means = [per_budget[b][metric]["mean"] for b in per_budget]
            stds = [per_budget[b][metric]["std"] for b in per_budget]
            style = dict(linestyle="--", color="black", alpha=0.6) if method == "oracle" else dict(marker="o")
            ax.errorbar(
                [100 * b for b in budgets], means, yerr=stds, label=LABELS.get(method, method), capsize=3, **style
            )
        ax.set_xlabel("budget (% of pool)")
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.savefig(path, format="png")
    return path


def plot_final(summary: dict[str, Any], path: str) -> str:
    """Grouped bars of the final-model metrics per model (mean ± std over seeds)."""
    import numpy as np

    final = summary["final"]
    models = list(final)
    metrics = ("preference_accuracy", "reward_accuracy", "exact_match", "wrong_match")
    figure, ax = agg_figure(max(7, 1.3 * len(models)), 4)
    width = 0.8 / len(metrics)
    x = np.arange(len(models))
    for i, metric in enumerate(metrics):
        means = [final[m][metric]["mean"] if final[m][metric]["mean"] is not None else 0.0 for m in models]
        stds = [final[m][metric]["std"] or 0.0 for m in models]
        ax.bar(
            x + (i - (len(metrics) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=2,
            label=metric.replace("_", " "),
        )
    ax.set_xticks(x, [LABELS.get(m, m).replace(" (", "\n(") for m in models], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("share of test pairs / prompts")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")
    return path


def _seed_cell(selection: dict[str, Any], budget: str, method: str, metric: str) -> str:
    return f"{selection[method][budget][metric]:.3f}" if method in selection else "n/a"


def render_markdown(results: dict[str, Any]) -> str:
    """`quality.md`: design, selection table, final-model table, expectations with verdicts, per-seed details."""
    config = results["config"]
    summary = results["summary"]
    per_seed = results["per_seed"]
    seeds = config["seeds"]
    lines = [
        "# Quality benchmark: ROSE vs baselines on the synthetic `sort` task",
        "",
        f"Seeds {seeds} (mean ± standard deviation over seeds). Pool {config['pool_size']} rows: "
        f"{per_seed[0]['ground_truth']['helpful']} helpful (sort, correct), {per_seed[0]['ground_truth']['harmful']} "
        "harmful (sort, descending = wrong), the rest five other tasks, all correct. Warmup "
        f"{config['warmup_fraction']:.0%} of the pool, {config['epochs']} epochs, lr {config['learning_rate']:g}, batch "
        f"{config['batch_size']}, LoRA r={config['lora_r']} alpha={config['lora_alpha']}; final models trained on "
        f"{config['final_budget']:.0%} with the same settings. Command: `make bench-quality`.",
        "",
    ]
    warm = per_seed[0].get("warmup")
    if warm:
        lines += [
            f"Warmup (seed {per_seed[0]['seed']}): {warm['rows']} rows, {warm['steps']} steps, checkpoints at "
            f"{warm['checkpoint_steps']} with weights {[round(w, 3) for w in warm['checkpoint_weights']]}; "
            f"projection `{warm['projection'].get('kind')}` "
            f"({warm['projection'].get('out_dim', warm['projection'].get('dim'))} dims); train loss "
            f"{warm['first_logged_loss']:.3f} -> {warm['last_logged_loss']:.3f}.",
            "",
        ]
    budgets = list(next(iter(summary["selection"].values())))
    lines += ["## Selection quality", ""]
    for metric, title in (
        ("precision", "Precision (share of the selection that is helpful)"),
        ("harmful_share", "Harmful share (share of the selection that is sort/wrong)"),
        ("recall", "Recall of the helpful rows"),
    ):
        lines += [f"**{title}**", "", "| Method | " + " | ".join(f"{float(b):.0%}" for b in budgets) + " |"]
        lines += ["|---|" + "---|" * len(budgets)]
        for method, per_budget in summary["selection"].items():
            lines.append(
                f"| {LABELS.get(method, method)} | "
                + " | ".join(fmt_stat(per_budget[b][metric]) for b in budgets)
                + " |"
            )
        lines.append("")
    final_budget = f"{config['final_budget']:g}"
    lines += [f"**Composition of the {config['final_budget']:.0%} selection (seed {per_seed[0]['seed']})**", ""]
    lines += ["| Method | Selected rows by source |", "|---|---|"]
    for method, per_budget in per_seed[0]["selection"].items():
        parts = ", ".join(f"{k} {v}" for k, v in per_budget[final_budget].get("by_source", {}).items())
        lines.append(f"| {LABELS.get(method, method)} | {parts} |")
    lines += ["", f"![selection vs budget]({PLOT_DIR}/selection_vs_budget.png)", ""]
    if "final" in summary:
        lines += [
            "## Final models",
            "",
            f"Each method's model is a fresh LoRA on the base model trained on its {config['final_budget']:.0%} "
            "selection. *Preference acc.*: share of held-out pairs with log p(chosen) > log p(rejected). *Reward "
            "acc.*: share with a DPO implicit reward margin > 0 against the base model (the pair's margin grew). "
            "*Exact match*: greedy generation equals the reference. *Wrong match*: the generation is the systematic "
            "wrong answer (descending).",
            "",
            "| Model | Preference acc. | Reward acc. | Exact match | Wrong match | Mean log-prob margin |",
            "|---|---|---|---|---|---|",
        ]
        for model, metrics in summary["final"].items():
            lines.append(
                f"| {LABELS.get(model, model)} | {fmt_stat(metrics['preference_accuracy'])} | "
                f"{fmt_stat(metrics['reward_accuracy'])} | {fmt_stat(metrics['exact_match'])} | "
                f"{fmt_stat(metrics['wrong_match'])} | {fmt_stat(metrics['mean_margin'], 2)} |"
            )
        lines += ["", f"![final models]({PLOT_DIR}/final_models.png)", ""]
    lines += ["## Expectations", ""]
    exp = results["expectations"]
    if "rose_harmful_below_less" in exp:
        e = exp["rose_harmful_below_less"]
        lines.append(
            f"- ROSE's harmful share at {config['final_budget']:.0%} clearly below LESS's (lower in every seed, mean "
            f"gap >= 0.05): **{'holds' if e['holds'] else 'does not hold'}** — ROSE {[round(v, 3) for v in e['rose']]}"
            f", LESS {[round(v, 3) for v in e['less']]}, mean gap {e['mean_gap']:.3f}."
        )
    if "rose_precision_near_best" in exp:
        e = exp["rose_precision_near_best"]
        lines.append(
            f"- ROSE's precision at {config['final_budget']:.0%} near the best possible (>= 90% of the oracle's "
            f"{e['oracle']:.3f}; 1.0 is impossible when the budget exceeds the helpful rows): "
            f"**{'holds' if e['holds'] else 'does not hold'}** — ROSE {e['rose']:.3f} "
            f"({e['ratio_to_oracle']:.0%} of the oracle)."
        )
    if "rose_matches_full_pool" in exp:
        e = exp["rose_matches_full_pool"]
        parts = []
        for metric in ("preference_accuracy", "exact_match"):
            m = e[metric]
            parts.append(f"{metric} ROSE − full = {m['mean_diff']:+.3f} (tolerance {m['tolerance']:.3f})")
        lines.append(
            f"- ROSE's final model matches the full-pool model (no worse than the tolerance): "
            f"**{'holds' if e['holds'] else 'does not hold'}** — " + "; ".join(parts) + "."
        )
    lines += ["", "## Per seed", ""]
    lines += [
        "| Seed | Warmup loss (first -> last) | ROSE prec. @5% | LESS prec. @5% | ROSE harm @5% | LESS harm @5% | Time (s) |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for s in per_seed:
        w = s.get("warmup") or {}
        cell = functools.partial(_seed_cell, s["selection"], final_budget)
        loss = f"{w['first_logged_loss']:.3f} -> {w['last_logged_loss']:.3f}" if w else "n/a"
        lines.append(
            f"| {s['seed']} | {loss} | {cell('rose', 'precision')} | {cell('less', 'precision')} | "
            f"{cell('rose', 'harmful_share')} | {cell('less', 'harmful_share')} | {s['seconds']['total']:.0f} |"
        )
    lines += ["", f"Total wall time: {results['seconds']:.0f} s. Every number is in `{RESULT_FILE}`.", ""]
    return "\n".join(lines)


def run_quality_benchmark(config: QualityBenchConfig | None = None) -> dict[str, Any]:
    """Run every seed, aggregate, check the expectations, and write `quality.json`, `quality.md` and the plots.

    Args:
        config: the settings (`QualityBenchConfig()`: the fixed design; `QualityBenchConfig.quick()`: reduced).

    Returns:
        The results: `config`, `per_seed`, `summary` (mean/std over seeds), `expectations`, `seconds`, `files`.
    """
    import torch

    from rose_hf.synthetic.base_model import DEFAULT_CACHE, TinyBaseConfig, tiny_base_model

    config = config or QualityBenchConfig()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        os.makedirs(config.output_dir, exist_ok=True)
        base_path = tiny_base_model(TinyBaseConfig(), cache_dir=config.cache_dir or DEFAULT_CACHE)
        per_seed = [run_seed(config, seed, base_path) for seed in config.seeds]
    finally:
        torch.set_num_threads(threads)
    summary = summarize(per_seed)
    results: dict[str, Any] = {
        "config": asdict(config),
        "base_model": base_path,
        "per_seed": per_seed,
        "summary": summary,
        "expectations": check_expectations(summary, per_seed, config.final_budget),
        "seconds": time.perf_counter() - start,
    }
    plot_dir = os.path.join(config.output_dir, PLOT_DIR)
    os.makedirs(plot_dir, exist_ok=True)
    files = [plot_selection(summary, os.path.join(plot_dir, "selection_vs_budget.png"))]
    if "final" in summary:
        files.append(plot_final(summary, os.path.join(plot_dir, "final_models.png")))
    markdown_path = os.path.join(config.output_dir, MARKDOWN_FILE)
    json_path = os.path.join(config.output_dir, RESULT_FILE)
    results["files"] = [json_path, markdown_path, *files]
    with open(markdown_path, "w") as handle:
        handle.write(render_markdown(results))
    with open(json_path, "w") as handle:
        json.dump(results, handle, indent=2)
    log(f"rose_hf: quality benchmark done in {results['seconds']:.0f}s -> {markdown_path}")
    return results


def make_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m benchmarks.quality.run`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.run",
        description="Selection quality and final-model quality of ROSE vs LESS, RDS, BM25, random and the full pool "
        "on the synthetic task (offline, CPU).",
    )
    parser.add_argument("--output_dir", default="outputs/bench_quality", help="Where results, tables and plots go.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds (default 0 1 2; --quick: 0).")
    parser.add_argument("--quick", action="store_true", help="Reduced version: 1 seed, 1000-row pool, fewer tests.")
    parser.add_argument("--pool_size", type=int, default=None, help="Pool rows (default 4000; --quick: 1000).")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="Selectors to compare.")
    parser.add_argument("--no_final", action="store_true", help="Selection metrics only (no final training).")
    parser.add_argument("--no_full_pool", action="store_true", help="Skip the full-pool reference model.")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: leave torch's default).")
    parser.add_argument("--keep_checkpoints", action="store_true", help="Keep warmup checkpoints and feature caches.")
    return parser


def config_from_args(args: argparse.Namespace) -> QualityBenchConfig:
    """The `QualityBenchConfig` that parsed flags describe."""
    overrides: dict[str, Any] = {"output_dir": args.output_dir, "num_threads": args.num_threads or None}
    for name in ("seeds", "pool_size", "methods"):
        if getattr(args, name) is not None:
            overrides[name] = tuple(getattr(args, name)) if name != "pool_size" else getattr(args, name)
    if args.no_final:
        overrides["train_final"] = False
    if args.no_full_pool:
        overrides["train_full_pool"] = False
    if args.keep_checkpoints:
        overrides["keep_checkpoints"] = True
    return QualityBenchConfig.quick(**overrides) if args.quick else QualityBenchConfig(**overrides)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.quality.run [--output_dir D] [--seeds 0 1 2] [--quick] [--pool_size N] ...`."""
    args = make_parser().parse_args(argv)
    from accelerate import PartialState

    from rose_hf.synthetic.recipe import quiet_libraries

    PartialState()  # accelerate's logger needs it
    quiet_libraries()
    results = run_quality_benchmark(config_from_args(args))
    print(f"rose_hf: quality benchmark -> {os.path.join(results['config']['output_dir'], MARKDOWN_FILE)}")
    return results


__all__ = ["QualityBenchConfig", "run_quality_benchmark", "main"]


if __name__ == "__main__":
    main()
