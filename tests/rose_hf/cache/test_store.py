"""The feature cache: atomic records, resumable chunks, refusing to mix runs, and writes that fail cleanly."""

import errno
import json
import os

import numpy as np
import pytest
from helpers import make_lora_model, pool_dataset, preference_dataset

from rose_hf.cache.io import atomic_write_json, read_json
from rose_hf.cache.record import StageRecord
from rose_hf.cache.store import (
    STATUS_EMPTY,
    STATUS_OK,
    FeatureStore,
    check_writable,
)
from rose_hf.errors import CacheMismatchError, CacheWriteError
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.pipeline import SelectionPipeline
from rose_hf.rose_config import RoseConfig

RUN = {"base_model": "tiny", "projection_dim": 64, "validation_objective": "dpo", "pool_size": 10}


def _rows(start, stop, dim=4):
    return np.arange(start * dim, stop * dim, dtype=np.float32).reshape(stop - start, dim)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- json ---------------------------------------------------------------------------------------------------------
def test_atomic_json_roundtrip_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "a.json")
    atomic_write_json(path, {"b": [1, 2], "a": np.float32(0.5)})  # numpy scalars fall back to str
    atomic_write_json(path, {"b": [3]})
    assert read_json(path) == {"b": [3]}
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_json_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "a.json")
    atomic_write_json(path, {"version": 1})
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(CacheWriteError, match="Disk full"):
        atomic_write_json(path, {"version": 2})
    assert read_json(path) == {"version": 1}


# --- chunks -------------------------------------------------------------------------------------------------------
def test_chunk_records_and_reading_back(tmp_path):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(7)
    checkpoint.create(num_rows=10, dim=4, dtype="float32", chunk_size=4, learning_rates=[1e-3, 5e-4])
    assert checkpoint.num_chunks() == 3
    assert [checkpoint.chunk_rows(c) for c in range(3)] == [range(0, 4), range(4, 8), range(8, 10)]
    assert checkpoint.pending_chunks() == [0, 1, 2]
    with pytest.raises(ValueError, match="covers 2 rows"):
        checkpoint.write_chunk(2, _rows(0, 3), np.ones(3, np.int8))
    checkpoint.write_chunk(2, _rows(8, 10), np.array([STATUS_OK, STATUS_EMPTY], np.int8))
    checkpoint.write_chunk(0, _rows(0, 4), np.full(4, STATUS_OK, np.int8))
    assert checkpoint.pending_chunks() == [1]
    assert read_json(os.path.join(checkpoint.path, "chunks", "000002.done")) == {"rows": [8, 10]}
    with pytest.raises(RuntimeError, match="chunk 1"):
        checkpoint.finalize({})
    assert not checkpoint.is_complete()

    checkpoint.write_chunk(1, _rows(4, 8), np.full(4, STATUS_OK, np.int8))
    checkpoint.write_validation({"dpo": np.ones((3, 4), np.float64)})
    checkpoint.finalize({})
    assert checkpoint.is_complete()
    np.testing.assert_array_equal(checkpoint.pool_features(), _rows(0, 10))
    assert checkpoint.pool_status().tolist() == [STATUS_OK] * 9 + [STATUS_EMPTY]
    assert checkpoint.validation_features("dpo").dtype == np.float32
    meta = checkpoint.meta
    assert (meta["step"], meta["num_ok"], meta["num_empty"], meta["num_rows"]) == (7, 9, 1, 10)
    assert meta["learning_rates"] == [1e-3, 5e-4]
    assert checkpoint.nbytes() > 10 * 4 * 4


def test_completed_checkpoints_only_lists_finished_ones_in_step_order(tmp_path):
    store = FeatureStore(str(tmp_path))
    assert store.completed_checkpoints() == []
    for step in (20, 3, 100):
        checkpoint = store.checkpoint(step)
        checkpoint.create(2, 4, "float16", 2)
        checkpoint.write_chunk(0, _rows(0, 2), np.ones(2, np.int8))
        checkpoint.write_validation({"dpo": np.ones((1, 4))})
        if step != 20:
            checkpoint.finalize({})
    assert [c.step for c in store.completed_checkpoints()] == [3, 100]


