"""The DPO preference loss per pair, with TRL's semantics, for validation gradients.

`DPOTrainer` computes its loss inside `_compute_loss` together with logging and metric gathering, and averages it over
the batch. Selection needs the gradient of EACH pair's loss, so this module evaluates the same formulas per pair:
`loss_type`, `beta`, `label_smoothing` and `discopop_tau` mean what they mean in `DPOConfig` (with TRL's default
`f_divergence_type="reverse_kl"`, log-probs summed over completion tokens, and, for a PEFT model, the reference given
by the same model with its adapter disabled). `tests/test_dpo.py` checks the gradients against autograd of
`DPOTrainer.compute_loss` itself.

Loss types that couple the pairs of a batch (`aot`, `aot_unpaired` sort across it, `sft` averages tokens over it)
have no per-pair gradient and are rejected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..sharding import reshard
from .gradients import LoraGradientCollector, sequence_log_probs

PER_PAIR_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)


def check_loss_type(loss_type: str | list[str]) -> list[str]:
    """The loss types as a list; a `ValueError` naming `loss_type` and the fix for one without a per-pair form."""
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    for name in loss_types:
        if name not in PER_PAIR_LOSS_TYPES:
            raise ValueError(
                f"loss_type={name!r} has no per-pair gradient (it couples the pairs of a batch, or is unknown): use "
                f"one of {list(PER_PAIR_LOSS_TYPES)}."
            )
    return loss_types


def dpo_per_pair_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
    loss_type: str | list[str] = "sigmoid",
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> torch.Tensor:
    """Each pair's DPO loss `(B,)`, as `DPOTrainer` defines it (before it takes the batch mean).

    Args:
        chosen_logps, rejected_logps: summed completion log-probs under the policy, `(B,)`.
        ref_chosen_logps, ref_rejected_logps: the same under the reference model.
        chosen_lengths, rejected_lengths: completion token counts (used by `ipo` and `sigmoid_norm`).
        beta, loss_type, loss_weights, label_smoothing, discopop_tau: as in `trl.DPOConfig`.
    """
    loss_types = check_loss_type(loss_type)
    if not math.isfinite(float(beta)) or beta <= 0:
        raise ValueError(f"beta={beta} must be a positive number (TRL's default is 0.1).")
    weights = loss_weights or [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(loss_types)} loss types: give one each.")

    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    chosen_lengths = chosen_lengths.clamp(min=1.0)
    rejected_lengths = rejected_lengths.clamp(min=1.0)

    total = torch.zeros_like(delta)
    for name, weight in zip(loss_types, weights):
        if name == "sigmoid":
            loss = -F.logsigmoid(beta * delta)
        elif name == "hinge":
            loss = torch.relu(1 - beta * delta)
        elif name == "ipo":
            ipo_delta = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths
            loss = (ipo_delta - 1 / (2 * beta)) ** 2
        elif name == "exo_pair":
            epsilon = torch.tensor(label_smoothing, device=delta.device, dtype=delta.dtype)
            loss = torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-epsilon)) + torch.sigmoid(
                -beta * delta
            ) * (F.logsigmoid(-beta * delta) - torch.log(epsilon))
        elif name == "nca_pair":
            chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
            loss = (
                -F.logsigmoid(chosen_rewards)
                - 0.5 * F.logsigmoid(-chosen_rewards)
                - 0.5 * F.logsigmoid(-rejected_rewards)
            )
        elif name == "robust":
            clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
            flipped = -label_smoothing * F.logsigmoid(-beta * delta)
            loss = (clean - flipped) / (1 - 2 * label_smoothing)
        elif name == "bco_pair":
            loss = -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
        elif name == "sppo_hard":
            loss = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
        elif name == "apo_zero":
            loss = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
        elif name == "apo_down":
            loss = torch.sigmoid(beta * chosen_logratios) + 1 - torch.sigmoid(beta * delta)
        elif name == "discopop":
            logits = beta * delta
            modulation = torch.sigmoid(logits / discopop_tau)
            loss = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
        else:  # "sigmoid_norm"
            norm_delta = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths
            loss = -F.logsigmoid(beta * norm_delta)
        total = total + weight * loss
    return total


def dpo_pair_gradients(
    model: nn.Module,
    collector: LoraGradientCollector,
    batch: dict[str, torch.Tensor],
    beta: float = 0.1,
    loss_type: str | list[str] = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Each pair's gradient of its DPO loss w.r.t. the LoRA weights, `(pairs, num_lora_params)` float32.

    Args:
        model: the PEFT policy; the reference is the same model with its adapter disabled (or its frozen "ref"
            adapter, if one is loaded), as `DPOTrainer` does for PEFT models.
        collector: the model's `LoraGradientCollector`.
        batch: a batch from TRL's `DataCollatorForPreference` (rows: [chosen..., rejected...]).
    """
    from trl.trainer.utils import use_adapter

    peft_config = getattr(model, "peft_config", {})
    # PEFT disables and re-enables the adapter by setting `requires_grad` on the parameters registered at that moment;
    # under FSDP2 a forward without backward leaves the root group's unsharded tensors registered in place of the
    # optimizer's DTensors. Resharding on both sides makes PEFT flip the same (sharded) parameters back on.
    reshard(model)
    with torch.no_grad(), use_adapter(model, adapter_name="ref" if "ref" in peft_config else None):
        ref_chosen, ref_rejected = sequence_log_probs(model, batch).chunk(2)
        reshard(model)
    lengths = batch["completion_mask"][:, 1:].sum(dim=1).float()
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    with collector.capture():
        chosen, rejected = sequence_log_probs(model, batch).chunk(2)
        loss = dpo_per_pair_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            chosen_lengths,
            rejected_lengths,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
        )
        collector.backward(loss.sum())
        grads = collector.flat_gradients()
    # A pair's gradient flows through both of its sequences.
    chosen_grads, rejected_grads = grads.chunk(2)
    return chosen_grads + rejected_grads
