"""Tokenisation and collation of the instruction pool (TRL's SFT formats) and the preference pairs (TRL's formats).

Both follow TRL's own preparation (`SFTTrainer._prepare_dataset`, `DPOTrainer._prepare_dataset`) through TRL's data
utilities, with two differences that selection needs: rows are never dropped or reordered (every pool row gets a
score, in pool order), and truncation is counted rather than silent.

Supported pool formats (one per dataset):
- prompt-completion: `prompt`, `completion` (strings, or lists of messages) -> loss on the completion only;
- conversational: `messages` (or ShareGPT `conversations`) -> loss on the assistant turns when the chat template marks
  them with `{% generation %}`, otherwise on every token (as `SFTTrainer` does);
- language modeling: `text` -> loss on every token.

Supported preference formats: explicit prompt (`prompt`, `chosen`, `rejected`), implicit prompt (`chosen`,
`rejected` sharing a prefix), standard or conversational; an optional `subtask` column groups the pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value

from .logs import get_logger

logger = get_logger(__name__)

IGNORE_INDEX = -100
SUBTASK_COLUMN = "subtask"
DEFAULT_SUBTASK = "all"

SFT_FORMATS = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "conversations": ("conversations",),
    "text": ("text",),
}


def sft_format(dataset: Dataset, name: str = "train_dataset") -> str:
    """Which of TRL's SFT formats `dataset` is in; a `ValueError` naming the columns when none or several fit."""
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: pass the instruction pool to select from (at least one row).")
    columns = set(dataset.column_names)
    found = [fmt for fmt, needed in SFT_FORMATS.items() if set(needed) <= columns]
    if "input_ids" in columns and not found:
        raise ValueError(
            f"`{name}` is already tokenized (`input_ids`); rose_hf needs the raw text to build the completion mask: "
            "pass the dataset before tokenization, with `prompt`/`completion`, `messages` or `text` columns."
        )
    if not found:
        raise ValueError(
            f"`{name}` has columns {sorted(columns)}, none of TRL's SFT formats: rename your columns to "
            "`prompt` + `completion`, `messages`, or `text`."
        )
    if len(found) > 1:
        raise ValueError(
            f"`{name}` mixes formats: it has the columns of {found}. Keep the columns of exactly one format "
            "(e.g. `dataset.remove_columns(...)`)."
        )
    return found[0]


def _conversational(value: Any) -> bool:
    # `from` is ShareGPT's `role` (the `conversations` format).
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and (
        "role" in value[0] or "from" in value[0]
    )


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


ASSISTANT_ROLES = ("assistant", "gpt")  # ShareGPT's `gpt`


def _blank_turns(messages: Any) -> bool:
    """A conversation (or conversational completion) with nothing to learn: no assistant turn, or one whose content
    is missing or blank (and that calls no tool)."""
    if _is_empty(messages):
        return True
    if not isinstance(messages, list):
        return False
    turns = [m for m in messages if isinstance(m, dict) and (m.get("role") or m.get("from")) in ASSISTANT_ROLES]
    return not turns or any(
        _is_empty(m.get("content", m.get("value"))) and not m.get("tool_calls") for m in turns
    )  # fmt: skip


def blank_target(example: dict[str, Any], fmt: str) -> bool:
    """Whether a pool row has no training target: a missing or blank `completion` or `text`, or a conversation
    without an assistant turn or with a blank one. Such a row is flagged, scored lowest and never selected (one rule
    for all formats)."""
    if fmt == "text":
        return _is_empty(example.get("text"))
    if fmt == "prompt_completion":
        completion = example.get("completion")
        return _blank_turns(completion) if isinstance(completion, list) else _is_empty(completion)
    return _blank_turns(example.get(fmt))


def _check_row(value: Any, column: str, index: int, name: str, conversational: bool, allow_empty: bool = False) -> None:
    if _is_empty(value):
        if allow_empty:
            return
        raise ValueError(
            f"`{name}` row {index} has an empty `{column}`: drop that row (e.g. `dataset.filter(...)`) or fill it."
        )
    if conversational != _conversational(value):
        kind = "a list of messages" if conversational else "a string"
        raise ValueError(
            f"`{name}` mixes formats: row {index} column `{column}` is not {kind} like row 0. Make every row of the "
            "column the same kind (all strings, or all lists of {'role', 'content'} messages)."
        )


def _tokenize(tokenizer, value: Any, **kwargs) -> dict[str, list[int]]:
    from trl.data_utils import _tokenize as trl_tokenize

    return trl_tokenize(tokenizer, value, **kwargs)


def _prefix_length(ids: list[int], other: list[int]) -> int:
    from trl.data_utils import common_prefix_length

    return common_prefix_length(ids, other)


def _chat_kwargs(example: dict[str, Any]) -> dict[str, Any]:
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"tools": tools, **(example.get("chat_template_kwargs") or {})}


