"""The prefilter's representation of a row: the base model's last hidden state, mean-pooled over the row's tokens.

RDS+ (Ivison et al., 2025, arXiv 2503.01807): mean-pooled final-layer hidden states of the whole row (prompt and
completion), compared by cosine. One forward pass per row, no backward: a fraction of a gradient feature's cost.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import nn

# What the representation is, recorded in the prefilter's cache key: a change here must invalidate old caches.
REPRESENTATION = "mean_last_hidden_state_of_base_model"


@contextlib.contextmanager
def base_model_forward(model: nn.Module) -> Iterator[None]:
    """Forward passes of the base model without any adapter (PEFT's `disable_adapter`), dropout off.

    The prefilter scores with the base model so that its result does not depend on when it runs (a resumed run
    holds a trained adapter). Every module's mode is restored on exit.
    """
    modes = {module: module.training for module in model.modules()}
    disable = getattr(model, "disable_adapter", None)
    context = disable() if callable(disable) and hasattr(model, "peft_config") else contextlib.nullcontext()
    model.eval()
    try:
        with context, torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def _forward_kwargs(model: nn.Module) -> dict[str, object]:
    # Only the hidden states are needed: skip the vocabulary projection of every position where the model allows it.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def mean_pooled(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, H)` float32 L2-normalised mean of the last hidden state over each row's non-padding tokens.

    Call inside `base_model_forward(model)`. Rows must be right-padded (`SFTCollator`): with a causal mask the padding
    then changes no real token's hidden state. A row without tokens gets a zero vector (cosine 0 to everything).
    """
    output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                   **_forward_kwargs(model))  # fmt: skip
    hidden = output.hidden_states[-1].float()
    mask = attention_mask.to(hidden.dtype)[:, :, None]
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
