"""HH family check: can the HH world (`rose_fixtures.hh`) separate selection methods on SmolLM2-135M-Instruct?

No selection method runs here (issue 23: the family's design is fixed and checked before any method is looked at).
Per seed, on the seed's HH world, three models from the same base:
- the base model, untrained (the reference of the DPO implicit reward);
- a fresh LoRA trained on the oracle's 5% (every target row, the chosen replies, and nothing else at 8% target share);
- a fresh LoRA trained on a seeded random 5%;
each evaluated on the world's held-out test pairs: reward accuracy (TRL's `rewards/accuracies` with the base model as
the reference: `log p(y_w|x) - log p_base(y_w|x) > log p(y_l|x) - log p_base(y_l|x)`), the mean reward margin (beta
0.1), and the plain preference accuracy `log p(y_w|x) > log p(y_l|x)`. Exact match does not apply to open dialogue and
is not measured.

The family can separate methods when the oracle's reward accuracy beats random's by more than the seed-to-seed
spread (see `verdict`). The base's reward accuracy against itself is 0 by definition (every reward margin is 0, and
TRL counts only margins above 0), so against the base the check asks that the oracle's reward accuracy be above
chance (0.5) and its preference accuracy above the base's, each by more than the spread.

Run (one process, one torch thread; the design's cost is in docs/benchmarks.md):
```
python -m benchmarks.quality.hh_check --output_dir outputs/bench_hh_check
```
Writes `hh_check.json` and `hh_check.md` into `--output_dir` (per-seed results are cached in `<output_dir>/cache`);
`make bench-hh-check [HH_POOL=800]` copies the two into `benchmarks/results/hh_check/pool<N>/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from rose_fixtures.hh import MAX_TOKENS

# =====================================================================================================================
# DESIGN — fixed before the check ran (issue 23, section 1), and before any selection method ran on the family.
#
# Model     SmolLM2-135M-Instruct (rose_fixtures.smollm2), as the other real families.
# World     rose_fixtures.hh.make_hh_world: pool 400 rows (8% target = 32 HH prefixes with the chosen reply, 8% twin =
#           the same 32 prefixes with the rejected reply, 336 chatterbot-corpus rows); 10 validation pairs (5 how_to,
#           5 talk; unused here); 200 held-out test pairs (50 per subtask x chosen reply shorter or not); prompts <= 64
#           words, replies <= 64 words.
# Training  the real families' final-model recipe (rose_fixtures.recipe): 5% of the pool (20 rows), a fresh LoRA
#           r=8 alpha 32 dropout 0.1 on q,k,v,o, lr 1e-3, batch 4, 5 epochs (25 steps), linear decay, warmup 0.03;
#           max length 320 tokens instead of 128 so that no row is cut (the longest HH row has 269 tokens).
# Eval      200 test pairs per seed, log-probs summed over the reply tokens (EOS included), beta 0.1.
# Seeds     0, 1, 2: the world (splits, distractor draw), the random 5%, the LoRA init and the data order.
# Verdict   see `verdict`.
#
# Designs tried (benchmarks/results/hh_check/pool<N>/): 1. pool 400 (20-row 5%): seeds 0-1, oracle 0.535 / 0.535 vs
#           random 0.525 / 0.535 reward accuracy: no separation; stopped before seed 2. 2. pool 800 (40-row 5%, 64
#           target rows, the same test pairs): seeds 0-1, oracle 0.520 / 0.580 vs random 0.510 / 0.530: a gap inside
#           the spread; stopped before seed 2. 3. pool 800, 10 epochs: seeds 0-1, oracle 0.535 / 0.545 vs random
#           0.520 / 0.565. In all three, reply length decided most pairs for every trained model (reward accuracy
#           0.8-0.9 where the chosen reply is the shorter, about 0.2 where not). 4. design 3 with test pairs whose
#           replies are of near-equal length (`--test_length_ratio 0.7 --n_test_pairs 140`). Neither design separates
#           methods (docs/benchmarks.md). The default stays 400, the first design.
# =====================================================================================================================

MODELS = ("random", "oracle")
METRICS = ("reward_accuracy", "mean_reward_margin", "preference_accuracy", "mean_margin")
RESULT_FILE, MARKDOWN_FILE = "hh_check.json", "hh_check.md"


@dataclass
class HHCheckConfig:
    """Settings of the HH check; the defaults are the DESIGN above.

    Args:
        output_dir: where `hh_check.json`, `hh_check.md` and the per-seed caches go.
        seeds: one world per seed.
        pool_size, target_correct_fraction, target_wrong_fraction, n_per_subtask, n_test_pairs, test_length_ratio:
            the world (`HHWorldConfig`).
        budget: share of the pool each model is trained on.
        epochs: training epochs of the oracle and random models.
        max_length: token limit of the training rows.
        beta: DPO beta of the mean reward margin.
        eval_batch_size: pairs per forward pass in the evaluation.
        num_threads: torch CPU threads while training and evaluating.
        cache_dir: where the converted SmolLM2 checkpoint is cached.
    """

    output_dir: str = "outputs/bench_hh_check"
    seeds: tuple[int, ...] = (0, 1, 2)
    pool_size: int = 400
    target_correct_fraction: float = 0.08
    target_wrong_fraction: float = 0.08
    n_per_subtask: int = 5
    n_test_pairs: int = 200
    test_length_ratio: float | None = None
    budget: float = 0.05
    epochs: int = 5
    max_length: int = MAX_TOKENS
    beta: float = 0.1
    eval_batch_size: int = 16
    num_threads: int | None = 1
    cache_dir: str | None = None

    def world_sizes(self) -> dict[str, Any]:
        return dict(pool_size=self.pool_size, target_correct_fraction=self.target_correct_fraction,
                    target_wrong_fraction=self.target_wrong_fraction, n_per_subtask=self.n_per_subtask,
                    n_test_pairs=self.n_test_pairs, test_length_ratio=self.test_length_ratio)  # fmt: skip

    def recipe(self):
        from rose_fixtures.recipe import SMOLLM2_RECIPE

        return SMOLLM2_RECIPE.replace(epochs=self.epochs, max_length=self.max_length)


def _fingerprint(config: HHCheckConfig, base_path: str) -> dict[str, Any]:
    from rose_fixtures.hh import HH_WORLD_VERSION

    values = asdict(config)
    for key in ("output_dir", "seeds", "num_threads", "cache_dir", "eval_batch_size"):
        values.pop(key)
    return json.loads(json.dumps({**values, "base_model": os.path.basename(base_path), "world": HH_WORLD_VERSION}))


def _groups(test_pairs) -> dict[str, list[str]]:
    """Per test pair, its subtask and its length cell: `chosen_shorter` (the chosen reply has fewer words) or
    `chosen_longer` (as many or more)."""
    def words(turns) -> int:
        return len(turns[-1]["content"].split())

    cells = ["chosen_shorter" if words(c) < words(r) else "chosen_longer"
             for c, r in zip(test_pairs["chosen"], test_pairs["rejected"])]  # fmt: skip
    return {"subtask": list(test_pairs["subtask"]), "length": cells}


def _breakdown(metrics: dict[str, Any], reference: tuple, groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Reward accuracy per subtask and per length cell of the test pairs (from the per-pair log-probs)."""
    import numpy as np

    margin = np.asarray(metrics["chosen_logps"]) - np.asarray(metrics["rejected_logps"])
    reward = margin - (np.asarray(reference[0]) - np.asarray(reference[1]))
    out = {}
    for kind, labels in groups.items():
        names = np.asarray(labels)
        out[kind] = {name: float(np.mean(reward[names == name] > 0)) for name in sorted(set(labels))}
    return out


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("chosen_logps", "rejected_logps")}