def tokenize_sft_example(
    example: dict[str, Any],
    tokenizer,
    fmt: str,
    max_length: int | None,
    assistant_only_loss: bool = False,
    completion_only_loss: bool | None = None,
) -> dict[str, Any]:
    """`input_ids` and `labels` (`-100` where no loss is taken) of one pool row, as `SFTTrainer` builds them.

    `assistant_only_loss` and `completion_only_loss` are `SFTConfig`'s: the features are gradients of the loss the
    user's trainer takes (TRL's defaults: loss on the completion of prompt-completion rows, on every token of a
    `messages` conversation unless `assistant_only_loss=True`).

    Also returns `rose_num_tokens` (loss tokens left after truncation) and `rose_truncated`.
    """
    if fmt == "conversations":
        from trl.data_utils import maybe_convert_to_chatml

        example = maybe_convert_to_chatml(dict(example))
        fmt = "messages"
    eos = tokenizer.eos_token
    if blank_target(example, fmt):
        # Nothing to learn from: no loss token, so the row is flagged (no gradient) instead of scored on EOS alone.
        text = example.get("prompt") or ""
        input_ids = _tokenize(tokenizer, text)["input_ids"] if isinstance(text, str) and text else []
        input_ids = input_ids[:max_length] if max_length is not None else input_ids
        input_ids = input_ids or [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
        return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(input_ids), "rose_num_tokens": 0,
                "rose_truncated": False}
    if fmt == "prompt_completion":
        prompt, completion = example["prompt"], example["completion"]
        if prompt is None:
            prompt = ""
        if _conversational(prompt):
            kwargs = _chat_kwargs(example)
            prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
            input_ids = _tokenize(tokenizer, prompt + completion, **kwargs)["input_ids"]
        else:
            if eos and not completion.endswith(eos):  # SFTTrainer appends EOS to standard completions
                completion = completion + eos
            prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
            input_ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
        prompt_len = 0 if completion_only_loss is False else _prefix_length(prompt_ids, input_ids)
        labels = [IGNORE_INDEX] * prompt_len + input_ids[prompt_len:]
    elif fmt == "messages":
        processed = _tokenize(
            tokenizer, example["messages"], return_assistant_tokens_mask=assistant_only_loss, **_chat_kwargs(example)
        )
        input_ids = processed["input_ids"]
        if assistant_only_loss:
            mask = processed.get("assistant_masks") or []
            labels = [tok if bit else IGNORE_INDEX for tok, bit in zip(input_ids, mask)]
        else:
            labels = list(input_ids)
    else:
        text = example["text"]
        if eos and not text.endswith(eos):
            text = text + eos
        input_ids = _tokenize(tokenizer, text)["input_ids"]
        labels = list(input_ids)

    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:  # keep_start, SFTTrainer's default truncation mode
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    # The first token is never predicted, so it cannot carry loss.
    num_tokens = sum(1 for label in labels[1:] if label != IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "rose_num_tokens": num_tokens, "rose_truncated": truncated}


def _values(dataset: Dataset, column: str) -> list[Any]:
    """A column as a list, read in one batch (iterating `dataset[column]` reads it row by row: 7 s per 270k rows)."""
    return dataset[column][:]


# Rows per batch when a check reads a whole pool: Python objects for this many rows at a time, not the whole pool's.
CHECK_BATCH_ROWS = 16_384


def _row_batches(dataset: Dataset, columns: list[str], size: int | None = None):
    """`(first row, {column: values})` of consecutive row ranges of `dataset`, each read in one batch."""
    view, size = dataset.select_columns(columns), size or CHECK_BATCH_ROWS
    for start in range(0, len(view), size):
        yield start, view[start : start + size]


def _first_filled(dataset: Dataset, column: str) -> Any:
    """The first non-empty value of `column` (the first value when all are empty)."""
    for _, values in _row_batches(dataset, [column]):
        found = next((value for value in values[column] if not _is_empty(value)), None)
        if found is not None:
            return found
    return dataset[0][column]


def check_dataset_type(dataset: Any, name: str) -> None:
    """A `datasets.Dataset` in memory or on disk, which selection needs (it scores and indexes every row)."""
    from datasets import DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(dataset, Dataset):
        return
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"`{name}` is an IterableDataset (streaming, or `to_iterable_dataset()`), but selection scores every row "
            f"by its index: materialise it, e.g. `Dataset.from_generator(lambda: (yield from {name}), "
            f"features={name}.features)`, or load it with `load_dataset(..., streaming=False)`."
        )
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise ValueError(
            f"`{name}` is a {type(dataset).__name__} with splits {list(dataset)}: pass one split, e.g. "
            f"`{name}['{next(iter(dataset), 'train')}']`."
        )
    raise ValueError(
        f"`{name}` is a {type(dataset).__name__}, not a `datasets.Dataset`: convert it, e.g. "
        "`Dataset.from_list(rows)` or `Dataset.from_pandas(frame)`."
    )


