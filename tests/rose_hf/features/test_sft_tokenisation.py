"""Pool tokenisation equals `SFTTrainer`'s, for every SFT format: the same input ids, and loss on the same tokens.

rose_hf tokenises the pool itself (no row may be dropped or reordered, and truncation is counted), so it must not drift
from what TRL's trainer would train on: the labels here come from SFTTrainer's own dataset preparation and collator.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import make_lora_model
from trl import SFTConfig, SFTTrainer

from rose_hf.data import IGNORE_INDEX, prepare_sft_dataset

PROMPTS = ["what is the answer ?", "is the world good ?", "hello"]
ANSWERS = ["yes", "no the world is bad", "hello world"]


def datasets_by_format() -> dict[str, Dataset]:
    user = [[{"role": "user", "content": p}] for p in PROMPTS]
    assistant = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    return {
        "text": Dataset.from_dict({"text": [f"{p} {a}" for p, a in zip(PROMPTS, ANSWERS)]}),
        "prompt_completion": Dataset.from_dict({"prompt": PROMPTS, "completion": [f" {a}" for a in ANSWERS]}),
        "conversational_prompt_completion": Dataset.from_dict({"prompt": user, "completion": assistant}),
        "messages": Dataset.from_dict({"messages": [u + a for u, a in zip(user, assistant)]}),
    }


def trainer_labels(dataset: Dataset, tokenizer, tmp_path, **config) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each row as SFTTrainer prepares and collates it, padding removed."""
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=64,
                     per_device_train_batch_size=1, disable_tqdm=True, **config)
    trainer = SFTTrainer(model=make_lora_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)
    rows = []
    for example in trainer.train_dataset:
        batch = trainer.data_collator([example])
        keep = batch["attention_mask"][0].bool() if "attention_mask" in batch else torch.ones_like(batch["input_ids"][0]).bool()
        rows.append((batch["input_ids"][0][keep].tolist(), batch["labels"][0][keep].tolist()))
    return rows


@pytest.mark.parametrize(
    "fmt,assistant_only_loss", [(fmt, False) for fmt in datasets_by_format()] + [("messages", True)]
)
def test_pool_tokenisation_equals_sft_trainer(tokenizer, tmp_path, fmt, assistant_only_loss):
    dataset = datasets_by_format()[fmt]
    expected = trainer_labels(dataset, tokenizer, tmp_path, assistant_only_loss=assistant_only_loss)
    ours = prepare_sft_dataset(dataset, tokenizer, max_length=64, assistant_only_loss=assistant_only_loss)
    assert len(ours) == len(expected) == len(dataset)
    for row, (input_ids, labels) in zip(ours, expected):
        assert row["input_ids"] == input_ids
        # The collator masks with -100; the first label is never predicted, so only the loss positions matter.
        assert [i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX] == [
            i for i, t in enumerate(labels) if t != IGNORE_INDEX
        ], (fmt, row["labels"], labels)


def test_an_in_memory_pool_is_tokenised_into_a_memory_mapped_file_rewritten_every_time(tokenizer, tmp_path):
    """A large pool's tokens must not stay in RAM: written to the scratch file and read back from it, equal to the
    in-memory tokens; a second call with other settings rewrites the file instead of reading the stale one."""
    pool = datasets_by_format()["prompt_completion"]
    path = str(tmp_path / "tokens" / "pool-0.arrow")
    in_memory = prepare_sft_dataset(pool, tokenizer, 64)
    on_file = prepare_sft_dataset(pool, tokenizer, 64, cache_file_name=path)
    assert [f["filename"] for f in on_file.cache_files] == [path] and not in_memory.cache_files
    assert on_file.to_list() == in_memory.to_list()
    truncated = prepare_sft_dataset(pool, tokenizer, 3, cache_file_name=path)
    assert truncated.to_list() == prepare_sft_dataset(pool, tokenizer, 3).to_list() != in_memory.to_list()
