"""The prefilter's cache: reused when its inputs are the same, refused (or with overwrite computed again) when one
changes, resumed after a kill to the same bits; `prefilter_fraction` alone reuses it."""

import numpy as np
import pytest
from helpers import make_lora_model, pool_dataset, preference_dataset

from rose_hf import CacheMismatchError, RoseConfig, prefilter_pool
from rose_hf.prefilter.stage import PrefilterCache


class Killed(RuntimeError):
    pass


def config(root, **kwargs):
    defaults = dict(prefilter_fraction=0.3, chunk_size=4, feature_batch_size=3, feature_max_length=64)
    return RoseConfig(selection_dir=str(root), **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def data():
    pool, _ = pool_dataset(14)
    return pool, preference_dataset(4)


def test_reused_when_identical_and_for_another_fraction(tmp_path, tokenizer, data):
    pool, pairs = data
    model = make_lora_model(tokenizer)
    first = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path))
    assert not first.info["cached"] and first.info["num_kept"] == 5  # ceil(0.3 * 14)
    chunks = []
    again = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path), on_chunk=chunks.append)
    assert again.info["cached"] and chunks == []  # no forward pass
    np.testing.assert_array_equal(again.cosines, first.cosines)
    np.testing.assert_array_equal(again.kept, first.kept)
    wider = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path, prefilter_fraction=0.6))
    assert wider.info["cached"] and len(wider.kept) == 9
    np.testing.assert_array_equal(wider.kept, first.kept_at(0.6))
    assert set(first.kept) <= set(wider.kept)  # round robin: a larger budget extends each pair's turn


def test_refused_when_an_input_changes_and_recomputed_with_overwrite(tmp_path, tokenizer, data):
    pool, pairs = data
    model = make_lora_model(tokenizer)
    prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path))
    other_pairs = preference_dataset(3)
    with pytest.raises(CacheMismatchError, match="prefilter cache.*validation_fingerprint.*overwrite=True"):
        prefilter_pool(model, tokenizer, pool, other_pairs, config(tmp_path))
    with pytest.raises(CacheMismatchError, match="base_model"):
        prefilter_pool(make_lora_model(tokenizer, seed=1), tokenizer, pool, pairs, config(tmp_path))
    with pytest.raises(CacheMismatchError, match="max_length"):
        prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path, feature_max_length=32))
    redone = prefilter_pool(model, tokenizer, pool, other_pairs, config(tmp_path, overwrite=True))
    fresh = prefilter_pool(model, tokenizer, pool, other_pairs, config(tmp_path / "fresh"))
    assert not redone.info["cached"] and redone.cosines.shape == (14, 3)
    np.testing.assert_array_equal(redone.cosines, fresh.cosines)


def test_resumes_after_a_kill_to_the_same_bits(tmp_path, tokenizer, data):
    pool, pairs = data
    model = make_lora_model(tokenizer)
    reference = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path / "reference"))

    def kill_after_second(chunk):
        if chunk == 1:
            raise Killed

    with pytest.raises(Killed):
        prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path / "killed"), on_chunk=kill_after_second)
    cache = PrefilterCache(str(tmp_path / "killed"))
    assert not cache.is_complete() and cache.pending_chunks() == [2, 3]
    done = []
    resumed = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path / "killed"), on_chunk=done.append)
    assert done == [2, 3]  # only the pending chunks ran
    np.testing.assert_array_equal(resumed.cosines, reference.cosines)
    np.testing.assert_array_equal(resumed.kept, reference.kept)
    np.testing.assert_array_equal(resumed.scores, reference.scores)
