"""What grows with the pool: checks of a large pool hold Python objects for one batch of rows at a time, not the
whole pool, and still name the right row."""

import tracemalloc
from collections import Counter

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


@pytest.mark.parametrize("values", [["a", "b", None, "a", "c", "b"], [3, 1, 3, 2, 2, 1], [[1], [2], [1], [], [2], [1]]])
def test_report_sources_match_the_row_by_row_labels_through_an_indices_mapping(values):
    from collections import Counter

    from rose_hf.report.context import SourceColumn

    pool = Dataset.from_dict({"source": values, "row": list(range(len(values)))}).shuffle(seed=1).select([5, 0, 3, 2])
    labels = [str(value) for value in pool["source"]]  # what the report listed before
    sources = SourceColumn.of(pool, "source")
    assert [sources[i] for i in range(len(pool))] == labels and len(sources) == len(pool)
    assert sources.counts() == Counter(labels)
    assert sources.counts(np.array([0, 2])) == Counter([labels[0], labels[2]])
    assert sources.names_of(np.array([3, 1])) == [labels[3], labels[1]]


def test_report_sources_of_a_large_pool_are_read_in_arrow_not_row_by_row():
    import time

    from rose_hf.report.context import SourceColumn

    pool = Dataset(pa.table({"source": pc.cast(pa.array(np.arange(300_000) % 7), pa.string())}))
    start = time.process_time()
    sources = SourceColumn.of(pool, "source")
    seconds = time.process_time() - start
    assert sources.counts() == Counter({str(k): 300_000 // 7 + (k < 300_000 % 7) for k in range(7)})
    assert seconds < 2.0  # row by row through `datasets` this took about 25 s


def test_an_in_memory_pool_s_tokens_are_memory_mapped_from_the_selection_dir(tokenizer, tmp_path):
    """The tokenized pool is several times the pool's text: for a pool held in memory it is written under
    `<selection_dir>/tokens/` and mapped from there, and the truncation counts read from it in one batch agree with
    a row-by-row count."""
    from helpers import make_lora_model, pool_dataset, tiny_pairs

    from rose_hf import RoseConfig
    from rose_hf.pipeline import SelectionPipeline

    pool = pool_dataset(12)[0]
    assert not pool.cache_files
    config = RoseConfig(selection_dir=str(tmp_path / "rose"), selection_size=2, feature_max_length=6)
    pipeline = SelectionPipeline(pool, tiny_pairs(), config)
    pipeline.prepare(make_lora_model(tokenizer), tokenizer)
    files = [f["filename"] for f in pipeline.pool_tokens.cache_files]
    assert files == [str(tmp_path / "rose" / "tokens" / "pool-0.arrow")]
    assert pipeline.stats["pool_truncated"] == sum(bool(t) for t in pipeline.pool_tokens["rose_truncated"]) > 0