def check_seed(config: HHCheckConfig, base_path: str, seed: int) -> dict[str, Any]:
    """Base, random and oracle models of one seed's HH world, evaluated on its test pairs (cached as JSON)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.common import log
    from benchmarks.quality.worlds import _selection
    from rose_fixtures.evaluation import evaluate_model
    from rose_fixtures.hh import make_hh_world
    from rose_fixtures.recipe import train_lora, training_rows

    cache = os.path.join(config.output_dir, "cache", f"seed{seed}.json")
    fingerprint = _fingerprint(config, base_path)
    if os.path.exists(cache):
        with open(cache) as handle:
            saved = json.load(handle)
        if saved["fingerprint"] == fingerprint:
            log(f"hh seed {seed}: already done in {cache}; reusing it.")
            return saved
    start = time.perf_counter()
    task = make_hh_world(seed, **config.world_sizes())
    groups = _groups(task.test_pairs)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    evaluate = dict(beta=config.beta, batch_size=config.eval_batch_size)
    # The base's log-probs depend on the test pairs only (drawn before the pool), so a change of pool size, share or
    # training length reuses them.
    key = hashlib.sha256(json.dumps([task.test_pairs.to_list(), os.path.basename(base_path)]).encode()).hexdigest()
    base_cache = os.path.join(config.output_dir, "cache", f"base_seed{seed}_{key[:12]}.json")
    cached = os.path.exists(base_cache)
    if cached:
        with open(base_cache) as handle:
            base_metrics = json.load(handle)
    else:
        tick = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(base_path)
        base_metrics = {**evaluate_model(base, tokenizer, task.test_pairs, None, **evaluate),
                        "eval_seconds": time.perf_counter() - tick}  # fmt: skip
        del base
        os.makedirs(os.path.dirname(base_cache), exist_ok=True)
        with open(base_cache, "w") as handle:
            json.dump(base_metrics, handle)
    reference = (np.asarray(base_metrics["chosen_logps"]), np.asarray(base_metrics["rejected_logps"]))
    out: dict[str, Any] = {
        "fingerprint": fingerprint,
        "seed": seed,
        "pool": {"rows": len(task.pool), **{k: int(v) for k, v in task.config.pool_composition().items()}},
        "test_pairs": len(task.test_pairs),
        "base": _clean(base_metrics),
        "trained": {},
    }
    log(f"hh seed {seed}: base preference accuracy {base_metrics['preference_accuracy']:.3f}"
        + (" (cached)." if cached else f" ({base_metrics['eval_seconds']:.0f}s)."))
    helpful, harmful = task.helpful_mask(), task.harmful_mask()
    for name in MODELS:
        indices = _selection(name, task, seed, config.budget)
        model, info = train_lora(config.recipe(), base_path, tokenizer, training_rows(task.pool, indices),
                                 os.path.join(config.output_dir, "tmp"), seed)  # fmt: skip
        tick = time.perf_counter()
        metrics = evaluate_model(model, tokenizer, task.test_pairs, None, reference_logps=reference, **evaluate)
        del model
        out["trained"][name] = {
            **_clean(metrics),
            "reward_accuracy_by": _breakdown(metrics, reference, groups),
            "rows": len(indices),
            "helpful_rows": int(helpful[indices].sum()),
            "harmful_rows": int(harmful[indices].sum()),
            "train_loss": info["train_loss"],
            "steps": info["steps"],
            "train_seconds": info["seconds"],
            "eval_seconds": time.perf_counter() - tick,
        }
        log(f"hh seed {seed} {name}: reward accuracy {metrics['reward_accuracy']:.3f}, margin "
            f"{metrics['mean_reward_margin']:.3f}, preference accuracy {metrics['preference_accuracy']:.3f} "
            f"({info['seconds']:.0f}s training).")  # fmt: skip
    out["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as handle:
        json.dump(out, handle, indent=2)
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "spread": float(array.max() - array.min()),
            "values": [float(v) for v in array]}  # fmt: skip


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation, min, max and spread (max - min) over seeds of every metric of every model."""
    rows: dict[str, Any] = {"base": {m: _stats([s["base"][m] for s in per_seed]) for m in ("preference_accuracy",
                                                                                           "mean_margin")}}
    for name in MODELS:
        rows[name] = {m: _stats([s["trained"][name][m] for s in per_seed]) for m in METRICS}
    return rows


