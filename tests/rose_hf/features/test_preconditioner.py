"""Adam preconditioning: the formula by hand, and the moments read from live optimizers and saved checkpoints."""

import random

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from helpers import make_lora_model, pool_dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from rose_fixtures.tiny import build_model
from rose_hf.features.gradients import find_lora_parameters
from rose_hf.features.preconditioner import AdamState, adam_state_from_checkpoint, adam_state_from_optimizer

BETAS, EPS = (0.8, 0.95), 1e-6  # not torch's defaults, so hard-coded values would show


def torch_optimizer(optimizer):
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


def expected_moments(optimizer, model, parameters):
    """The optimizer's own state tensors, concatenated in the order of `parameters`."""
    named = dict(model.named_parameters())
    state = torch_optimizer(optimizer).state
    m = torch.cat([state[named[p.name]]["exp_avg"].flatten() for p in parameters])
    v = torch.cat([state[named[p.name]]["exp_avg_sq"].flatten() for p in parameters])
    return m, v


def train_steps(model, optimizer, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    model.train()
    for _ in range(steps):
        ids = torch.randint(8, vocab, (4, 12), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


# --- the formula --------------------------------------------------------------------------------------------------
def test_precondition_matches_the_formula_written_out():
    generator = torch.Generator().manual_seed(0)
    num_params = 50
    m = torch.randn(num_params, generator=generator) * 1e-2
    v = torch.rand(num_params, generator=generator) * 1e-4
    grads = torch.randn(3, num_params, generator=generator) * 1e-2
    b1, b2, eps = 0.8, 0.95, 1e-3  # a large eps: inside vs outside the square root differs visibly
    state = AdamState(m.clone(), v.clone(), b1, b2, eps)
    out = state.precondition(grads.clone())

    expected = torch.empty_like(grads)
    for row in range(grads.shape[0]):
        for i in range(num_params):
            g = float(grads[row, i])
            new_m = b1 * float(m[i]) + (1 - b1) * g
            new_v = b2 * float(v[i]) + (1 - b2) * g * g
            expected[row, i] = new_m / (new_v + eps) ** 0.5
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
    # The state is not updated in place: every example is preconditioned by the same checkpoint state.
    assert torch.equal(state.exp_avg, m) and torch.equal(state.exp_avg_sq, v)
    # Not bias-corrected, not eps outside the root.
    outside = (b1 * m + (1 - b1) * grads) / ((b2 * v + (1 - b2) * grads**2).sqrt() + eps)
    assert not torch.allclose(out, outside, rtol=1e-3)
    assert state.to("cpu").precondition(grads[:1]).shape == (1, num_params)


# --- live optimizer -----------------------------------------------------------------------------------------------
def test_moments_from_a_live_adamw(tokenizer):
    model = make_lora_model(tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    order = list(range(len(trainable)))
    random.Random(0).shuffle(order)  # the optimizer's order is not the model's
    groups = [
        {"params": [trainable[i] for i in order[::2]], "weight_decay": 0.1},
        {"params": [trainable[i] for i in order[1::2]], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=BETAS, eps=EPS)
    train_steps(model, optimizer)

    parameters = find_lora_parameters(model)
    state = adam_state_from_optimizer(optimizer, parameters, model)
    m, v = expected_moments(optimizer, model, parameters)
    assert state.exp_avg.shape == (sum(p.numel for p in parameters),)
    assert torch.equal(state.exp_avg, m) and torch.equal(state.exp_avg_sq, v)
    assert (state.beta1, state.beta2, state.eps) == (*BETAS, EPS)
    assert torch.count_nonzero(m) > 0.9 * m.numel()

    shuffled = parameters[::-1]  # moments follow the order of the parameters asked for
    state = adam_state_from_optimizer(optimizer, shuffled, model)
    m, v = expected_moments(optimizer, model, shuffled)
    assert torch.equal(state.exp_avg, m) and torch.equal(state.exp_avg_sq, v)


def test_no_optimizer_step_yet_is_refused(tokenizer):
    model = make_lora_model(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], betas=BETAS, eps=EPS)
    with pytest.raises(ValueError, match="no Adam state for .*lora_A.*at least one optimizer step"):
        adam_state_from_optimizer(optimizer, find_lora_parameters(model), model)


def test_lora_weights_outside_the_optimizer_are_refused(tokenizer):
    model = make_lora_model(tokenizer)
    only_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    optimizer = torch.optim.AdamW(only_a, betas=BETAS, eps=EPS)
    train_steps(model, optimizer, steps=1)
    with pytest.raises(ValueError, match="no Adam state for .*lora_B"):
        adam_state_from_optimizer(optimizer, find_lora_parameters(model), model)


def test_non_adam_optimizer_is_refused(tokenizer):
    model = make_lora_model(tokenizer)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    train_steps(model, optimizer, steps=1)
    with pytest.raises(ValueError, match="SGD.*not an Adam-family optimizer.*adamw_torch"):
        adam_state_from_optimizer(optimizer, find_lora_parameters(model), model)


def test_groups_with_different_betas_are_refused(tokenizer):
    model = make_lora_model(tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": trainable[:2], "betas": (0.9, 0.999)}, {"params": trainable[2:], "betas": BETAS}], eps=EPS
    )
    train_steps(model, optimizer, steps=1)
    with pytest.raises(ValueError, match="disagree"):
        adam_state_from_optimizer(optimizer, find_lora_parameters(model), model)


# --- through the Trainer ------------------------------------------------------------------------------------------
def lora_config(r=4, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")):
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.1, target_modules=list(target_modules),
                      task_type="CAUSAL_LM")


def sft_args(output_dir, **kwargs):
    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-3,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, report_to=[], use_cpu=True, bf16=False,
        max_length=64, disable_tqdm=True, seed=0, **kwargs,
    )


def warmup_data():
    pool, _ = pool_dataset(16)
    return pool.remove_columns(["family", "correct", "source", "id"])


class SnapshotOptimizer(TrainerCallback):
    """The live optimizer state of every trainable weight at each save, by parameter name."""

    def __init__(self):
        self.snapshots = {}

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        torch_state = torch_optimizer(optimizer).state
        self.snapshots[state.global_step] = {
            name: (torch_state[p]["exp_avg"].clone(), torch_state[p]["exp_avg_sq"].clone())
            for name, p in model.named_parameters()
            if p.requires_grad
        }


@pytest.fixture(scope="module")
def warmup_run(tokenizer, tmp_path_factory):
    """A tiny SFTTrainer LoRA warmup saving one checkpoint (with optimizer.pt) per epoch."""
    output_dir = tmp_path_factory.mktemp("warmup")
    snapshot = SnapshotOptimizer()
    trainer = SFTTrainer(
        model=build_model("llama", tokenizer), args=sft_args(output_dir, save_strategy="epoch"),
        train_dataset=warmup_data(), processing_class=tokenizer, peft_config=lora_config(), callbacks=[snapshot],
    )
    trainer.train()
    return trainer, snapshot, output_dir


def test_moments_through_accelerate_wrapper(warmup_run):
    trainer, _, _ = warmup_run
    assert isinstance(trainer.optimizer, AcceleratedOptimizer)
    parameters = find_lora_parameters(trainer.model)
    state = adam_state_from_optimizer(trainer.optimizer, parameters, trainer.model)
    m, v = expected_moments(trainer.optimizer, trainer.model, parameters)
    assert torch.equal(state.exp_avg, m) and torch.equal(state.exp_avg_sq, v)
    assert (state.beta1, state.beta2, state.eps) == (*BETAS, EPS)


def test_moments_from_each_saved_checkpoint_equal_the_live_ones(warmup_run):
    trainer, snapshot, output_dir = warmup_run
    assert sorted(snapshot.snapshots) == [2, 4]
    parameters = find_lora_parameters(trainer.model)
    for step, moments in snapshot.snapshots.items():
        state = adam_state_from_checkpoint(str(output_dir / f"checkpoint-{step}"), parameters, trainer.model)
        assert torch.equal(state.exp_avg, torch.cat([moments[p.name][0].flatten() for p in parameters]))
        assert torch.equal(state.exp_avg_sq, torch.cat([moments[p.name][1].flatten() for p in parameters]))
        assert (state.beta1, state.beta2, state.eps) == (*BETAS, EPS)
    # The two checkpoints really hold different states (the test would not see a stale file otherwise).
    assert not torch.equal(snapshot.snapshots[2][parameters[0].name][1], snapshot.snapshots[4][parameters[0].name][1])


def test_checkpoint_of_another_adapter_is_refused(warmup_run, tokenizer):
    _, _, output_dir = warmup_run
    checkpoint = str(output_dir / "checkpoint-4")
    from peft import get_peft_model

    other_rank = get_peft_model(build_model("llama", tokenizer), lora_config(r=8))
    with pytest.raises(ValueError, match="has shape .*another adapter configuration"):
        adam_state_from_checkpoint(checkpoint, find_lora_parameters(other_rank), other_rank)
    fewer_modules = get_peft_model(build_model("llama", tokenizer), lora_config(target_modules=("q_proj", "v_proj")))
    with pytest.raises(ValueError, match="parameter groups of sizes"):
        adam_state_from_checkpoint(checkpoint, find_lora_parameters(fewer_modules), fewer_modules)


def test_checkpoint_without_optimizer_state(tmp_path, tokenizer):
    model = make_lora_model(tokenizer)
    with pytest.raises(FileNotFoundError, match="save_only_model=False"):
        adam_state_from_checkpoint(str(tmp_path), find_lora_parameters(model), model)


def test_checkpoint_with_recorded_parameter_names(tmp_path, tokenizer):
    """torch optimizers built from named parameters record `param_names`: those are used, in any order."""
    model = make_lora_model(tokenizer)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    random.Random(1).shuffle(named)
    optimizer = torch.optim.AdamW([{"params": named[:5]}, {"params": named[5:]}], lr=1e-2, betas=BETAS, eps=EPS)
    train_steps(model, optimizer)
    assert "param_names" in optimizer.state_dict()["param_groups"][0]
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")

    parameters = find_lora_parameters(model)
    state = adam_state_from_checkpoint(str(tmp_path), parameters, model)
    m, v = expected_moments(optimizer, model, parameters)
    assert torch.equal(state.exp_avg, m) and torch.equal(state.exp_avg_sq, v)
    assert (state.beta1, state.beta2, state.eps) == (*BETAS, EPS)

    renamed = make_lora_model(tokenizer)  # same shapes, another adapter name
    renamed.add_adapter("other", lora_config())
    renamed.set_adapter("other")
    with pytest.raises(ValueError, match="no Adam state for .*other"):
        adam_state_from_checkpoint(str(tmp_path), find_lora_parameters(renamed), renamed)
