"""Adam preconditioning of per-example gradients, from the live optimizer or a saved HF checkpoint.

LESS and ROSE featurize an example by the direction Adam would move the weights if that example were the next batch:
`m' = b1 m + (1 - b1) g`, `v' = b2 v + (1 - b2) g^2`, `G = m' / sqrt(v' + eps)` (eps INSIDE the square root and no
bias correction, as both reference codes do). `m` and `v` come from the optimizer state at the checkpoint; `b1`, `b2`
and `eps` from the optimizer's parameter group.

The optimizer state is matched to LoRA weights by parameter object (live) or by parameter NAME (saved checkpoints),
never by an integer position guessed from an ordering, which is what broke the authors' code outside FSDP.

Where the moments live, by optimizer (`moments_from_state` reads all of them):
- torch `Adam`/`AdamW` (foreach or fused: `optim="adamw_torch"`, `"adamw_torch_fused"`), DeepSpeed, apex: `exp_avg` and
  `exp_avg_sq`, sharded `DTensor`s under FSDP2 (gathered with `full_tensor()`).
- bitsandbytes `AdamW` (`"adamw_bnb_8bit"`, `"adamw_8bit"`, `"paged_adamw_8bit"`, `"paged_adamw_32bit"`): `state1`
  (m) and `state2` (v). In 8 bits they are blockwise-quantized `uint8` with a code book (`qmap1/2`) and per-block
  scales (`absmax1/2`), and are dequantized by `bitsandbytes.functional.dequantize_blockwise` itself; weights with
  fewer than `min_8bit_size` (4096) elements keep float32 states. Saved checkpoints nest them under bitsandbytes'
  `__bnb_optimizer_quant_state__` key.
Optimizers without both moments (Adafactor, Lion, AdEMAMix, schedule-free, ...) are refused at `on_train_begin`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedOptimizerError
from ..sharding import full_tensor, reshard
from .gradients import LoraParameter

# bitsandbytes nests its state tensors under this key in `state_dict()` (to hide them from FSDP's gathering).
_BNB_NESTED_STATE = "__bnb_optimizer_quant_state__"
# Block sizes `bitsandbytes.functional.dequantize_blockwise` accepts (its optimizers use 256).
_BNB_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
_ADAM_FIX = (
    "Use an Adam-family optimizer for the warmup: `optim='adamw_torch'` (or, to save memory, 'adamw_torch_fused', "
    "'adamw_bnb_8bit', 'paged_adamw_8bit', 'paged_adamw_32bit'), or `preconditioner='sgd'` for raw gradients."
)
# Optimizers with `betas` whose state holds no per-weight Adam (m, v): refused before training, by class name.
_NOT_ADAM = {
    "adafactor": "keeps no first moment (beta1=None) and only a factored second moment (row and column means)",
    "lion": "keeps one momentum and no second moment",
    "ademamix": "keeps two first moments mixed by alpha, not Adam's single m",
    "schedulefree": "keeps an averaged iterate instead of a first moment",
    "adamax": "keeps an infinity norm instead of a second moment",
    "galore": "keeps its moments for a low-rank projection of the gradient, not for each weight",
    "apollo": "keeps its moments for a low-rank projection of the gradient, not for each weight",
    "lomo": "keeps no optimizer state",
}


@dataclass
class AdamState:
    """Flattened Adam moments of the LoRA weights, in `LoraGradientCollector` parameter order.

    Args:
        exp_avg, exp_avg_sq: `(num_params,)` float32 first and second moments.
        beta1, beta2, eps: from the optimizer's parameter groups.
    """

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    beta1: float
    beta2: float
    eps: float

    def precondition(self, grads: torch.Tensor) -> torch.Tensor:
        """`m' / sqrt(v' + eps)` for a batch of flat gradients `(B, num_params)`."""
        m = self.exp_avg.to(grads.device)
        v = self.exp_avg_sq.to(grads.device)
        updated_m = torch.lerp(grads, m.expand_as(grads), self.beta1)  # b1 m + (1 - b1) g, without a temporary
        updated_v = (1 - self.beta2) * grads.square() + self.beta2 * v
        return updated_m / (updated_v + self.eps).sqrt()

    def scale(self, grads: torch.Tensor) -> torch.Tensor:
        """`g / sqrt(v' + eps)`: Adam's per-coordinate scaling without its momentum term (`scoring="robust"`).

        `precondition` adds the same `b1 m / sqrt(v')` to every example, which makes any two pool features alike,
        so the paper's score of a row with a small gradient is mostly the warmup's momentum, not the row.
        """
        v = self.exp_avg_sq.to(grads.device)
        updated_v = (1 - self.beta2) * grads.square() + self.beta2 * v
        return grads / (updated_v + self.eps).sqrt()

    def to(self, device: torch.device | str) -> AdamState:
        return AdamState(self.exp_avg.to(device), self.exp_avg_sq.to(device), self.beta1, self.beta2, self.eps)


def _unwrap_optimizer(optimizer):
    # accelerate's AcceleratedOptimizer and DeepSpeed wrappers both keep the torch optimizer in `.optimizer`; the
    # former is itself a torch Optimizer (proxying state and groups), but only the inner class says what it is.
    from accelerate.optimizer import AcceleratedOptimizer

    while hasattr(optimizer, "optimizer") and (
        isinstance(optimizer, AcceleratedOptimizer) or not isinstance(optimizer, torch.optim.Optimizer)
    ):
        optimizer = optimizer.optimizer
    return optimizer


def _group_hyperparameters(groups: list[dict], where: str) -> tuple[float, float, float]:
    found = set()
    for group in groups:
        if "betas" not in group or "eps" not in group:
            raise UnsupportedOptimizerError(
                f"The optimizer ({where}) has no `betas`/`eps`: it is not an Adam-family optimizer. Use AdamW "
                "(`optim='adamw_torch'`) for the warmup, or `preconditioner='sgd'` for raw gradients."
            )
        found.add((float(group["betas"][0]), float(group["betas"][1]), float(group["eps"])))
    if len(found) != 1:
        raise ValueError(f"The optimizer's parameter groups disagree on (beta1, beta2, eps): {sorted(found)}.")
    return found.pop()


def check_adam_optimizer(optimizer) -> tuple[float, float, float]:
    """`(beta1, beta2, eps)` of an Adam-family optimizer (possibly wrapped); a `ValueError` with the fix otherwise.

    Runs before the first step, when no state exists yet, so it judges the optimizer by its class: bitsandbytes
    optimizers by their update rule (`optimizer_name`, only "adam" keeps m and v), others by name (`_NOT_ADAM`).
    """
    inner = _unwrap_optimizer(optimizer)
    name = type(inner).__name__
    bnb_rule = getattr(inner, "optimizer_name", None) if type(inner).__module__.startswith("bitsandbytes") else None
    reason = next((why for key, why in _NOT_ADAM.items() if key in name.lower()), None)
    if reason is None and bnb_rule is not None and bnb_rule != "adam":
        reason = f"runs bitsandbytes' {bnb_rule!r} update, not Adam's, so its state is not Adam's (m, v)"
    if reason is not None:
        raise UnsupportedOptimizerError(f"The warmup optimizer {name} {reason}, which Adam preconditioning needs. {_ADAM_FIX}")
    return _group_hyperparameters(inner.param_groups, name)


def _bnb_blocksize(numel: int, blocks: int) -> int:
    # bitsandbytes keeps one scale per block and no record of the block size: the one that gives `blocks` blocks.
    # ceil(n / b) strictly decreases in b until it reaches 1, so the match is unique (or, for one block, immaterial).
    for blocksize in _BNB_BLOCKSIZES:
        if -(-numel // blocksize) == blocks:
            return blocksize
    raise ValueError(f"bitsandbytes state of {numel} elements with {blocks} scales matches no block size.")


def _bnb_moment(state: dict, index: int) -> torch.Tensor:
    """bitsandbytes' `state<index>` as float32: dequantized by bitsandbytes itself when stored in 8 bits."""
    tensor = state[f"state{index}"]
    if tensor.dtype != torch.uint8:
        return tensor
    if f"absmax{index}" not in state:
        raise UnsupportedOptimizerError(
            "This bitsandbytes 8-bit state is not blockwise-quantized (no `absmax`): upgrade bitsandbytes (>= 0.41) "
            "so the warmup stores blockwise 8-bit states, or use a 32-bit optimizer."
        )
    from bitsandbytes.functional import dequantize_blockwise

    absmax = state[f"absmax{index}"]
    blocksize = _bnb_blocksize(tensor.numel(), absmax.numel())
    return dequantize_blockwise(tensor, absmax=absmax, code=state[f"qmap{index}"], blocksize=blocksize)