def check_sft_dataset(dataset: Dataset, name: str = "train_dataset") -> str:
    """Validate the pool before any work: one format, no mixed rows. Returns the format.

    Empty prompts are fine; a row without a training target (`blank_target`: a missing or blank completion or text,
    no assistant turn or a blank one) is not an error in a large pool: it is flagged, scored lowest and never
    selected. A pool of nothing but such rows is refused.
    """
    check_dataset_type(dataset, name)
    fmt = sft_format(dataset, name)
    columns = SFT_FORMATS[fmt]
    reference = {column: _first_filled(dataset, column) for column in columns}
    conversational = {column: _conversational(value) for column, value in reference.items()}
    if fmt in ("messages", "conversations"):
        conversational = {column: True for column in columns}
    blank = 0
    for start, values in _row_batches(dataset, columns):  # a pool of millions of rows is never all in Python at once
        for column in columns:
            for index, value in enumerate(values[column], start):
                _check_row(value, column, index, name, conversational[column], allow_empty=True)
        blank += sum(blank_target(dict(zip(columns, row)), fmt) for row in zip(*(values[c] for c in columns)))
    if blank == len(dataset):
        raise ValueError(
            f"Every row of `{name}` lacks a training target (missing or blank {' / '.join(columns)}, or no non-empty "
            "assistant turn): there is nothing to select. Check the column mapping of your pool."
        )
    return fmt  # the blank rows are counted and logged with the truncated ones when tokenized


# The tokenized pool's columns: int32 token ids and labels (every vocabulary fits) take half the memory of Arrow's
# default int64 for Python ints, which an in-memory pool of 1M rows held as ~0.4 KB per row (docs/speed.md).
SFT_TOKEN_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")), "rose_num_tokens": Value("int32"),
    "rose_truncated": Value("bool"),
})  # fmt: skip


def prepare_sft_dataset(
    dataset: Dataset,
    tokenizer,
    max_length: int | None,
    name: str = "train_dataset",
    num_proc: int | None = None,
    assistant_only_loss: bool = False,
    completion_only_loss: bool | None = None,
    cache_file_name: str | None = None,
) -> Dataset:
    """Tokenise every pool row in order (none dropped). Columns: `input_ids`, `labels`, `rose_num_tokens`,
    `rose_truncated`. The loss flags are `SFTConfig`'s (see `tokenize_sft_example`).

    `cache_file_name`: where the tokens of a pool held in memory (`Dataset.from_list`, `from_pandas`, an Arrow
    table) are written and memory-mapped from, rewritten on every call, so that a large pool's tokens (several times
    its text) do not stay in RAM. A pool read from files is cached by `datasets` beside them, as `map` always does.
    """
    fmt = check_sft_dataset(dataset, name)
    to_file = {}
    if cache_file_name is not None and not dataset.cache_files:
        to_file = {"cache_file_name": cache_file_name, "load_from_cache_file": False}
    return dataset.map(
        tokenize_sft_example,
        fn_kwargs={"tokenizer": tokenizer, "fmt": fmt, "max_length": max_length,
                   "assistant_only_loss": assistant_only_loss, "completion_only_loss": completion_only_loss},
        remove_columns=dataset.column_names,
        features=SFT_TOKEN_FEATURES,
        num_proc=num_proc,
        desc=f"rose_hf: tokenizing {name}",
        **to_file,
    )


def check_preference_dataset(dataset: Dataset, name: str = "preference_dataset") -> None:
    """Validate the preference pairs before any work: columns, no empty rows, no pair whose chosen == rejected."""
    check_dataset_type(dataset, name)
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one (prompt, chosen, rejected) preference pair.")
    columns = set(dataset.column_names)
    missing = [column for column in ("chosen", "rejected") if column not in columns]
    if missing:
        raise ValueError(
            f"`{name}` lacks column(s) {missing} (it has {sorted(columns)}): preference data needs `chosen` and "
            "`rejected` (and optionally `prompt` and `subtask`), as in TRL's preference format."
        )
    used = [column for column in ("prompt", "chosen", "rejected") if column in columns]
    values = {column: _values(dataset, column) for column in columns}
    for column in used:
        conversational = _conversational(values[column][0])
        for index, value in enumerate(values[column]):
            _check_row(value, column, index, name, conversational)
            if column != "prompt" and conversational and _blank_turns(value):  # as an empty string answer is
                raise ValueError(
                    f"`{name}` row {index} has an empty `{column}` (no assistant turn with content): drop that row "
                    "(e.g. `dataset.filter(...)`) or fill it."
                )
    for index, (chosen, rejected) in enumerate(zip(values["chosen"], values["rejected"])):
        if chosen == rejected:
            raise ValueError(
                f"`{name}` row {index}: `chosen` is identical to `rejected`, so the pair carries no preference: "
                "fix or drop that row."
            )
    if SUBTASK_COLUMN in columns and any(value is None or str(value) == "" for value in values[SUBTASK_COLUMN]):
        raise ValueError(f"`{name}` has rows with an empty `{SUBTASK_COLUMN}`: give every row a subtask name.")