def test_same_layout_keeps_chunks_and_a_new_layout_invalidates_them(tmp_path):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(1)
    checkpoint.create(10, 4, "float32", 4)
    checkpoint.write_chunk(0, _rows(0, 4), np.ones(4, np.int8))
    checkpoint.create(10, 4, "float32", 4)  # a resume: same layout
    assert checkpoint.pending_chunks() == [1, 2]
    np.testing.assert_array_equal(checkpoint.pool_features()[:4], _rows(0, 4))
    checkpoint.create(10, 4, "float32", 5)  # other chunk boundaries: the old records would lie
    assert checkpoint.pending_chunks() == [0, 1]
    assert not np.any(checkpoint.pool_features())
    checkpoint.create(10, 8, "float16", 5)
    assert checkpoint.pool_features().shape == (10, 8) and checkpoint.pool_features().dtype == np.float16


def test_int8_storage_keeps_row_scales(tmp_path):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(1)
    checkpoint.create(3, 4, "int8", 3)
    checkpoint.write_chunk(0, np.ones((3, 4), np.int8), np.ones(3, np.int8), np.array([0.5, 1, 2], np.float32))
    assert checkpoint.pool_scales().tolist() == [0.5, 1, 2]


# --- run arguments ------------------------------------------------------------------------------------------------
def test_stage_record_names_every_differing_field(tmp_path):
    record = StageRecord(str(tmp_path / "stage.json"), "The stage", ignore={"info"})
    assert record.differing(RUN) is None and record.check(RUN, overwrite=False, fix="-") == []
    record.write({**RUN, "info": 1})
    assert record.differing({**RUN, "info": 2}) == []
    assert record.differing({**RUN, "projection_dim": 128}) == ["projection_dim"]
    assert record.differing({**RUN, "new": 1, "pool_size": 11}) == ["new", "pool_size"]
    assert record.differing({k: v for k, v in RUN.items() if k != "pool_size"}) == ["pool_size"]
    assert record.differing({**RUN, "pool_size": 11}, fields=["projection_dim"]) == []
    with pytest.raises(CacheMismatchError, match=r"The stage was written for other inputs \(pool_size: recorded 10, "
                       r"now 11\)\. Fix: rename it") as info:
        record.check({**RUN, "pool_size": 11}, overwrite=False, fix="rename it")
    assert info.value.fields == ["pool_size"] and isinstance(info.value, ValueError)
    assert record.check({**RUN, "pool_size": 11}, overwrite=True, fix="-") == ["pool_size"]
    assert read_json(record.path)["pool_size"] == RUN["pool_size"], "check never writes"


def test_stage_record_in_a_section_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "selection.json"
    path.write_text('{"num_selected": 3, "args": {"a": 1}}')
    record = StageRecord(str(path), "The selection", section="args")
    assert record.differing({"a": 1}) == [] and record.differing({"a": 2}) == ["a"]
    record.write({"a": 2})
    assert read_json(str(path)) == {"num_selected": 3, "args": {"a": 2}}


