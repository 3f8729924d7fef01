"""Adam preconditioning of per-example gradients, from the live optimizer or a saved HF checkpoint.

LESS and ROSE featurize an example by the direction Adam would move the weights if that example were the next batch:
`m' = b1 m + (1 - b1) g`, `v' = b2 v + (1 - b2) g^2`, `G = m' / sqrt(v' + eps)` (eps INSIDE the square root and no
bias correction, as both reference codes do). `m` and `v` come from the optimizer state at the checkpoint; `b1`, `b2`
and `eps` from the optimizer's parameter group.

The optimizer state is matched to LoRA weights by parameter object (live) or by parameter NAME (saved checkpoints),
never by an integer position guessed from an ordering, which is what broke the authors' code outside FSDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .gradients import LoraParameter


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

        `precondition` adds the same `b1 m / sqrt(v')` to every example, which makes any two pool features alike
        (measured on the benchmark's sort world: mean cosine 0.46 between pool rows, 0.00 without it), so the
        paper's score of a row with a small gradient is mostly the warmup's momentum, not the row.
        """
        v = self.exp_avg_sq.to(grads.device)
        updated_v = (1 - self.beta2) * grads.square() + self.beta2 * v
        return grads / (updated_v + self.eps).sqrt()

    def to(self, device: torch.device | str) -> AdamState:
        return AdamState(self.exp_avg.to(device), self.exp_avg_sq.to(device), self.beta1, self.beta2, self.eps)


def _unwrap_optimizer(optimizer):
    # accelerate's AcceleratedOptimizer and DeepSpeed wrappers both keep the torch optimizer in `.optimizer`.
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _group_hyperparameters(groups: list[dict], where: str) -> tuple[float, float, float]:
    found = set()
    for group in groups:
        if "betas" not in group or "eps" not in group:
            raise ValueError(
                f"The optimizer ({where}) has no `betas`/`eps`: it is not an Adam-family optimizer. Use AdamW "
                "(`optim='adamw_torch'`) for the warmup, or `preconditioner='sgd'` for raw gradients."
            )
        found.add((float(group["betas"][0]), float(group["betas"][1]), float(group["eps"])))
    if len(found) != 1:
        raise ValueError(f"The optimizer's parameter groups disagree on (beta1, beta2, eps): {sorted(found)}.")
    return found.pop()


def check_adam_optimizer(optimizer) -> tuple[float, float, float]:
    """`(beta1, beta2, eps)` of an Adam-family optimizer (possibly wrapped); a `ValueError` with the fix otherwise."""
    return _group_hyperparameters(_unwrap_optimizer(optimizer).param_groups, type(optimizer).__name__)


def adam_state_from_optimizer(optimizer, parameters: list[LoraParameter], model: nn.Module) -> AdamState:
    """Adam moments of `parameters` from a live optimizer (torch, accelerate-wrapped, or DeepSpeed ZeRO-1/2/3).

    Raises:
        ValueError: when a LoRA weight has no Adam state (no optimizer step yet, or it is not being optimized).
    """
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
            state = torch_optimizer.state.get(param, {})
            m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        if m is None or v is None:
            raise ValueError(
                f"The optimizer holds no Adam state for `{p.name}`: features are computed at checkpoints, after at "
                "least one optimizer step, of an Adam-family optimizer over the LoRA weights. Save after training "
                "steps (not at step 0), or use `preconditioner='sgd'`."
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
        if state is None or "exp_avg" not in state:
            raise ValueError(
                f"{path} has no Adam state for `{p.name}`. Known names start with "
                f"{sorted(by_name)[:3]}: load the adapter the checkpoint was trained with (same adapter name)."
            )
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if tuple(m.shape) != p.shape:
            raise ValueError(
                f"{path}: the Adam state matched to `{p.name}` has shape {tuple(m.shape)}, the weight {p.shape}: the "
                "checkpoint belongs to another adapter configuration."
            )
        exp_avg.append(m.float().reshape(-1))
        exp_avg_sq.append(v.float().reshape(-1))
    return AdamState(torch.cat(exp_avg), torch.cat(exp_avg_sq), beta1, beta2, eps)