def moments_from_state(state: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Adam's `(m, v)` from one parameter's optimizer state (live or from a state dict); `None` if it has none.

    Collective under FSDP2 (sharded `DTensor` moments are gathered): call it on every process, in the same order.
    """
    state = {**state, **state.get(_BNB_NESTED_STATE, {})}
    if "exp_avg" in state and "exp_avg_sq" in state:
        return full_tensor(state["exp_avg"]), full_tensor(state["exp_avg_sq"])
    if "state1" in state and "state2" in state:
        return full_tensor(_bnb_moment(state, 1)), full_tensor(_bnb_moment(state, 2))
    return None


def adam_state_from_optimizer(optimizer, parameters: list[LoraParameter], model: nn.Module) -> AdamState:
    """Adam moments of `parameters` from a live optimizer (torch, accelerate-wrapped, or DeepSpeed ZeRO-1/2/3).

    Raises:
        ValueError: when a LoRA weight has no Adam state (no optimizer step yet, or it is not being optimized).
    """
    reshard(model)  # after a forward without backward, FSDP2 exposes unsharded tensors, not the optimizer's DTensors
    named = dict(model.named_parameters())
    deepspeed_state = None
    try:
        from deepspeed.utils import safe_get_full_optimizer_state

        if any(hasattr(named[p.name], "ds_id") or hasattr(named[p.name], "_hp_mapping") for p in parameters):
            deepspeed_state = safe_get_full_optimizer_state
    except ImportError:
        pass

    torch_optimizer = _unwrap_optimizer(optimizer)
    groups = [g for g in getattr(torch_optimizer, "param_groups", [])]
    param_ids = {id(param) for p in parameters for param in [named[p.name]]}
    relevant = [g for g in groups if any(id(param) in param_ids for param in g["params"])] or groups
    beta1, beta2, eps = _group_hyperparameters(relevant, type(torch_optimizer).__name__)

    exp_avg, exp_avg_sq = [], []
    for p in parameters:
        param = named[p.name]
        if deepspeed_state is not None:
            m, v = deepspeed_state(param, "exp_avg"), deepspeed_state(param, "exp_avg_sq")
        else:
            m, v = moments_from_state(torch_optimizer.state.get(param, {})) or (None, None)
        if m is None or v is None:
            raise ValueError(
                f"The optimizer holds no Adam state for `{p.name}`: features are computed at checkpoints, after at "
                "least one optimizer step, of an Adam-family optimizer over the LoRA weights. Save after training "
                "steps (not at step 0), or use `preconditioner='sgd'`."
            )
        if m.numel() != p.numel or v.numel() != p.numel:
            raise ValueError(
                f"The optimizer's moments of `{p.name}` have {m.numel()} and {v.numel()} elements, the weight "
                f"{p.numel}: the optimizer keeps its state in another space (e.g. GaLore's projection). {_ADAM_FIX}"
            )
        exp_avg.append(m.detach().float().reshape(-1).cpu())
        exp_avg_sq.append(v.detach().float().reshape(-1).cpu())
    return AdamState(torch.cat(exp_avg), torch.cat(exp_avg_sq), beta1, beta2, eps)


def _names_from_trainer_grouping(model: nn.Module) -> list[list[str]]:
    """Parameter names of each optimizer group exactly as `transformers.Trainer.create_optimizer` builds them."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    return [[n for n, _ in trainable if n in decay], [n for n, _ in trainable if n not in decay]]


def adam_state_from_checkpoint(checkpoint_dir: str, parameters: list[LoraParameter], model: nn.Module) -> AdamState:
    """Adam moments of `parameters` from a HF Trainer checkpoint's `optimizer.pt`, matched by parameter name.

    Names come from the state dict's `param_names` when the optimizer recorded them; otherwise from the grouping
    `transformers.Trainer` uses (decay / no-decay groups of trainable parameters), checked entry by entry against
    the stored tensors' shapes. Any disagreement is an error, never a silent mismatch.

    Args:
        checkpoint_dir: a `checkpoint-<step>` folder holding `optimizer.pt`.
        parameters: the LoRA weights (from `find_lora_parameters(model)`).
        model: the PEFT model the checkpoint was trained with, adapter loaded.
    """
    path = os.path.join(checkpoint_dir, "optimizer.pt")
    fsdp_files = [f for f in ("optimizer_0", "optimizer.bin") if os.path.exists(os.path.join(checkpoint_dir, f))]
    if not os.path.isfile(path) and fsdp_files:
        raise FileNotFoundError(
            f"{checkpoint_dir} holds an FSDP optimizer checkpoint ({fsdp_files[0]}), whose format rose_hf does not "
            "read: attach RoseDataSelector to the FSDP2 warmup itself (it reads the live sharded state at every save)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No optimizer.pt in {checkpoint_dir}: Adam preconditioning needs the optimizer state. Keep "
            "`save_only_model=False` in the warmup's TrainingArguments, or use `preconditioner='sgd'`."
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    groups = state_dict["param_groups"]
    if all("param_names" in g for g in groups):
        group_names = [list(g["param_names"]) for g in groups]
    else:
        group_names = _names_from_trainer_grouping(model)
        if [len(g["params"]) for g in groups] != [len(n) for n in group_names]:
            raise ValueError(
                f"{path} has parameter groups of sizes {[len(g['params']) for g in groups]}, but this model's "
                f"trainable parameters group as {[len(n) for n in group_names]}: the checkpoint was saved with "
                "another adapter or optimizer grouping. Load the adapter the checkpoint was trained with."
            )
    by_name: dict[str, dict] = {}
    for group, names in zip(groups, group_names):
        for index, name in zip(group["params"], names):
            by_name[name] = state_dict["state"].get(index, {})
    beta1, beta2, eps = _group_hyperparameters(groups, path)

    exp_avg, exp_avg_sq = [], []
    for p in parameters:
        state = by_name.get(p.name)
        moments = None if state is None else moments_from_state(state)
        if moments is None:
            raise ValueError(
                f"{path} has no Adam state for `{p.name}`. Known names start with "
                f"{sorted(by_name)[:3]}: load the adapter the checkpoint was trained with (same adapter name)."
            )
        m, v = moments
        if tuple(m.shape) != p.shape:
            raise ValueError(
                f"{path}: the Adam state matched to `{p.name}` has shape {tuple(m.shape)}, the weight {p.shape}: the "
                "checkpoint belongs to another adapter configuration."
            )
        exp_avg.append(m.float().reshape(-1))
        exp_avg_sq.append(v.float().reshape(-1))
    return AdamState(torch.cat(exp_avg), torch.cat(exp_avg_sq), beta1, beta2, eps)