def test_a_cache_from_before_the_default_first_stage_is_refused_with_the_setting_that_reuses_it(tmp_path):
    """Caches written without the first stage record no `prefilter_fraction`; today's default (0.2) differs, and the
    refusal says how to reuse them as they are."""
    from rose_hf import RoseConfig
    from rose_hf.cache.keys import data_key

    fingerprints = {"pool_fingerprint": "p", "validation_fingerprint": "v"}
    FeatureStore(str(tmp_path), data_key(fingerprints, 40, RoseConfig(prefilter_fraction=None))).prepare()
    with pytest.raises(CacheMismatchError, match=r"prefilter_fraction: recorded None, now 0\.2.*`prefilter_fraction=None`"):
        FeatureStore(str(tmp_path), data_key(fingerprints, 40, RoseConfig())).prepare()
    FeatureStore(str(tmp_path), data_key(fingerprints, 40, RoseConfig(prefilter_fraction=None))).prepare()  # reused
    other = tmp_path / "other"
    FeatureStore(str(other), data_key(fingerprints, 40, RoseConfig(prefilter_fraction=0.4))).prepare()
    with pytest.raises(CacheMismatchError) as info:  # a recorded first stage of another share: no such note
        FeatureStore(str(other), data_key(fingerprints, 40, RoseConfig())).prepare()
    assert "to reuse it as it is" not in str(info.value)


def test_refuses_to_mix_runs_and_names_the_field(tmp_path):
    root = str(tmp_path)
    FeatureStore(root, RUN).prepare()
    FeatureStore(root, dict(RUN)).prepare()  # the same run again: fine
    with pytest.raises(ValueError, match=r"validation_objective: recorded 'dpo', now 'sft'") as info:
        FeatureStore(root, {**RUN, "validation_objective": "sft"}).prepare()
    assert "overwrite=True" in str(info.value) and "projection_dim" not in str(info.value)
    assert read_json(os.path.join(root, "run.json")) == RUN


def test_overwrite_clears_every_artifact_of_the_old_run(tmp_path):
    root = str(tmp_path)
    store = FeatureStore(root, RUN)
    store.prepare()
    checkpoint = store.checkpoint(2)
    checkpoint.create(4, 4, "float16", 2)
    checkpoint.write_chunk(0, _rows(0, 2), np.ones(2, np.int8))
    artifacts = ["scores.npy", "valid.npy", "selection.json", "selected_indices.json", "selected.jsonl"]
    for name in artifacts:
        (tmp_path / name).write_text("old")
    os.makedirs(tmp_path / "selected")
    (tmp_path / "notes.txt").write_text("the user's own file")

    new = {**RUN, "projection_dim": 128}
    FeatureStore(root, new, overwrite=True).prepare()
    assert sorted(os.listdir(root)) == ["features", "notes.txt", "run.json"]
    assert os.listdir(os.path.join(root, "features")) == []
    assert read_json(os.path.join(root, "run.json")) == new


def test_overwrite_keeps_the_cache_of_the_same_run(tmp_path):
    root = str(tmp_path)
    store = FeatureStore(root, RUN)
    store.prepare()
    store.checkpoint(2).create(4, 4, "float16", 2)
    store.checkpoint(2).write_chunk(0, _rows(0, 2), np.ones(2, np.int8))
    FeatureStore(root, dict(RUN), overwrite=True).prepare()
    assert FeatureStore(root).checkpoint(2).pending_chunks() == [1]


# --- failing writes -----------------------------------------------------------------------------------------------
def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheWriteError, match="not writable"):
        check_writable(str(blocker / "rose"))
    with pytest.raises(CacheWriteError, match="a_file/rose"):
        FeatureStore(str(blocker / "rose"), RUN).prepare()


def test_read_only_error_says_what_to_do(tmp_path, monkeypatch):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(1)
    checkpoint.create(4, 4, "float32", 2)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(np, "save", read_only)
    with pytest.raises(CacheWriteError, match="writable `output_dir`"):
        checkpoint.write_validation({"dpo": np.ones((2, 4))})


def test_disk_full_on_allocation(tmp_path, monkeypatch):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(1)
    monkeypatch.setattr(np.lib.format, "open_memmap", _enospc)
    with pytest.raises(CacheWriteError, match="Disk full"):
        checkpoint.create(4, 4, "float32", 2)
    assert not os.path.exists(os.path.join(checkpoint.path, "layout.json"))


