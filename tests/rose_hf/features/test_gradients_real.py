"""Batched per-example gradients on a real pretrained architecture (SmolLM2-135M-Instruct: 30 layers, grouped-query
attention with 3 key-value heads for 9 query heads, tied embeddings, a 49k vocabulary) against brute force.

The tiny models of `test_gradients.py` and `test_dpo.py` have none of GQA's head sharing at this scale nor real
weights; these checks repeat theirs on the real shape: SFT per-example gradients == a loop of single-example backward
passes, DPO pair gradients == autograd of `DPOTrainer.compute_loss` pair by pair, both with padding and mixed lengths.

Tolerances: in float32, 30 layers of different padding (and, for DPO, TRL's own log-softmax) round differently. The
SFT rows without padding agree bit for bit and the padded one to 4e-6 in relative norm; in float64 all agree to 1e-15,
so the float32 gap is rounding. A DPO pair's gradient is the difference of its chosen and rejected gradients, which
share the prompt and most of the softmax normaliser and largely cancel, so rounding shows at about 1e-5 there. Hence a
1e-4 bound on each row's relative error, and element-wise `rtol=1e-4` with an `atol` at 1e-4 of the row's largest
entry. A wrong mask, pairing or length normalisation errs by order 1.
"""

import pytest
import torch
from helpers import add_lora, pool_dataset, tiny_pairs
from test_dpo import batched_and_brute_force, make_trainer
from test_gradients import batched, brute_force
from trl.trainer.dpo_trainer import DataCollatorForPreference

from rose_hf.data import prepare_sft_dataset

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def smollm2_lora(smollm2, seed=0):
    """The real SmolLM2 in float32 with a rank-4 LoRA on q, k, v, o (B non-zero, so A has gradients), and its
    tokenizer (pad = eos = <|im_end|>)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    base = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32)
    config = base.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.tie_word_embeddings and base.get_output_embeddings().weight is base.get_input_embeddings().weight
    # B at 0.1 * N(0, 1) moves these real weights a lot; the scale only has to make A's gradients non-zero here.
    return add_lora(base, TARGETS, seed=seed, r=4), tokenizer


def assert_rows_close(ours: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Each row within `rtol` of its brute-force row, in norm and element-wise (with an `atol` scaled to the row)."""
    assert ours.shape == expected.shape
    errors = (ours.double() - expected.double()).norm(dim=-1) / expected.double().norm(dim=-1)
    assert (errors < rtol).all(), f"relative errors per row {errors.tolist()} (bound {rtol})"
    for got, want in zip(ours.reshape(-1, ours.shape[-1]), expected.reshape(-1, expected.shape[-1])):
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float64, 1e-7)], ids=["float32", "float64"])
def test_sft_per_example_gradients_equal_single_example_loop(smollm2, dtype, rtol):
    pool, _ = pool_dataset(4)
    model, tokenizer = smollm2_lora(smollm2)
    model.to(dtype)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, f"the batch must mix lengths, so padding is exercised: {lengths}"
    grads, num_tokens, names = batched(model, rows, tokenizer)
    assert len(names) == 4 * 2 * 30  # A and B of q, k, v, o in every layer
    model.eval()
    expected = brute_force(model, rows, names)
    assert (num_tokens > 0).all()
    assert_rows_close(grads, expected.to(grads.dtype), rtol)
    assert not torch.allclose(grads[0], grads[1])  # examples differ: not trivially equal


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])  # ipo: the per-token length normalisation too
def test_dpo_pair_gradients_equal_autograd_of_dpo_trainer_loss(smollm2, tmp_path, loss_type):
    model, tokenizer = smollm2_lora(smollm2, seed=3)
    dataset = tiny_pairs()
    trainer = make_trainer(model, tokenizer, dataset, tmp_path, loss_type, beta=0.5)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [{k: trainer.train_dataset[i][k] for k in keys} for i in range(len(dataset))]
    assert len({len(r["chosen_ids"]) for r in rows} | {len(r["rejected_ids"]) for r in rows}) > 1
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)

    ours, brute = batched_and_brute_force(model, trainer, collator, rows, loss_type)
    for i, expected in enumerate(brute):
        assert expected.abs().sum() > 0
        assert_rows_close(ours[i], expected, rtol=1e-4)