def tokenize_preference_example(example: dict[str, Any], tokenizer) -> dict[str, Any]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` of one pair, exactly as `DPOTrainer` tokenizes it."""
    from trl.data_utils import extract_prompt

    if "prompt" not in example or example["prompt"] is None:
        example = {**example, **extract_prompt(example)}
    prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
    if _conversational(prompt) or _conversational(chosen):
        kwargs = _chat_kwargs(example)
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
        prompt_chosen = _tokenize(tokenizer, prompt + chosen, **kwargs)["input_ids"]
        prompt_rejected = _tokenize(tokenizer, prompt + rejected, **kwargs)["input_ids"]
    else:
        eos = tokenizer.eos_token
        chosen = chosen if not eos or chosen.endswith(eos) else chosen + eos
        rejected = rejected if not eos or rejected.endswith(eos) else rejected + eos
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        prompt_chosen = _tokenize(tokenizer, prompt + chosen)["input_ids"]
        prompt_rejected = _tokenize(tokenizer, prompt + rejected)["input_ids"]
    prompt_len = min(_prefix_length(prompt_ids, prompt_chosen), _prefix_length(prompt_ids, prompt_rejected))
    return {
        "prompt_ids": prompt_ids[:prompt_len],
        "chosen_ids": prompt_chosen[prompt_len:],
        "rejected_ids": prompt_rejected[prompt_len:],
        SUBTASK_COLUMN: str(example.get(SUBTASK_COLUMN) or DEFAULT_SUBTASK),
    }


def prepare_preference_dataset(
    dataset: Dataset, tokenizer, max_length: int | None, name: str = "preference_dataset"
) -> Dataset:
    """Tokenise the preference pairs in order. Columns: `prompt_ids`, `chosen_ids`, `rejected_ids`, `subtask`,
    `rose_truncated`. A pair whose prompt alone fills `max_length` is an error (it would have no completion)."""
    check_preference_dataset(dataset, name)
    tokenized = dataset.map(
        tokenize_preference_example,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=dataset.column_names,
        desc=f"rose_hf: tokenizing {name}",
    )
    truncated = []
    for index, row in enumerate(tokenized):
        longest = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        if max_length is not None and len(row["prompt_ids"]) >= max_length:
            raise ValueError(
                f"`{name}` row {index}: the prompt alone is {len(row['prompt_ids'])} tokens, at least `max_length` "
                f"({max_length}), so no completion token would remain: raise `max_length` or shorten that prompt."
            )
        truncated.append(max_length is not None and longest > max_length)
    return tokenized.add_column("rose_truncated", truncated)


def preference_to_sft(tokenized_pairs: Dataset, max_length: int | None) -> Dataset:
    """LESS's validation examples: (prompt, chosen) as SFT rows with the loss on `chosen`."""

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        input_ids = row["prompt_ids"] + row["chosen_ids"]
        labels = [IGNORE_INDEX] * len(row["prompt_ids"]) + row["chosen_ids"]
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return {"input_ids": input_ids, "labels": labels}

    return tokenized_pairs.map(convert, remove_columns=["prompt_ids", "chosen_ids", "rejected_ids"])


@dataclass
class SFTCollator:
    """Right-pads `input_ids` (with `pad_token_id`) and `labels` (with -100); builds `attention_mask`.

    Right padding matters: with a causal mask, right-padded positions influence no real token, so their output
    gradients are exactly zero and per-example gradients need no extra masking.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def preference_collator(pad_token_id: int, max_length: int | None):
    """TRL's own `DataCollatorForPreference`: batch = [chosen rows..., rejected rows...], right-padded."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(pad_token_id=pad_token_id, max_length=max_length)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = ("prompt_ids", "chosen_ids", "rejected_ids")
        return collator([{key: row[key] for key in keep} for row in rows])

    return collate


def pad_token_id(tokenizer) -> int:
    """The pad id TRL would use: the tokenizer's pad token, else its EOS token."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        logger.warning("The tokenizer has no pad token; padding with the EOS token, as TRL does.")
        return tokenizer.eos_token_id
    raise ValueError(
        "The tokenizer has neither a pad token nor an EOS token: set one, e.g. `tokenizer.pad_token = "
        "tokenizer.eos_token` or `tokenizer.add_special_tokens({'pad_token': '<pad>'})`."
    )
