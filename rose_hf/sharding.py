"""What rose_hf needs to know about FSDP: which version shards the model, and how to read its sharded tensors.

FSDP2 (`torch.distributed.fsdp.fully_shard`, accelerate's `fsdp_version: 2`) keeps every module and parameter name;
each parameter becomes a `DTensor` sharded on its first dimension, all-gathered around each wrapped block's forward
and backward. The per-example gradient hooks sit on the LoRA `A`/`B` modules, whose inputs and output gradients are
per-process activations (never sharded), so they see exactly what they see without FSDP. What does change:

- the optimizer's `exp_avg`/`exp_avg_sq` are sharded `DTensor`s: `full_tensor()` gathers them (a collective, so every
  process reads the same parameters in the same order);
- every forward and backward all-gathers parameters, so every process must run the same number of passes (the pool
  pass runs in lockstep, as under ZeRO-3);
- after a forward without a backward (a reference pass, `evaluate`) the root module keeps its parameters unsharded
  and `named_parameters()` returns the plain unsharded tensors instead of the `DTensor`s the optimizer holds:
  `reshard(model)` puts the sharded ones back.

FSDP1 (`FullyShardedDataParallel`) is refused: see `check_fsdp_version`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import UnsupportedDistributedError


def _fsdp2_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return None
    return FSDPModule


def fsdp2_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that `fully_shard` was applied to (empty without FSDP2)."""
    fsdp_module = _fsdp2_module_class()
    if fsdp_module is None:
        return []
    return [module for module in model.modules() if isinstance(module, fsdp_module)]


def uses_fsdp2(model: nn.Module) -> bool:
    """True when `model` (or a submodule) is sharded by FSDP2's `fully_shard`."""
    return bool(fsdp2_modules(model))


def zero3_partitioned(param: torch.Tensor) -> bool:
    """A DeepSpeed ZeRO-3 parameter whose values live in shards on the processes (`param.data` is empty)."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


def uses_fsdp1(model: nn.Module) -> bool:
    """True when `model` (or a submodule) is wrapped in FSDP1's `FullyShardedDataParallel`."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())


def reshard(model: nn.Module) -> None:
    """Free FSDP2's unsharded parameters, so `named_parameters()` returns the sharded `DTensor`s again."""
    for module in fsdp2_modules(model):
        module.reshard()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a `DTensor` is gathered from every process (collective), any other tensor is returned.

    With CPU offload (`fsdp_offload_params`) the shards live on the CPU while the mesh communicates on the
    accelerator (NCCL cannot gather CPU tensors), so they travel to the mesh's device first.
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return tensor
    if not isinstance(tensor, DTensor):
        return tensor
    mesh = tensor.device_mesh
    if tensor.device.type != mesh.device_type:  # untested here: needs an accelerator
        local = tensor.to_local().to(torch.device(mesh.device_type, torch.accelerator.current_device_index()))
        tensor = DTensor.from_local(local, mesh, tensor.placements, shape=tensor.shape, stride=tensor.stride())
    return tensor.full_tensor()


def fsdp_version(model: nn.Module | None = None) -> int:
    """The FSDP version in use: read from the model when it is already wrapped, else from accelerate's plugin or
    the `FSDP_VERSION` that `accelerate launch` exports (accelerate's default is 1)."""
    if model is not None and uses_fsdp2(model):
        return 2
    if model is not None and uses_fsdp1(model):
        return 1
    try:
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state and getattr(AcceleratorState(), "fsdp_plugin", None) is not None:
            return int(AcceleratorState().fsdp_plugin.fsdp_version)
    except (ImportError, AttributeError, ValueError):  # pragma: no cover - no accelerator set up
        pass
    return int(os.environ.get("FSDP_VERSION", "1"))


def check_fsdp_version(distributed_type: str, model: nn.Module | None = None) -> None:
    """Accept FSDP2; refuse FSDP1 with the fix. A no-op for every other distributed type.

    FSDP1 cannot work with per-parameter Adam state: it flattens the parameters of each wrapped block into one 1-D
    `FlatParameter` and gives each process a contiguous slice of it, so a LoRA weight's moments lie in pieces of
    flat shards across processes (or, with `use_orig_params=False`, the LoRA weights are not even parameters with a
    name). FSDP2 keeps every parameter, sharded on its own first dimension.
    """
    wrapped_in_fsdp1 = model is not None and uses_fsdp1(model)
    if "FSDP" not in str(distributed_type).upper() and not wrapped_in_fsdp1:
        return
    if fsdp_version(model) == 2:
        return
    raise UnsupportedDistributedError(
        "RoseDataSelector supports FSDP2 but not FSDP1 (fsdp_version 1): FSDP1 flattens each wrapped block's "
        "parameters into one sharded 1-D FlatParameter, so no process holds a LoRA weight's Adam moments as a tensor "
        "of its own. Set `fsdp_version: 2` in the accelerate config (recipes/accelerate_configs/fsdp2.yaml), or "
        "`fsdp_config={'version': 2}` in TrainingArguments; DDP and DeepSpeed ZeRO-2/3 work too."
    )
