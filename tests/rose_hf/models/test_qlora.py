"""QLoRA: features of a LoRA adapter on a 4-bit bitsandbytes base (CPU, bitsandbytes >= 0.50).

The base's linears are `bnb.nn.Linear4bit` (nf4); the LoRA `A`/`B` stay float32 `nn.Linear`s, so the hooks work as on
a float base. Checked against brute force: per-example and per-pair gradients equal loops of single-example backward
passes through the same 4-bit model, and the selection equals the one from a float model holding bitsandbytes' own
dequantization of the same 4-bit weights. A QLoRA warmup (SFTTrainer, `optim="paged_adamw_8bit"`, the callback)
selects.
"""

import numpy as np
import pytest
import torch
from helpers import ROOT, pool_dataset
from peft import LoraConfig, get_peft_model
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf import RoseConfig, RoseDataSelector
from rose_hf.data import SFTCollator, preference_collator, prepare_preference_dataset, prepare_sft_dataset
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.features.dpo import dpo_pair_gradients, dpo_per_pair_loss
from rose_hf.features.gradients import LoraGradientCollector, feature_mode, sequence_log_probs, sft_per_example_loss
from rose_hf.features.preconditioner import AdamState
from rose_hf.pipeline import SelectionPipeline

bnb = pytest.importorskip("bitsandbytes")
from rose_fixtures.quantized import dequantized_copy, load_in_4bit  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora(r=8):
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=TARGETS, task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def base_path(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("base"))
    build_model("llama", tokenizer, hidden_size=64, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(base_path):
    """(4-bit LoRA model, float LoRA model with the dequantized base weights), with identical non-zero adapters."""
    quantized = load_in_4bit(base_path)
    dequantized = dequantized_copy(quantized, base_path)
    quantized, dequantized = get_peft_model(quantized, lora()), get_peft_model(dequantized, lora())
    generator = torch.Generator().manual_seed(1)
    floats = dict(dequantized.named_parameters())
    for name, param in quantized.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
                floats[name].copy_(param)
    return quantized, dequantized


def lora_grads(model, names):
    named = dict(model.named_parameters())
    return torch.cat([named[n].grad.flatten() for n in names])


def test_the_base_is_4bit_and_the_lora_float(models):
    quantized, _ = models
    base = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(base) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert all(m.weight.dtype == torch.uint8 for m in base)
    collector = LoraGradientCollector(quantized)
    assert len(collector.parameters) == 2 * 4 * 2
    assert all(p.module.weight.dtype == torch.float32 for p in collector.parameters)


def test_per_example_gradients_equal_a_loop_on_the_4bit_model(models, tokenizer):
    quantized, _ = models
    pool, _ = pool_dataset(6)
    tokens = prepare_sft_dataset(pool, tokenizer, 64)
    rows = [{"input_ids": i, "labels": label} for i, label in zip(tokens["input_ids"], tokens["labels"])]
    collate = SFTCollator(tokenizer.pad_token_id)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding is exercised
    collector = LoraGradientCollector(quantized)
    with feature_mode(quantized):
        with collector.capture():
            loss, _ = sft_per_example_loss(quantized, collate(rows))
            collector.backward(loss.sum())
            batched = collector.flat_gradients()
        for i, row in enumerate(rows):
            quantized.zero_grad()
            loss, _ = sft_per_example_loss(quantized, collate([row]))
            loss.sum().backward()
            alone = lora_grads(quantized, collector.names)
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5 * float(alone.abs().max()))
    quantized.zero_grad()


def test_dpo_pair_gradients_equal_a_loop_on_the_4bit_model(models, tokenizer):
    from trl.trainer.utils import use_adapter

    quantized, _ = models
    _, task = pool_dataset()
    pairs = list(prepare_preference_dataset(task.validation.select(range(4)), tokenizer, 64))
    collate = preference_collator(tokenizer.pad_token_id, 64)
    collector = LoraGradientCollector(quantized)
    with feature_mode(quantized):
        batched = dpo_pair_gradients(quantized, collector, collate(pairs))
        for i, pair in enumerate(pairs):
            batch = collate([pair])
            with torch.no_grad(), use_adapter(quantized, adapter_name=None):  # reference = adapter off
                ref_chosen, ref_rejected = sequence_log_probs(quantized, batch).chunk(2)
            quantized.zero_grad()
            chosen, rejected = sequence_log_probs(quantized, batch).chunk(2)
            lengths = batch["completion_mask"][:, 1:].sum(dim=1).float()
            dpo_per_pair_loss(chosen, rejected, ref_chosen, ref_rejected, *lengths.chunk(2)).sum().backward()
            alone = lora_grads(quantized, collector.names)
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5 * float(alone.abs().max()))
    quantized.zero_grad()


