"""What grows with the pool: checks of a large pool hold Python objects for one batch of rows at a time, not the
whole pool, and still name the right row."""

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from datasets import Dataset

import rose_hf.data as data


def _arrow_pool(rows: int) -> Dataset:
    numbers = pc.cast(pa.array(np.arange(rows)), pa.string())
    prompt = pc.binary_join_element_wise(pa.scalar("Write the number "), numbers, pa.scalar(" in words:"), "")
    completion = pc.binary_join_element_wise(pa.scalar(" the number "), numbers, "")
    return Dataset(pa.table({"prompt": prompt, "completion": completion}))


def test_checking_a_pool_holds_one_batch_of_rows_in_python(monkeypatch):
    pool = _arrow_pool(200_000)
    tracemalloc.start()
    data.check_sft_dataset(pool)
    _, batched = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    monkeypatch.setattr(data, "CHECK_BATCH_ROWS", len(pool))  # the whole pool at once, as before
    data.check_sft_dataset(pool)
    _, whole = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert whole > 4 * batched, (whole, batched)


def test_batched_checks_read_the_format_from_a_later_batch_and_count_blank_rows_over_all_batches(monkeypatch):
    monkeypatch.setattr(data, "CHECK_BATCH_ROWS", 4)
    rows = [{"prompt": "p", "completion": ""} for _ in range(6)] + [{"prompt": "p", "completion": " a"}] * 4
    data.check_sft_dataset(Dataset.from_list(rows))  # blank rows are allowed, the format comes from row 6
    # a conversational column whose first two batches hold only empty conversations
    conversations = Dataset.from_dict({"prompt": ["p"] * 11,
                                       "completion": [[]] * 8 + [[{"role": "assistant", "content": "x"}]] * 3})
    data.check_sft_dataset(conversations)
    with pytest.raises(ValueError, match="Every row"):
        data.check_sft_dataset(Dataset.from_list(rows[:6]))