def verdict(per_seed: list[dict[str, Any]], rows: dict[str, Any]) -> dict[str, Any]:
    """Does the oracle beat random and the base on reward accuracy by more than the seed-to-seed spread?

    - vs random: the oracle's reward accuracy is above random's in every seed, and the mean gap is larger than the
      larger spread (max - min over seeds) of the two models' reward accuracies;
    - vs the base: the oracle's reward accuracy is above 0.5 by more than its spread (the base's own is 0 by
      definition), and its preference accuracy is above the base's in every seed and on average by more than the
      larger spread of the two.
    """
    oracle, random_ = rows["oracle"]["reward_accuracy"], rows["random"]["reward_accuracy"]
    gaps = [s["trained"]["oracle"]["reward_accuracy"] - s["trained"]["random"]["reward_accuracy"] for s in per_seed]
    spread = max(oracle["spread"], random_["spread"])
    pref_gaps = [s["trained"]["oracle"]["preference_accuracy"] - s["base"]["preference_accuracy"] for s in per_seed]
    pref_spread = max(rows["oracle"]["preference_accuracy"]["spread"], rows["base"]["preference_accuracy"]["spread"])
    out = {
        "oracle_minus_random_reward_accuracy": gaps,
        "mean_gap_vs_random": sum(gaps) / len(gaps),
        "reward_accuracy_spread": spread,
        "beats_random": min(gaps) > 0 and sum(gaps) / len(gaps) > spread,
        "oracle_reward_accuracy_minus_chance": oracle["mean"] - 0.5,
        "oracle_minus_base_preference_accuracy": pref_gaps,
        "preference_accuracy_spread": pref_spread,
        "beats_base": oracle["mean"] - 0.5 > oracle["spread"] and min(pref_gaps) > 0
        and sum(pref_gaps) / len(pref_gaps) > pref_spread,
    }
    out["separates"] = out["beats_random"] and out["beats_base"]
    return out