def test_selection_on_4bit_base_matches_its_dequantized_float_model(models, tokenizer, tmp_path):
    from scipy.stats import spearmanr

    pool, task = pool_dataset(200)
    pairs = task.validation.select(range(6))
    # What this compares is rose_hf on a 4-bit base against the same arithmetic in float32; where bitsandbytes' CPU
    # kernel does not compute its own dequantization (seen with its kernels-community fallback on some CPUs), the
    # scores would measure bitsandbytes, not rose_hf.
    batch = SFTCollator(0)([prepare_sft_dataset(pool.select(range(8)), tokenizer, max_length=64)[i] for i in range(8)])
    with torch.no_grad():
        logits = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits for m in models]
    gap = float((logits[0] - logits[1]).abs().max() / logits[1].abs().max())
    if gap > 1e-4:
        pytest.skip(f"bitsandbytes' 4-bit forward differs from its own dequantized weights by {gap:.1e} here")
    results = {}
    for kind, model in zip(("4bit", "float"), models):
        config = RoseConfig(selection_dir=str(tmp_path / kind), prefilter_fraction=None, projection_dim=512, feature_max_length=64, report=False)
        pipeline = SelectionPipeline(pool, pairs, config)
        pipeline.prepare(model, tokenizer)
        n = pipeline.featurizer.collector.num_params
        generator = torch.Generator().manual_seed(0)  # the same Adam state for both
        adam = AdamState(torch.randn(n, generator=generator) * 1e-3, torch.rand(n, generator=generator) * 1e-6,
                         0.9, 0.999, 1e-8)  # fmt: skip
        pipeline.featurize(model, TrainingCheckpoint(10, [1e-3] * 10, adam))
        results[kind] = pipeline.select()
    q, f = results["4bit"], results["float"]
    assert len(q.selected_indices) == 10
    rho = spearmanr(q.scores, f.scores).statistic
    overlap = len(set(q.selected_indices) & set(f.selected_indices)) / 10
    diff = float(np.abs(q.scores - f.scores).max())
    print(f"4-bit vs dequantized float: Spearman {rho:.5f}, top-5% overlap {overlap:.2f}, max score diff {diff:.2e}")
    assert rho > 0.999 and overlap >= 0.9 and diff < 1e-2


def test_qlora_warmup_with_paged_adamw_8bit_selects(tokenizer, tmp_path):
    """The user's QLoRA script: a 4-bit base, SFTTrainer with `optim="paged_adamw_8bit"`, plus the one-line callback.

    LoRA r=32 on a hidden-128 model gives q/o's A/B matrices 4096 elements, so bitsandbytes keeps their Adam state
    in 8 bits (the smaller k/v ones, under grouped-query attention, stay float32): the callback reads both kinds.
    """
    path = str(tmp_path / "base")
    build_model("llama", tokenizer, hidden_size=128, seed=0).save_pretrained(path)
    pool, task = pool_dataset(40)
    # The DPO scores themselves (not ranks, which tie), to check that the 8-bit moments give distinct features.
    config = RoseConfig(selection_dir=str(tmp_path / "rose"), prefilter_fraction=None, projection_dim=256, feature_max_length=64, chunk_size=16,
                        report=False, validation_objective="dpo")  # fmt: skip
    selector = RoseDataSelector(pool, task.validation.select(range(4)), config)
    args = SFTConfig(output_dir=str(tmp_path / "out"), optim="paged_adamw_8bit", num_train_epochs=2,
                     save_strategy="epoch", per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
                     use_cpu=True, bf16=False, max_length=64, disable_tqdm=True, logging_steps=1,
                     gradient_checkpointing=True, seed=0)  # fmt: skip
    trainer = SFTTrainer(model=load_in_4bit(path), args=args, processing_class=tokenizer, peft_config=lora(r=32),
                         train_dataset=pool.select(range(16)).remove_columns(["family", "correct", "source", "id"]),
                         callbacks=[selector])  # fmt: skip
    trainer.train()
    optimizer = trainer.optimizer.optimizer
    assert type(optimizer).__module__.startswith("bitsandbytes") and optimizer.is_paged
    assert {s["state1"].dtype for s in optimizer.state.values()} == {torch.uint8, torch.float32}
    # The default (paper) scoring featurizes every checkpoint: 16 rows, batch 8, one per epoch.
    assert [c.step for c in selector.pipeline.store.completed_checkpoints()] == [2, 4]
    assert len(selector.selected_indices) == 2  # 5% of 40
    assert np.isfinite(selector.scores).all() and len(set(selector.scores.tolist())) > 30
    assert selector.result.info["health"]["verdict"] in ("ok", "noise")


def test_qlora_recipe_loads_the_base_in_4bit(base_path):
    """The paper's QLoRA recipe, through the real CLI parser, gives `model_init_kwargs` that load the base in 4 bits
    where SFTTrainer (warmup and final stage) loads it from a path."""
    import json
    from pathlib import Path

    from trl.trainer.utils import create_model_from_path

    from rose_hf.cli import model_init_kwargs, parse

    recipe = Path(ROOT) / "recipes" / "paper" / "llama3.1-8b_shp_qlora.yaml"
    _, _, training_args, model_args = parse(["--config", str(recipe), "--bf16", "false", "--use_cpu", "true",
                                             "--dtype", "float32"])  # fmt: skip
    assert training_args.optim == "paged_adamw_8bit"
    kwargs = model_init_kwargs(model_args)
    json.dumps(kwargs)  # TrainingArguments stay serialisable
    quantization = kwargs["quantization_config"]
    assert quantization["load_in_4bit"] and quantization["bnb_4bit_quant_type"] == "nf4"
    assert quantization["bnb_4bit_use_double_quant"]
    model = create_model_from_path(base_path, **kwargs)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 7
