"""Adam moments read from the optimizers users pick by `optim=` name, against a float32 `torch.optim.AdamW` run on the
same gradients; optimizers without Adam's (m, v) are refused before the first training step.

The 8-bit bitsandbytes states are blockwise-quantized (256 values per block, one absmax each, a dynamic code book).
Every optimizer step dequantizes, updates in float32 and quantizes again, rounding each value to the nearest code, so
after k steps a moment is off by at most k * (largest gap of the code book / 2) * (largest |moment| so far): that is
the tolerance used here, computed from bitsandbytes' own code books.
"""

import glob
import os

import pytest
import torch
from helpers import make_tokenizer, pool_dataset
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf import RoseConfig, RoseDataSelector
from rose_hf.features.gradients import find_lora_parameters
from rose_hf.features.preconditioner import adam_state_from_checkpoint, adam_state_from_optimizer, check_adam_optimizer

BETAS, EPS, STEPS = (0.8, 0.95), 1e-6, 5
TORCH_NAMES = ["adamw_torch", "adamw_torch_fused"]
BNB_NAMES = ["adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]


@pytest.fixture(scope="module")
def model():
    """LoRA r=32 on a hidden-128 Llama: A and B have 4096 elements, bitsandbytes' `min_8bit_size`, so they get 8-bit
    states; o_proj's r=4 parts (512 elements) keep float32 states, the other branch."""
    config = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        rank_pattern={"o_proj": 4}, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(build_model("llama", make_tokenizer(), hidden_size=128, seed=0), config)


def trainer_optimizer(model, name, output_dir):
    """The optimizer `transformers.Trainer` builds for `optim=name` (its grouping, its bitsandbytes overrides)."""
    args = TrainingArguments(output_dir=str(output_dir), optim=name, use_cpu=True, report_to=[], learning_rate=1e-3,
                             adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS)  # fmt: skip
    return Trainer(model=model, args=args).create_optimizer()


def run_on_same_gradients(model, optimizer):
    """`STEPS` steps of `optimizer` and of a float32 reference AdamW (plain loop), fed identical gradients.

    Returns the reference's moments by parameter name and the largest |m| and v it held at any step.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    clones = {n: p.detach().clone().requires_grad_() for n, p in named.items()}
    reference = torch.optim.AdamW(list(clones.values()), lr=1e-3, betas=BETAS, eps=EPS, foreach=False)
    generator = torch.Generator().manual_seed(0)
    peak_m = peak_v = 0.0
    for _ in range(STEPS):
        for name, clone in clones.items():
            grad = torch.randn(clone.shape, generator=generator) * 1e-2
            clone.grad, named[name].grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
        peak_m = max(peak_m, max(float(reference.state[c]["exp_avg"].abs().max()) for c in clones.values()))
        peak_v = max(peak_v, max(float(reference.state[c]["exp_avg_sq"].max()) for c in clones.values()))
    optimizer.zero_grad()
    moments = {n: (reference.state[c]["exp_avg"], reference.state[c]["exp_avg_sq"]) for n, c in clones.items()}
    return moments, peak_m, peak_v


def code_book_half_gap(signed: bool) -> float:
    from bitsandbytes.functional import create_dynamic_map

    code = create_dynamic_map(signed=signed).sort().values
    return float((code[1:] - code[:-1]).max()) / 2


@pytest.mark.parametrize("name", TORCH_NAMES + BNB_NAMES)
def test_moments_equal_float_adamw_on_the_same_gradients(model, name, tmp_path):
    if name in BNB_NAMES:
        pytest.importorskip("bitsandbytes")
    with torch.no_grad():  # every parametrisation starts from the same weights
        for param in model.parameters():
            if param.requires_grad:
                param.zero_()
    optimizer = trainer_optimizer(model, name, tmp_path)
    assert check_adam_optimizer(optimizer) == (*BETAS, EPS)
    reference, peak_m, peak_v = run_on_same_gradients(model, optimizer)
    parameters = find_lora_parameters(model)
    state = adam_state_from_optimizer(optimizer, parameters, model)
    m = torch.cat([reference[p.name][0].flatten() for p in parameters])
    v = torch.cat([reference[p.name][1].flatten() for p in parameters])
    assert (state.beta1, state.beta2, state.eps) == (*BETAS, EPS)

    named = dict(model.named_parameters())
    dtypes = {optimizer.state[named[p.name]].get("state1", torch.empty(0)).dtype for p in parameters}
    if name.endswith("8bit"):
        assert dtypes == {torch.uint8, torch.float32}, "both the 8-bit and the small-weight float32 branch ran"
        m_error, v_error = (state.exp_avg - m).abs().max(), (state.exp_avg_sq - v).abs().max()
        assert m_error <= STEPS * code_book_half_gap(signed=True) * peak_m
        assert v_error <= STEPS * code_book_half_gap(signed=False) * peak_v
        assert torch.nn.functional.cosine_similarity(state.exp_avg, m, dim=0) > 0.999
        assert m_error > 0, "8-bit moments equal to float32 ones would mean the 8-bit path never ran"
        print(f"{name}: max |m - m_float| {m_error:.2e} ({m_error / peak_m:.2%} of max |m|), "
              f"max |v - v_float| {v_error:.2e} ({v_error / peak_v:.2%} of max v)")  # fmt: skip
    else:
        torch.testing.assert_close(state.exp_avg, m, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(state.exp_avg_sq, v, rtol=1e-5, atol=1e-12)

    # The same moments from the `optimizer.pt` the Trainer would save (bitsandbytes nests its quantized state).
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    saved = adam_state_from_checkpoint(str(tmp_path), parameters, model)
    assert torch.equal(saved.exp_avg, state.exp_avg) and torch.equal(saved.exp_avg_sq, state.exp_avg_sq)


@pytest.mark.parametrize(
    "name,match",
    [
        ("adafactor", "Adafactor keeps no first moment"),
        ("lion_32bit", "Lion keeps one momentum and no second moment"),
        ("paged_lion_8bit", "Lion keeps one momentum"),
        ("ademamix", "AdEMAMix keeps two first moments"),
        ("rmsprop_bnb", "RMSprop .*'rmsprop' update"),
        ("sgd", "not an Adam-family optimizer"),
    ],
)
def test_optimizers_without_adam_moments_are_refused(model, name, match, tmp_path):
    if "bnb" in name or "lion" in name or name == "ademamix":
        pytest.importorskip("bitsandbytes")
    optimizer = trainer_optimizer(model, name, tmp_path)
    with pytest.raises(ValueError, match=match + ".*(adamw_torch|preconditioner='sgd')"):
        check_adam_optimizer(optimizer)


def test_adafactor_is_refused_before_the_first_step(tmp_path):
    tokenizer = make_tokenizer()
    pool, task = pool_dataset(16)
    selector = RoseDataSelector(pool, task.validation, RoseConfig(selection_dir=str(tmp_path / "rose"), report=False,
                                                                   projection_dim=64, feature_max_length=64))  # fmt: skip
    args = SFTConfig(output_dir=str(tmp_path / "out"), optim="adafactor", num_train_epochs=1, save_strategy="epoch",
                     per_device_train_batch_size=8, report_to=[], use_cpu=True, bf16=False, max_length=64,
                     disable_tqdm=True)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=build_model("llama", tokenizer), args=args, processing_class=tokenizer,
                         train_dataset=pool.remove_columns(["family", "correct", "source", "id"]), peft_config=lora,
                         callbacks=[selector])  # fmt: skip
    with pytest.raises(ValueError, match="Adafactor keeps no first moment.*optim='adamw_torch'.*paged_adamw_8bit"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not glob.glob(os.path.join(tmp_path, "out", "checkpoint-*"))


@pytest.mark.parametrize("saved", ["optimizer_0", "optimizer.bin"])
def test_fsdp_optimizer_checkpoints_say_what_to_do(model, saved, tmp_path):
    (tmp_path / saved).mkdir() if saved == "optimizer_0" else (tmp_path / saved).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"FSDP optimizer checkpoint \\({saved}\\).*RoseDataSelector"):
        adam_state_from_checkpoint(str(tmp_path), find_lora_parameters(model), model)