def test_disk_full_keeps_finished_chunks(tmp_path, monkeypatch):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(1)
    checkpoint.create(6, 4, "float32", 2)
    checkpoint.write_chunk(0, _rows(0, 2), np.ones(2, np.int8))
    real_load = np.load

    def load(path, *args, mmap_mode=None, **kwargs):
        if mmap_mode == "r+":
            _enospc()
        return real_load(path, *args, mmap_mode=mmap_mode, **kwargs)

    monkeypatch.setattr(np, "load", load)
    with pytest.raises(CacheWriteError, match="Disk full") as info:
        checkpoint.write_chunk(1, _rows(2, 4), np.ones(2, np.int8))
    assert info.value.__cause__.errno == errno.ENOSPC
    monkeypatch.setattr(np, "save", _enospc)
    with pytest.raises(CacheWriteError, match="Disk full"):
        checkpoint.write_validation({"dpo": np.ones((2, 4))})
    monkeypatch.undo()
    assert checkpoint.pending_chunks() == [1, 2]
    assert not checkpoint.has_validation("dpo")
    np.testing.assert_array_equal(checkpoint.pool_features()[:2], _rows(0, 2))


# --- resume through the real feature pass -------------------------------------------------------------------------
class Killed(Exception):
    pass


def _pipeline(tokenizer, output_dir):
    pool, _ = pool_dataset(20)
    config = RoseConfig(selection_dir=str(output_dir), prefilter_fraction=None, projection_dim=64, chunk_size=4, feature_batch_size=3,
                        report=False, feature_max_length=64, scoring="paper")
    pipeline = SelectionPipeline(pool, preference_dataset(3), config)
    model = make_lora_model(tokenizer)
    pipeline.prepare(model, tokenizer)
    return pipeline, model


def _featurize(pipeline, model, on_chunk=None):
    return pipeline.featurize(model, TrainingCheckpoint(3, [1e-3], None), on_chunk=on_chunk)


def test_resume_skips_done_chunks_and_disk_full_resumes(tokenizer, tmp_path, monkeypatch):
    reference, model = _pipeline(tokenizer, tmp_path / "reference")
    _featurize(reference, model)
    expected = reference.store.checkpoint(3).pool_features()
    assert expected.shape == (20, 64) and np.any(expected)

    pipeline, model = _pipeline(tokenizer, tmp_path / "resumed")
    checkpoint = pipeline.store.checkpoint(3)

    def kill_after_two(chunk):
        if chunk == 1:
            raise Killed

    with pytest.raises(Killed):
        _featurize(pipeline, model, kill_after_two)
    assert checkpoint.pending_chunks() == [2, 3, 4] and not checkpoint.is_complete()
    done_mtime = os.stat(os.path.join(checkpoint.path, "chunks", "000000.done")).st_mtime_ns

    def disk_fills_after_chunk_2(chunk):
        monkeypatch.setattr(np, "load", _enospc)

    with pytest.raises(CacheWriteError, match="Disk full"):
        _featurize(pipeline, model, disk_fills_after_chunk_2)
    monkeypatch.undo()
    assert checkpoint.pending_chunks() == [3, 4] and not checkpoint.is_complete()

    written = []
    meta = _featurize(pipeline, model, written.append)
    assert written == [3, 4], "finished chunks must not be recomputed"
    assert os.stat(os.path.join(checkpoint.path, "chunks", "000000.done")).st_mtime_ns == done_mtime
    assert checkpoint.is_complete() and meta["num_ok"] == 20
    np.testing.assert_array_equal(checkpoint.pool_features(), expected)
    np.testing.assert_array_equal(checkpoint.validation_features("dpo"), reference.store.checkpoint(3).validation_features("dpo"))

    again = []
    _featurize(pipeline, model, again.append)  # a finished checkpoint is left as it is
    assert again == []
    assert json.loads(open(os.path.join(checkpoint.path, "layout.json")).read())["learning_rates"] == [1e-3]


