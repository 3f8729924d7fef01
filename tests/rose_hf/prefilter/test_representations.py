"""The prefilter's representations and cosines equal a loop of single, unpadded forward passes of the base model."""

import numpy as np
import pytest
import torch
from helpers import make_lora_model, pool_dataset, preference_dataset

from rose_fixtures.tiny import build_model
from rose_hf import RoseConfig, prefilter_pool
from rose_hf.data import preference_to_sft, prepare_preference_dataset, prepare_sft_dataset


def single_representation(model, ids):
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    pooled = hidden.float().mean(dim=0)
    return (pooled / pooled.norm()).numpy()


def brute_force_cosines(model, tokenizer, pool, pairs, max_length=64):
    model.eval()
    rows = prepare_sft_dataset(pool, tokenizer, max_length)["input_ids"]
    queries = preference_to_sft(prepare_preference_dataset(pairs, tokenizer, max_length), max_length)["input_ids"]
    pool_vectors = np.stack([single_representation(model, ids) for ids in rows])
    query_vectors = np.stack([single_representation(model, ids) for ids in queries])
    return pool_vectors @ query_vectors.T


def config(tmp_path, **kwargs):
    return RoseConfig(selection_dir=str(tmp_path), prefilter_fraction=0.5, chunk_size=5, feature_batch_size=4,
                      feature_max_length=64, **kwargs)  # fmt: skip


@pytest.mark.parametrize("adapter", [True, False], ids=["peft-with-trained-adapter", "plain-base-model"])
def test_cosines_equal_single_unpadded_forwards_of_the_base_model(tmp_path, tokenizer, adapter):
    pool, _ = pool_dataset(13)
    pairs = preference_dataset(4)
    base = build_model("llama", tokenizer, seed=0)
    expected = brute_force_cosines(base, tokenizer, pool, pairs)
    # make_lora_model: the same base (seed 0) under an adapter whose B matrices are non-zero, as after training.
    model = make_lora_model(tokenizer) if adapter else base
    if adapter:
        model.train()
        with_adapter = brute_force_cosines(model, tokenizer, pool, pairs)
        assert np.abs(with_adapter - expected).max() > 1e-3  # the adapter changes them: disabling it matters
        model.train()
    result = prefilter_pool(model, tokenizer, pool, pairs, config(tmp_path))
    np.testing.assert_allclose(np.asarray(result.cosines), expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(result.scores, expected.max(axis=1), atol=2e-5, rtol=0)
    assert result.kept.tolist() == sorted(result.kept.tolist()) and len(result.kept) == 7  # ceil(0.5 * 13)
    if adapter:
        assert model.training  # the model's mode is restored
        assert all(m.training for m in model.modules() if "dropout" in type(m).__name__.lower())
