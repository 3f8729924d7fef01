"""Evaluation of a trained model on the synthetic target task: preference accuracy, DPO reward accuracy, exact match.

- Pairwise preference accuracy on held-out pairs: `log p(chosen|x) > log p(rejected|x)`, log-probs summed over the
  completion tokens (EOS included), exactly as DPO scores a pair.
- DPO implicit-reward accuracy against a reference (the untrained base model):
  `beta * (logp_c - ref_c) - beta * (logp_r - ref_r) > 0`, i.e. did training widen the pair's margin.
- Exact match of greedy generations on held-out prompts, whitespace-normalised, against the reference answer; and,
  for the synthetic task, how often the generation is the task's systematic WRONG answer (the harm the pool holds).

The accuracies come from the `evaluate` metric in `rose_fixtures/metrics/preference_accuracy`, which also serves a
`Trainer`'s `compute_metrics` through `preference_compute_metrics`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from rose_hf.logs import get_logger

logger = get_logger(__name__)

DEFAULT_BETA = 0.1
# Longest synthetic answer: 6 digits, plus EOS, plus slack.
DEFAULT_MAX_NEW_TOKENS = 8


@functools.lru_cache(maxsize=1)
def load_preference_metric():
    """The `preference_accuracy` evaluate module, loaded offline from rose_hf's own folder (cached per process)."""
    import evaluate

    from .metrics import preference_accuracy_path

    return evaluate.load(preference_accuracy_path())


def preference_compute_metrics(beta: float = DEFAULT_BETA) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for a `Trainer` whose predictions are per-pair log-probabilities.

    The evaluation predictions must be a `(N, 2)` array `[chosen_logps, rejected_logps]`, or `(N, 4)` with the
    reference log-probabilities appended `[..., ref_chosen_logps, ref_rejected_logps]` (e.g. from a
    `prediction_step` that returns summed completion log-probs).

    Args:
        beta: DPO beta for `mean_reward_margin`.

    Example:
    ```python
    >>> trainer = Trainer(..., compute_metrics=preference_compute_metrics(beta=0.1))  # doctest: +SKIP
    ```
    """

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0]
        if isinstance(predictions, (tuple, list)):
            predictions = np.stack([np.asarray(p).reshape(-1) for p in predictions], axis=1)
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.ndim != 2 or predictions.shape[1] not in (2, 4):
            raise ValueError(
                f"preference_compute_metrics expects predictions of shape (N, 2) or (N, 4), got {predictions.shape}: "
                "return [chosen_logps, rejected_logps(, ref_chosen_logps, ref_rejected_logps)] per pair."
            )
        inputs = {"chosen_logps": predictions[:, 0], "rejected_logps": predictions[:, 1]}
        if predictions.shape[1] == 4:
            inputs |= {"ref_chosen_logps": predictions[:, 2], "ref_rejected_logps": predictions[:, 3]}
        return load_preference_metric().compute(**inputs, beta=beta)

    return compute_metrics


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def completion_logps(
    model: nn.Module, tokenizer, pairs: Dataset, batch_size: int = 64, max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Summed completion log-probabilities of the chosen and rejected responses of every pair, in pair order.

    Tokenised exactly as `DPOTrainer` does (EOS appended to each completion).

    Args:
        model: a causal LM (a PEFT model is evaluated with its adapter on).
        tokenizer: the model's tokenizer.
        pairs: `prompt`, `chosen`, `rejected` rows.
        batch_size: pairs per forward pass.
        max_length: truncate sequences (None: no truncation).

    Returns:
        `(chosen_logps, rejected_logps)`, each `(len(pairs),)` float64.
    """
    from rose_hf.data import pad_token_id, preference_collator, prepare_preference_dataset
    from rose_hf.features.gradients import sequence_log_probs

    tokens = prepare_preference_dataset(pairs, tokenizer, max_length, name="test_pairs")
    collate = preference_collator(pad_token_id(tokenizer), max_length)
    was_training = model.training
    model.eval()
    device = _device(model)
    # Batches of similar length waste little on padding (long open-dialogue pairs cost ~2x without); the log-probs go
    # back to pair order at the end.
    lengths = [len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) for row in tokens]
    order = np.argsort(lengths, kind="stable")
    chosen, rejected = np.empty(len(tokens)), np.empty(len(tokens))
    try:
        for start in range(0, len(tokens), batch_size):
            rows = order[start : start + batch_size]
            batch = collate([tokens[int(i)] for i in rows])
            batch = {key: value.to(device) for key, value in batch.items()}
            logps = sequence_log_probs(model, batch).double().cpu()
            c, r = logps.chunk(2)
            chosen[rows], rejected[rows] = c.numpy(), r.numpy()
    finally:
        model.train(was_training)
    return chosen, rejected


def _normalise(text: str) -> str:
    return " ".join(text.split())


@torch.no_grad()
def greedy_generations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
) -> list[str]:
    """Greedy completions of `prompts`, decoded without special tokens.

    Prompts are tokenised as `SFTTrainer` tokenises them for training: plain strings as the tokenizer tokenises them,
    conversational prompts (lists of messages) through the chat template with the generation prompt appended. Rows
    are left-padded so every row continues from its last prompt token.

    Args:
        model: a causal LM (PEFT models generate with their adapter on).
        tokenizer: the model's tokenizer (needs a pad or EOS token; a chat template for conversational prompts).
        prompts: the prompts, strings or lists of `{"role", "content"}` messages.
        max_new_tokens: generation length limit.
        batch_size: prompts per `generate` call.
    """
    from rose_hf.data import pad_token_id

    pad_id = pad_token_id(tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = _device(model)
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            if chunk and not isinstance(chunk[0], str):  # messages: what apply_chat_template(tokenize=True) gives
                chunk = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
                encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            else:
                encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def exact_match(generations: Sequence[str], references: Sequence[str]) -> float:
    """Share of generations equal to their reference after whitespace normalisation.

    Args:
        generations: decoded model outputs.
        references: the expected answers, same order.
    """
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} references: pass one per prompt.")
    if not references:
        raise ValueError("exact_match got no references.")
    return float(np.mean([_normalise(g) == _normalise(r) for g, r in zip(generations, references)]))