# --- store_pool_features: a store of similarities is never read as one of features ---------------------------------
def test_switching_store_pool_features_is_refused_and_old_records_read_as_stored(tokenizer, tmp_path):
    pool, task = pool_dataset(10)
    model = make_lora_model(tokenizer)

    def prepare(stored, pairs=None, overwrite=False):
        pairs = task.validation.select(range(4)) if pairs is None else pairs
        config = RoseConfig(selection_dir=str(tmp_path), prefilter_fraction=None, projection_dim=64, store_pool_features=stored,
                            overwrite=overwrite, report=False)  # fmt: skip
        pipeline = SelectionPipeline(pool, pairs, config)
        pipeline.prepare(model, tokenizer)
        return pipeline

    prepare(True)
    run = read_json(str(tmp_path / "run.json"))
    assert run["store_pool_features"] is True
    with pytest.raises(CacheMismatchError, match="store_pool_features: recorded True, now False") as info:
        prepare(False)
    assert info.value.fields == ["store_pool_features"]
    # A cache written before the setting existed has no such field: it held pool features, and stays valid.
    del run["store_pool_features"]
    atomic_write_json(str(tmp_path / "run.json"), run)
    prepare(True)
    with pytest.raises(CacheMismatchError, match="store_pool_features: recorded True, now False"):
        prepare(False)

    streamed = prepare(False, overwrite=True)
    streamed.featurize(model, TrainingCheckpoint(3, [1e-3], None))
    checkpoint = streamed.store.checkpoint(3)
    assert not checkpoint.stores_pool_features
    with pytest.raises(FileNotFoundError, match="store_pool_features=False"):
        checkpoint.pool_features()
    # New pairs: refused at the start of a run and when rescoring, naming the setting and the fix.
    other = task.validation.select(range(4, 8))
    with pytest.raises(CacheMismatchError, match="validation_fingerprint.*store_pool_features=False.*computed again"):
        prepare(False, pairs=other)
    rescore = SelectionPipeline(pool, other, streamed.config)
    with pytest.raises(CacheMismatchError, match="validation_fingerprint.*store_pool_features=False"):
        rescore.select()
    from rose_hf.scoring.selection import score_store

    with pytest.raises(ValueError, match="store_pool_features=False.*4 validation pairs.*cannot score 5 other"):
        score_store(streamed.store, ["all"] * 5, streamed.config)
    assert len(score_store(streamed.store, streamed.subtasks, streamed.config).scores) == 10


def test_checkpoint_of_another_mode_is_recomputed_not_read(tmp_path):
    checkpoint = FeatureStore(str(tmp_path)).checkpoint(2)
    checkpoint.create(num_rows=6, dim=4, dtype="float16", chunk_size=4)
    checkpoint.write_chunk(0, _rows(0, 4), np.ones(4, np.int8))
    checkpoint.write_validation({"dpo": np.ones((2, 4)), "sft": np.ones((2, 4))})
    checkpoint.create(num_rows=6, dim=4, dtype="float16", chunk_size=4, num_pairs=2)  # the other mode
    assert checkpoint.pending_chunks() == [0, 1] and not checkpoint.has_validation("dpo")
    assert not os.path.exists(os.path.join(checkpoint.path, "pool.npy"))
    similarities = {"dpo": np.full((4, 2), 0.5), "sft": np.full((4, 2), -0.5)}
    checkpoint.write_similarity_chunk(0, similarities, np.ones(4, np.int8))
    checkpoint.write_similarity_chunk(1, {k: v[:2] for k, v in similarities.items()}, np.array([1, 2], np.int8))
    assert checkpoint.pending_chunks() == []
    np.testing.assert_array_equal(checkpoint.pool_similarities("sft"), np.full((6, 2), -0.5, np.float32))
    assert checkpoint.pool_status().tolist() == [1, 1, 1, 1, 1, 2]
