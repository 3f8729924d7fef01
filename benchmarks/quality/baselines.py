"""Baseline data selectors of the quality benchmark: random, RDS-style representation similarity, and BM25.

Every selector returns one score per pool row (higher = more wanted), in pool order, so that all methods, ROSE and
LESS included, share `rose_hf.scoring.similarity.select_top` / `budget_curve` for their selections at every budget. The
similarity baselines aggregate over the validation pairs the way ROSE does: mean over the pairs of a subtask, then
the max over subtasks, so the only difference between methods is the similarity itself.

- `random_scores`: a seeded uniform permutation.
- `rds_scores` (representation-based data selection): cosine between the mean last hidden state of each pool example
  (prompt + completion) and of each validation pair's prompt + chosen response, under the BASE model.
- `bm25_scores`: BM25 (`bm25s`) of each pool text against each validation pair's prompt + chosen text as the query,
  on whitespace tokens (digits are words here, so the default two-letter token pattern would drop them) with no
  stopwords.

Example:
```
python -c "from benchmarks.quality.baselines import bm25_scores; from rose_fixtures.tasks import make_synthetic_task; \
t = make_synthetic_task(); print(bm25_scores(t.pool, t.validation)[:5])"
```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from rose_hf.data import DEFAULT_SUBTASK, SUBTASK_COLUMN


def aggregate_subtasks(similarity: np.ndarray, subtasks: Sequence[str], aggregation: str = "max") -> np.ndarray:
    """Per pool row: the mean similarity over each subtask's validation pairs, then max (or mean) over subtasks.

    Args:
        similarity: `(N, V)` similarity of every pool row to every validation pair.
        subtasks: `(V,)` subtask of each pair.
        aggregation: `"max"` (ROSE's choice) or `"mean"` over subtasks.

    Returns:
        `(N,)` float32 scores.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    labels = np.asarray(list(subtasks))
    if similarity.ndim != 2 or similarity.shape[1] != labels.shape[0]:
        raise ValueError(f"similarity {similarity.shape} needs one column per validation pair ({labels.shape[0]}).")
    names = list(dict.fromkeys(labels.tolist()))
    per_subtask = np.stack([similarity[:, labels == name].mean(axis=1) for name in names], axis=1)
    if aggregation == "max":
        return per_subtask.max(axis=1).astype(np.float32)
    if aggregation == "mean":
        return per_subtask.mean(axis=1).astype(np.float32)
    raise ValueError(f"aggregation={aggregation!r} is not one of 'max', 'mean'.")


def _subtasks(pairs: Dataset) -> list[str]:
    if SUBTASK_COLUMN in pairs.column_names:
        return [str(s) for s in pairs[SUBTASK_COLUMN]]
    return [DEFAULT_SUBTASK] * len(pairs)


def _text(value) -> str:
    # Conversational rows are lists of messages: their contents, in order.
    return value if isinstance(value, str) else " ".join(message["content"] for message in value)


def pool_texts(pool: Dataset) -> list[str]:
    """`prompt + completion` of every pool row (plain or conversational prompt-completion)."""
    return [_text(p) + " " + _text(c) for p, c in zip(pool["prompt"], pool["completion"])]


def validation_texts(pairs: Dataset) -> list[str]:
    """`prompt + chosen` of every validation pair."""
    return [_text(p) + " " + _text(c) for p, c in zip(pairs["prompt"], pairs["chosen"])]


@torch.no_grad()
def mean_hidden_states(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised mean (over non-padding tokens) of the last hidden layer of each text, `(len(texts), hidden)`.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (right padding is used).
        texts: the texts.
        batch_size: texts per forward pass.
    """
    from rose_hf.data import pad_token_id

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token_id = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Batches of similar length waste less compute on padding; results are put back in text order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            encoded = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True).to(device)
            hidden = model(**encoded, output_hidden_states=True, use_cache=False).hidden_states[-1].float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            out[index] = torch.nn.functional.normalize(mean, dim=1).cpu().numpy()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def rds_scores(
    model: nn.Module, tokenizer, pool: Dataset, pairs: Dataset, aggregation: str = "max", batch_size: int = 64
) -> np.ndarray:
    """RDS-style scores: cosine of mean last hidden states (base model), aggregated over subtasks like ROSE.

    Args:
        model: the base model (not fine-tuned).
        tokenizer: its tokenizer.
        pool: `prompt` + `completion` rows.
        pairs: `prompt`, `chosen`, optional `subtask` rows.
        aggregation: over subtasks, `"max"` or `"mean"`.
        batch_size: texts per forward pass.
    """
    pool_embeddings = mean_hidden_states(model, tokenizer, pool_texts(pool), batch_size)
    pair_embeddings = mean_hidden_states(model, tokenizer, validation_texts(pairs), batch_size)
    return aggregate_subtasks(pool_embeddings @ pair_embeddings.T, _subtasks(pairs), aggregation)


def bm25_scores(pool: Dataset, pairs: Dataset, aggregation: str = "max") -> np.ndarray:
    """BM25 scores of every pool text against each validation pair's text, aggregated over subtasks like ROSE.

    Mean over a subtask's pairs of per-pair BM25 equals BM25 of the subtask's concatenated query up to the
    normalisation by the number of pairs (BM25 is a sum over query tokens), so this is the usual
    "concatenated validation set as the query" baseline, per subtask.

    Args:
        pool: `prompt` + `completion` rows.
        pairs: `prompt`, `chosen`, optional `subtask` rows.
        aggregation: over subtasks, `"max"` or `"mean"`.
    """
    import bm25s

    def tokenize(texts: list[str]) -> list[list[str]]:
        return [text.lower().split() for text in texts]

    retriever = bm25s.BM25()
    corpus = tokenize(pool_texts(pool))
    retriever.index(corpus, show_progress=False)
    vocabulary = {token for doc in corpus for token in doc}
    similarity = np.zeros((len(pool), len(pairs)), dtype=np.float64)
    for j, query in enumerate(tokenize(validation_texts(pairs))):
        # A query word that no pool text contains scores 0 everywhere; bm25s refuses unknown words.
        known = [token for token in query if token in vocabulary]
        if known:
            similarity[:, j] = retriever.get_scores(known)
    return aggregate_subtasks(similarity, _subtasks(pairs), aggregation)
