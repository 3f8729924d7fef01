"""Batched per-example LoRA gradients against a loop of single-example backward passes (brute force)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import add_lora, make_lora_model, pool_dataset

from rose_hf.data import SFTCollator, prepare_sft_dataset
from rose_hf.features.gradients import LoraGradientCollector, feature_mode, find_lora_parameters, sft_per_example_loss


def brute_force(model, rows, names):
    """Each example alone (no padding), its mean completion cross-entropy, plain autograd."""
    params = dict(model.named_parameters())
    out = []
    for row in rows:
        input_ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]])
        model.zero_grad()
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        out.append(torch.cat([params[n].grad.flatten() for n in names]))
    model.zero_grad()
    return torch.stack(out)


def batched(model, rows, tokenizer):
    collector = LoraGradientCollector(model)
    batch = SFTCollator(tokenizer.pad_token_id)(rows)
    with feature_mode(model), collector.capture():
        loss, num_tokens = sft_per_example_loss(model, batch)
        collector.backward(loss.sum())
        grads = collector.flat_gradients()
    return grads, num_tokens, collector.names


@pytest.mark.parametrize(
    "architecture,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("gpt2", "sdpa"), ("gpt2", "eager")]
)
def test_batched_equals_single_example_loop(tokenizer, architecture, attn):
    pool, _ = pool_dataset(8)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    assert len({len(r["input_ids"]) for r in rows}) > 1, "the batch must mix lengths, so padding is exercised"
    model = make_lora_model(tokenizer, architecture, attn_implementation=attn)
    grads, num_tokens, names = batched(model, rows, tokenizer)
    model.eval()
    expected = brute_force(model, rows, names)
    assert grads.shape == expected.shape
    assert (num_tokens > 0).all()
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-6)
    # Not trivially equal: examples differ from each other.
    assert not torch.allclose(grads[0], grads[1])


def test_truncated_completions_and_empty_example(tokenizer):
    pool, _ = pool_dataset(6)
    lengths = [len(tokenizer(p)["input_ids"]) for p in pool["prompt"]]
    max_length = sorted(lengths)[2] + 2  # some completions truncated, the longest prompts fully cut
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=max_length))
    assert any(r["rose_truncated"] for r in rows)
    empty = [i for i, r in enumerate(rows) if r["rose_num_tokens"] == 0]
    assert empty, "the setup must produce an example with no completion token left"
    model = make_lora_model(tokenizer)
    grads, num_tokens, names = batched(model, rows, tokenizer)
    assert num_tokens.tolist() == [r["rose_num_tokens"] for r in rows]
    model.eval()
    kept = [i for i in range(len(rows)) if i not in empty]
    expected = brute_force(model, [rows[i] for i in kept], names)
    torch.testing.assert_close(grads[kept], expected, rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(grads[empty]) == 0
    assert torch.isfinite(grads).all()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, use_reentrant):
    pool, _ = pool_dataset(5)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    model = make_lora_model(tokenizer)
    reference, _, _ = batched(model, rows, tokenizer)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.enable_input_require_grads()
    checkpointed, _, _ = batched(model, rows, tokenizer)
    torch.testing.assert_close(checkpointed, reference, rtol=1e-5, atol=1e-7)


def test_parameter_grads_and_modes_untouched(tokenizer):
    pool, _ = pool_dataset(3)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    model = make_lora_model(tokenizer)
    model.train()
    batched(model, rows, tokenizer)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_bf16_runs_and_is_close_to_fp32(tokenizer):
    pool, _ = pool_dataset(4)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    model = make_lora_model(tokenizer)
    fp32, _, _ = batched(model, rows, tokenizer)
    bf16, _, _ = batched(model.to(torch.bfloat16), rows, tokenizer)
    assert bf16.dtype == torch.float32
    cosine = F.cosine_similarity(fp32, bf16, dim=1)
    assert (cosine > 0.98).all(), cosine


def test_model_without_lora_is_refused(tokenizer):
    from rose_fixtures.tiny import build_model

    with pytest.raises(ValueError, match="no trainable LoRA adapter"):
        find_lora_parameters(build_model("llama", tokenizer))


def tiny_gemma3(tokenizer, softcap=None):
    """A tiny Gemma-3 (sliding and global layers, tied embeddings) with an optional final logit soft-cap, LoRA on."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=softcap, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attn_implementation="eager",
    )  # fmt: skip
    return add_lora(Gemma3ForCausalLM(config), ["q_proj", "v_proj"], seed=0)


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "gemma3_softcap"])
def test_chunked_log_probs_equal_the_plain_path(tokenizer, architecture):
    """Log-probs from hidden states in chunks (each recomputed in backward) == the model's own full logits: values
    and per-example gradients, SFT and DPO, with chunks of 3 tokens that cut across rows and an all-prompt row."""
    from rose_hf.features.gradients import CHUNKED_HEAD_MODEL_TYPES, sequence_log_probs

    if architecture == "llama":
        model = make_lora_model(tokenizer, "llama")
    else:
        model = tiny_gemma3(tokenizer, softcap=2.0 if architecture == "gemma3_softcap" else None)
    assert model.config.model_type in CHUNKED_HEAD_MODEL_TYPES
    pool, _ = pool_dataset(5)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    rows[1] = {**rows[1], "labels": [-100] * len(rows[1]["labels"])}  # no completion token: zero loss and gradient
    batch = SFTCollator(tokenizer.pad_token_id)(rows)
    batch["completion_mask"] = (batch["labels"] != -100).long()
    collector = LoraGradientCollector(model)
    three_tokens = 3 * len(tokenizer)
    results = {}
    for chunk_elements in (0, three_tokens):
        with feature_mode(model), collector.capture():
            loss, _ = sft_per_example_loss(model, batch, chunk_elements=chunk_elements)
            collector.backward(loss.sum())
            sft = collector.flat_gradients().clone()
        with feature_mode(model), collector.capture():
            logps = sequence_log_probs(model, batch, chunk_elements=chunk_elements)
            collector.backward((logps * torch.linspace(-1, 1, len(logps))).sum())
            seq = collector.flat_gradients().clone()
        results[chunk_elements] = (loss, sft, logps, seq)
    for plain, chunked in zip(results[0], results[three_tokens]):  # float32 logsumexps summed in another order
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    assert results[three_tokens][0][1] == 0 and results[three_tokens][1][1].abs().max() == 0
    assert results[three_tokens][1][0].abs().max() > 0