def evaluate_model(
    model: nn.Module,
    tokenizer,
    test_pairs: Dataset,
    test_prompts: Dataset | None,
    reference_logps: tuple[np.ndarray, np.ndarray] | None = None,
    beta: float = DEFAULT_BETA,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Every final-model metric of the quality benchmark for one model.

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        test_pairs: held-out `prompt`, `chosen`, `rejected` pairs.
        test_prompts: held-out `prompt`, `reference` rows; with a `wrong_reference` column (the harmful twin's
            answer) or prompts of `rose_fixtures.tasks`, also `wrong_match`. None or empty: no generation and no
            `exact_match` (open dialogue, `rose_fixtures.hh`, has no reference answer to match).
        reference_logps: `(chosen, rejected)` log-probs of the reference model (the base model) on `test_pairs`;
            without them there is no `reward_accuracy`.
        beta: DPO beta of the implicit reward.
        max_new_tokens: greedy generation limit.
        batch_size: pairs / prompts per forward pass.

    Returns:
        `preference_accuracy`, `mean_margin`, (`reward_accuracy`, `mean_reward_margin`), `exact_match`,
        `wrong_match` (share of generations equal to the synthetic task's systematic wrong answer, when the prompts
        are synthetic), `num_pairs`, `num_prompts`, `chosen_logps`/`rejected_logps` (lists, for reuse as a
        reference) and a few example generations; without test prompts, only the pair metrics and the log-probs.
    """
    chosen, rejected = completion_logps(model, tokenizer, test_pairs, batch_size=batch_size)
    inputs: dict[str, Any] = {"chosen_logps": chosen, "rejected_logps": rejected}
    if reference_logps is not None:
        inputs |= {"ref_chosen_logps": reference_logps[0], "ref_rejected_logps": reference_logps[1]}
    metrics = dict(load_preference_metric().compute(**inputs, beta=beta))
    metrics["chosen_logps"] = chosen.tolist()
    metrics["rejected_logps"] = rejected.tolist()
    if test_prompts is None or len(test_prompts) == 0:
        return metrics
    prompts = list(test_prompts["prompt"])
    references = list(test_prompts["reference"])
    generations = greedy_generations(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics["exact_match"] = exact_match(generations, references)
    if "wrong_reference" in test_prompts.column_names:
        wrong = list(test_prompts["wrong_reference"])
    else:
        wrong = _wrong_answers(prompts)
    if wrong is not None:
        metrics["wrong_match"] = exact_match(generations, wrong)
    metrics["num_prompts"] = len(prompts)
    metrics["examples"] = [
        {"prompt": _prompt_text(p), "generation": _normalise(g), "reference": _normalise(r)}
        for p, g, r in list(zip(prompts, generations, references))[:5]
    ]
    return metrics


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)


def _wrong_answers(prompts: Sequence[Any]) -> list[str] | None:
    from .tasks import parse_prompt, wrong_answer

    if prompts and not isinstance(prompts[0], str):
        return None
    try:
        return [wrong_answer(*parse_prompt(p)) for p in prompts]
    except ValueError:  # not synthetic prompts
        return None


def selection_metrics(selected, helpful: np.ndarray, harmful: np.ndarray, source: Sequence[str] | None = None) -> dict:
    """Precision (helpful share), harmful share and recall of helpful rows of one selection, and its sources.

    Args:
        selected: selected pool indices.
        helpful: `(N,)` bool ground truth.
        harmful: `(N,)` bool ground truth.
        source: per-row source labels (optional), for the composition.
    """
    selected = np.asarray(selected, dtype=np.int64)
    k = len(selected)
    num_helpful = int(helpful[selected].sum())
    num_harmful = int(harmful[selected].sum())
    out = {
        "k": k,
        "precision": num_helpful / k if k else float("nan"),
        "harmful_share": num_harmful / k if k else float("nan"),
        "recall": num_helpful / max(1, int(helpful.sum())),
        "num_helpful": num_helpful,
        "num_harmful": num_harmful,
    }
    if source is not None:
        counts: dict[str, int] = {}
        for i in selected.tolist():
            counts[source[i]] = counts.get(source[i], 0) + 1
        out["by_source"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return out


BAD_BELOW, GOOD_FROM = 0.5, 0.8  # issue 18's bands of a selection's precision over the oracle's at the same budget


def quality_band(relative_precision: float) -> str:
    """"bad" below 0.5 x the oracle's precision at the same budget, "good" from 0.8 x, "middling" between: the bands
    the health check is judged by (it should warn on every bad selection and on no good one)."""
    return "bad" if relative_precision < BAD_BELOW else "good" if relative_precision >= GOOD_FROM else "middling"


def oracle_scores(helpful: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """The ideal ranking: helpful rows first, then the other tasks, harmful rows last (ties by index)."""
    return np.where(helpful, 2.0, np.where(harmful, 0.0, 1.0)).astype(np.float32)


def random_scores(num_rows: int, seed: int) -> np.ndarray:
    """Scores whose top-k is a uniformly random k-subset (a seeded permutation), `(num_rows,)` float32."""
    return np.random.default_rng(seed).permutation(num_rows).astype(np.float32)
