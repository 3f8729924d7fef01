"""Batched per-example gradients on real pretrained architectures against brute force, on two of them:

- SmolLM2-135M-Instruct, a Llama: 30 layers, grouped-query attention with 3 key-value heads for 9 query heads, tied
  embeddings, a 49k vocabulary;
- Gemma-3-270M: 18 layers alternating five 512-token sliding-window layers with one global one (each with its own
  RoPE base), 4 query heads sharing ONE key-value head of dimension 256, query-key RMS norms, embeddings scaled by
  sqrt(hidden), tied embeddings and a 262k vocabulary, so log-probs take the chunked path of
  `rose_hf.features.gradients.token_log_probs` (the brute force below asks the model for its full logits).

The tiny models of `test_gradients.py` and `test_dpo.py` have none of this at this scale nor real weights; these
checks repeat theirs on the real shapes: SFT per-example gradients == a loop of single-example backward passes, DPO
pair gradients == autograd of `DPOTrainer.compute_loss` pair by pair, both with padding and mixed lengths.

Tolerances: in float32, many layers of different padding (and, for DPO, TRL's own log-softmax) round differently. On
SmolLM2 the SFT rows without padding agree bit for bit and the padded one to 4e-6 in relative norm; in float64 all
agree to 1e-15, so the float32 gap is rounding. A DPO pair's gradient is the difference of its chosen and rejected
gradients, which share the prompt and most of the softmax normaliser and largely cancel, so rounding shows at about
1e-5 there. Hence a 1e-4 bound on each row's relative error, and element-wise `rtol=1e-4` with an `atol` at 1e-4 of
the row's largest entry. A wrong mask, pairing or length normalisation errs by order 1.
"""

from types import SimpleNamespace

import pytest
import torch
from helpers import add_lora, pool_dataset, tiny_pairs
from test_dpo import batched_and_brute_force, make_trainer
from test_gradients import batched, brute_force
from trl.trainer.dpo_trainer import DataCollatorForPreference

from rose_hf.data import prepare_sft_dataset
from rose_hf.features.gradients import CHUNKED_HEAD_MODEL_TYPES

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# What each model must look like, so that a changed conversion fails here rather than testing something else.
SHAPES = {
    "smollm2": SimpleNamespace(layers=30, heads=9, kv_heads=3, vocab=49152, dpo_atol=1e-4),
    # One DPO entry in 368,640 (the last layer's o_proj B) cancels to 1e-3 of its row's largest between chosen and
    # rejected, where TRL's float32 log-softmax and ours round apart; every row stays within 1e-4 in norm.
    "gemma3": SimpleNamespace(layers=18, heads=4, kv_heads=1, vocab=262144, dpo_atol=1e-3),
}


@pytest.fixture(params=sorted(SHAPES))
def real_model(request):
    """`(name, fixture)` of each real model (skipped where its package is absent)."""
    return request.param, request.getfixturevalue(request.param)


def real_lora(real_model, seed=0):
    """The real model in float32 with a rank-4 LoRA on q, k, v, o (B non-zero, so A has gradients), and its
    tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, model = real_model
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    base = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    config, shape = base.config, SHAPES[name]
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (
        shape.layers, shape.heads, shape.kv_heads, shape.vocab)  # fmt: skip
    assert config.tie_word_embeddings and base.get_output_embeddings().weight is base.get_input_embeddings().weight
    if name == "gemma3":
        assert config.model_type in CHUNKED_HEAD_MODEL_TYPES and "full_attention" in config.layer_types
    # B at 0.1 * N(0, 1) moves these real weights a lot; the scale only has to make A's gradients non-zero here. PEFT
    # draws A from the global generator: seeded, so that a test's result does not depend on the tests run before it.
    torch.manual_seed(seed)
    return add_lora(base, TARGETS, seed=seed, r=4), tokenizer


def assert_rows_close(ours: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float | None = None) -> None:
    """Each row within `rtol` of its brute-force row, in norm and element-wise (with an `atol` scaled to the row's
    largest entry: `rtol` unless given)."""
    assert ours.shape == expected.shape
    errors = (ours.double() - expected.double()).norm(dim=-1) / expected.double().norm(dim=-1)
    assert (errors < rtol).all(), f"relative errors per row {errors.tolist()} (bound {rtol})"
    for got, want in zip(ours.reshape(-1, ours.shape[-1]), expected.reshape(-1, expected.shape[-1])):
        torch.testing.assert_close(got, want, rtol=rtol, atol=(atol or rtol) * want.abs().max().item())


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float64, 1e-7)], ids=["float32", "float64"])
def test_sft_per_example_gradients_equal_single_example_loop(real_model, dtype, rtol):
    pool, _ = pool_dataset(4)
    model, tokenizer = real_lora(real_model)
    model.to(dtype)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, f"the batch must mix lengths, so padding is exercised: {lengths}"
    grads, num_tokens, names = batched(model, rows, tokenizer)
    assert len(names) == 4 * 2 * SHAPES[real_model[0]].layers  # A and B of q, k, v, o in every layer
    model.eval()
    expected = brute_force(model, rows, names)
    assert (num_tokens > 0).all()
    assert_rows_close(grads, expected.to(grads.dtype), rtol)
    assert not torch.allclose(grads[0], grads[1])  # examples differ: not trivially equal


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])  # ipo: the per-token length normalisation too
def test_dpo_pair_gradients_equal_autograd_of_dpo_trainer_loss(real_model, tmp_path, loss_type):
    model, tokenizer = real_lora(real_model, seed=3)
    dataset = tiny_pairs()
    trainer = make_trainer(model, tokenizer, dataset, tmp_path, loss_type, beta=0.5)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [{k: trainer.train_dataset[i][k] for k in keys} for i in range(len(dataset))]
    assert len({len(r["chosen_ids"]) for r in rows} | {len(r["rejected_ids"]) for r in rows}) > 1
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)

    ours, brute = batched_and_brute_force(model, trainer, collator, rows, loss_type)
    for i, expected in enumerate(brute):
        assert expected.abs().sum() > 0
        assert_rows_close(ours[i], expected, rtol=1e-4, atol=SHAPES[real_model[0]].dpo_atol)
