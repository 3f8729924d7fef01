"""Where the time of one extraction step goes: forward/backward, the per-example `bmm` in the hooks, Adam,
projection, normalisation, device-to-host copy and the store write, each with its peak memory.

The hooks' share is isolated with public hooks only: `HooksWithoutAssembly` runs the collector's hooked pass minus its
`bmm`, and `AssemblyTimer` brackets the collector's own gradient hooks with two clock-reading hooks.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from benchmarks.common import log

from .harness import measure, synchronize
from .workload import slice_batch, unit_rows

if TYPE_CHECKING:
    import torch

    from rose_hf.features.gradients import LoraGradientCollector


def _hook_outputs(modules: list[Any], tensor_hook: Any, outputs: list[Any] | None = None) -> list[Any]:
    """Forward hooks on `modules` that register `tensor_hook` on each output that backward will reach."""
    import torch

    def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and output.requires_grad:
            output.register_hook(tensor_hook)
            if outputs is not None:
                outputs.append(output)

    return [module.register_forward_hook(hook) for module in modules]


class HooksWithoutAssembly:
    """The collector's hooked pass without its per-example `bmm`: a gradient hook on every LoRA output, and backward
    restricted to those outputs, as `LoraGradientCollector.backward` does (no parameter's `.grad` is written)."""

    def __init__(self, collector: LoraGradientCollector):
        self.modules = [p.module for p in collector.parameters]

    def forward_backward(self, model: Any, batch: dict[str, Any]) -> None:
        import torch

        from rose_hf.features.gradients import sft_per_example_loss

        outputs: list[torch.Tensor] = []
        handles = _hook_outputs(self.modules, lambda grad: None, outputs)
        try:
            loss, _ = sft_per_example_loss(model, batch)
            torch.autograd.backward(loss.sum(), inputs=outputs)
        finally:
            for handle in handles:
                handle.remove()
            for output in outputs:
                output.grad = None


class AssemblyTimer:
    """Sums, in `seconds`, the time `collector` spends in its gradient hooks (the per-example `bmm`).

    A tensor's hooks run in the order they were registered, and the collector registers its hook from a forward hook.
    So a forward hook registered before `collector.capture()` puts a hook just before the collector's on each LoRA
    output (it starts the clock), and one registered inside it puts a hook just after (it stops the clock). On CUDA
    each clock read is synchronised.
    """

    def __init__(self, collector: LoraGradientCollector, device: torch.device):
        self.collector = collector
        self.modules = [p.module for p in collector.parameters]
        self.device = device
        self.seconds = 0.0
        self._started = 0.0

    def _start(self, grad: Any) -> None:
        synchronize(self.device)
        self._started = time.perf_counter()

    def _stop(self, grad: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._started

    @contextlib.contextmanager
    def bracket(self) -> Iterator[LoraGradientCollector]:
        """`collector.capture()`, with the clock hooks around the collector's own."""
        handles = _hook_outputs(self.modules, self._start)
        try:
            with self.collector.capture() as collector:
                handles += _hook_outputs(self.modules, self._stop)
                yield collector
        finally:
            for handle in handles:
                handle.remove()


def measure_phases(model, featurizers, adam, batch, write, config, device) -> dict[str, Any]:
    """Split of one extraction step at the target batch size into its phases, each with its peak memory."""
    from rose_hf.features.gradients import LoraGradientCollector, sft_per_example_loss

    batch_size = config.target_batch_size
    part = slice_batch(batch, 0, batch_size)
    real = LoraGradientCollector(model)
    no_assembly, timer = HooksWithoutAssembly(real), AssemblyTimer(real, device)

    def forward_backward() -> None:
        no_assembly.forward_backward(model, part)

    def with_hooks(collector):
        with collector.capture():
            loss, _ = sft_per_example_loss(model, part)
            collector.backward(loss.sum())
            return collector.flat_gradients()

    phases: dict[str, Any] = {"batch_size": batch_size}
    phases["forward_backward"] = measure(forward_backward, config.repeats, device, min_seconds=config.min_seconds)
    phases["forward_backward_assembly"] = measure(
        lambda: with_hooks(real), config.repeats, device, min_seconds=config.min_seconds
    )

    # The bmm itself, timed inside the hooks (synchronised on CUDA), plus the flattening concatenation.
    assembly_times, flatten_times = [], []
    for repeat in range(config.repeats + 1):  # the first is a warm-up
        timer.seconds = 0.0
        with timer.bracket():
            loss, _ = sft_per_example_loss(model, part)
            real.backward(loss.sum())
            synchronize(device)
            start = time.perf_counter()
            grads = real.flat_gradients()
            synchronize(device)
            flatten_seconds = time.perf_counter() - start
        if repeat:
            flatten_times.append(flatten_seconds)
            assembly_times.append(timer.seconds)
    phases["assembly"] = {
        "seconds": statistics.median(assembly_times) + statistics.median(flatten_times),
        "bmm_seconds": statistics.median(assembly_times),
        "flatten_seconds": statistics.median(flatten_times),
        "by_difference_seconds": phases["forward_backward_assembly"]["seconds"]
        - phases["forward_backward"]["seconds"],
        # Memory of the per-example gradients themselves: (B, num_params) float32.
        "per_example_gradient_mb": grads.numel() * 4 / 2**20,
    }
    phases["adam"] = measure(lambda: adam.precondition(grads), config.repeats, device, min_seconds=config.min_seconds)
    preconditioned = adam.precondition(grads)
    phases["projection"], phases["normalise"], phases["to_host"], phases["write"] = {}, {}, {}, {}
    for kind, featurizer in featurizers.items():
        # Warmed up by the extraction runs already (same shapes, cached projection blocks).
        phases["projection"][kind] = measure(
            lambda f=featurizer: f.projector(preconditioned),
            config.repeats,
            device,
            warmup=1 if device.type == "cuda" else 0,
            min_seconds=config.min_seconds,
        )
        projected = featurizer.projector(preconditioned)
        phases["normalise"][kind] = measure(
            lambda p=projected: unit_rows(p), config.repeats, device, min_seconds=config.min_seconds
        )
        features = unit_rows(projected)
        phases["to_host"][kind] = measure(
            lambda f=features: f.cpu().numpy(), config.repeats, device, min_seconds=config.min_seconds
        )
        phases["write"][kind] = {"seconds": write[kind]["seconds_per_row"] * batch_size, **write[kind]}
        log(f"phases {kind:10s}: projection {phases['projection'][kind]['seconds']:.4f}s per batch of {batch_size}")

    def total(kind: str) -> float:
        return sum(phases[name]["seconds"] for name in ("forward_backward", "assembly", "adam")) + sum(
            phases[name][kind]["seconds"] for name in ("projection", "normalise", "to_host", "write")
        )

    shares = {}
    for kind in featurizers:
        whole = total(kind)
        shares[kind] = {
            "sum_of_phases_seconds": whole,
            "forward_backward": phases["forward_backward"]["seconds"] / whole,
            "assembly": phases["assembly"]["seconds"] / whole,
            "adam": phases["adam"]["seconds"] / whole,
            **{
                name: phases[name][kind]["seconds"] / whole for name in ("projection", "normalise", "to_host", "write")
            },
        }
    phases["shares"] = shares
    return phases