def _cell(stat: dict[str, Any], digits: int = 3) -> str:
    mean, std, low, high = (f"{stat[k]:.{digits}f}" for k in ("mean", "std", "min", "max"))
    return f"{mean} ± {std} ({low}–{high})"


def render_markdown(results: dict[str, Any]) -> str:
    """`hh_check.md`: the design, per-seed figures, mean ± std (min–max) over seeds, and the verdict."""
    config, rows, check = results["config"], results["summary"], results["verdict"]
    per_seed = results["per_seed"]
    first = per_seed[0]
    lines = [
        "# HH family check: oracle 5% vs random 5% vs base (SmolLM2-135M-Instruct)",
        "",
        f"World `rose_fixtures.hh.make_hh_world`: pool {first['pool']['rows']} rows ({first['pool']['hh/correct']} "
        f"HH prefixes with the chosen reply, {first['pool']['hh/wrong']} twins: the same prefixes with the rejected "
        f"reply, {first['pool']['chatterbot/correct']} chatterbot-corpus rows), {first['test_pairs']} held-out test "
        f"pairs per seed. Each trained model: a fresh LoRA on {config['budget']:.0%} of the pool "
        f"({first['trained']['oracle']['rows']} rows), {config['epochs']} epochs, lr 1e-3, batch 4, r=8, max length "
        f"{config['max_length']}. Reward accuracy: the DPO implicit reward (base model as reference) of the chosen "
        "reply beats the rejected one's; margin: its mean, beta 0.1; preference accuracy: log p(chosen) > "
        "log p(rejected). The base's reward accuracy against itself is 0 by definition. Exact match does not apply "
        "to open dialogue and is not measured. Command: `python -m benchmarks.quality.hh_check` (`make bench-hh-check`).",
        "",
        "## Per seed",
        "",
        "Reward accuracy is also given per subtask (`how_to` / `talk`) and per length cell (the chosen reply is the "
        "shorter one / it is not); the test pairs are balanced on both.",
        "",
        "| seed | model | rows (target/twin) | reward acc. | how_to / talk | shorter / longer | reward margin | "
        "pref. acc. | train loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed in per_seed:
        base = seed["base"]["preference_accuracy"]
        lines.append(f"| {seed['seed']} | base | - | (0) | - | - | (0) | {base:.3f} | - |")
        for name in MODELS:
            m = seed["trained"][name]
            by = m["reward_accuracy_by"]
            subtask = " / ".join(f"{by['subtask'][k]:.2f}" for k in ("how_to", "talk"))
            length = " / ".join(f"{by['length'][k]:.2f}" for k in ("chosen_shorter", "chosen_longer"))
            lines.append(
                f"| {seed['seed']} | {name} | {m['rows']} ({m['helpful_rows']}/{m['harmful_rows']}) | "
                f"{m['reward_accuracy']:.3f} | {subtask} | {length} | {m['mean_reward_margin']:.3f} | "
                f"{m['preference_accuracy']:.3f} | {m['train_loss']:.3f} |"
            )
    lines += [
        "",
        "## Over seeds: mean ± std (min–max)",
        "",
        "| model | reward accuracy | mean reward margin | preference accuracy |",
        "|---|---|---|---|",
        f"| base | (0) | (0) | {_cell(rows['base']['preference_accuracy'])} |",
    ]
    for name in MODELS:
        r = rows[name]
        lines.append(f"| {name} | {_cell(r['reward_accuracy'])} | {_cell(r['mean_reward_margin'])} | "
                     f"{_cell(r['preference_accuracy'])} |")  # fmt: skip
    gaps = ", ".join(f"{g:+.3f}" for g in check["oracle_minus_random_reward_accuracy"])
    pref = ", ".join(f"{g:+.3f}" for g in check["oracle_minus_base_preference_accuracy"])
    lines += [
        "",
        "## Verdict",
        "",
        f"- Oracle − random reward accuracy per seed: {gaps}; mean {check['mean_gap_vs_random']:+.3f} against a "
        f"seed-to-seed spread (max − min) of {check['reward_accuracy_spread']:.3f}: beats random by more than the "
        f"spread: **{check['beats_random']}**.",
        f"- Oracle reward accuracy − 0.5: {check['oracle_reward_accuracy_minus_chance']:+.3f} (spread "
        f"{rows['oracle']['reward_accuracy']['spread']:.3f}); oracle − base preference accuracy per seed: {pref} "
        f"(spread {check['preference_accuracy_spread']:.3f}): beats the base: **{check['beats_base']}**.",
        f"- The family separates methods: **{check['separates']}**.",
        "",
        f"Wall time: {results['seconds']:.0f} s in this process; per seed "
        + ", ".join(f"{s['seconds']:.0f} s" for s in per_seed)
        + " (1 torch thread). Every number is in `hh_check.json`.",
        "",
    ]
    return "\n".join(lines)


def run_hh_check(config: HHCheckConfig | None = None) -> dict[str, Any]:
    """Every seed; writes `hh_check.json` and `hh_check.md` into `config.output_dir`."""
    import torch

    from rose_fixtures.smollm2 import smollm2_path
    from rose_hf.paths import cache_root

    config = config or HHCheckConfig()
    start = time.perf_counter()
    base_path = smollm2_path(config.cache_dir or cache_root())
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        per_seed = [check_seed(config, base_path, seed) for seed in config.seeds]
    finally:
        torch.set_num_threads(threads)
    rows = summarize(per_seed)
    results = {"config": asdict(config), "base_model": base_path, "per_seed": per_seed, "summary": rows,
               "verdict": verdict(per_seed, rows), "seconds": time.perf_counter() - start}  # fmt: skip
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, RESULT_FILE), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(config.output_dir, MARKDOWN_FILE), "w") as handle:
        handle.write(render_markdown(results))
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.hh_check",
        description="Oracle 5% vs random 5% vs base on the HH family (no selection method runs).",
    )
    defaults = HHCheckConfig()
    parser.add_argument("--output_dir", default=defaults.output_dir)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    for name in ("pool_size", "n_test_pairs", "epochs", "max_length", "eval_batch_size"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("target_correct_fraction", "target_wrong_fraction", "budget", "test_length_ratio"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks.quality.hh_check [--output_dir D] [--seeds 0 1 2] [--pool_size N] [--epochs E] ...`."""
    args = make_parser().parse_args(argv)
    from accelerate import PartialState

    from rose_fixtures.recipe import quiet_libraries

    PartialState()
    quiet_libraries()
    values = vars(args)
    config = HHCheckConfig(**{**values, "seeds": tuple(values["seeds"])})
    results = run_hh_check(config)
    separates = results["verdict"]["separates"]
    print(f"hh check -> {os.path.join(config.output_dir, MARKDOWN_FILE)}; separates: {separates}")
    return results


if __name__ == "__main__":
    main()
