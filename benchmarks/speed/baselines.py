"""The other ways to get per-example gradient features, measured against rose_hf's hooks: LESS's loop (batch size 1,
`loss.backward()`, flatten `.grad`, Adam, dense projection) and `torch.func` (`functional_call` + `vmap(grad)`)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import log

from .harness import PeakMemory, measure, per_batch, synchronize
from .workload import build_lora_model, slice_batch


def less_style_feature(model, lora_params, projector, adam, moments, batch, index: int):
    """One example's feature the LESS way: alone (its right padding cut off), `loss.backward()`, the LoRA `.grad`
    flattened, Adam written out, projection, L2 normalisation.

    Args:
        lora_params: the LoRA weights in the collector's order (the features' order).
        moments: Adam's `(exp_avg, exp_avg_sq)` already on the model's device.
        batch: right-padded `input_ids`, `attention_mask`, `labels`; row `index` is featurised.
    """
    import torch

    for param in lora_params:
        param.grad = None
    length = int(batch["attention_mask"][index].sum())
    out = model(
        input_ids=batch["input_ids"][index : index + 1, :length],
        attention_mask=batch["attention_mask"][index : index + 1, :length],
        labels=batch["labels"][index : index + 1, :length],
        use_cache=False,
    )
    out.loss.backward()  # the example's mean loss over its completion tokens
    g = torch.cat([param.grad.reshape(-1) for param in lora_params]).float()
    m, v = moments
    m_new = adam.beta1 * m + (1 - adam.beta1) * g
    v_new = adam.beta2 * v + (1 - adam.beta2) * g * g
    preconditioned = m_new / torch.sqrt(v_new + adam.eps)
    projected = projector(preconditioned[None])[0]
    return (projected / projected.norm()).cpu()


def measure_less_reference(model, collector, projector, adam, batch, write_per_row, config, device, ours) -> dict:
    """LESS's loop, written out: one example at a time, `.grad` of the LoRA weights, Adam, dense projection."""
    import numpy as np
    import torch

    named = dict(model.named_parameters())
    lora_params = [named[name] for name in collector.names]  # the collector's order = the features' order
    moments = adam.exp_avg.to(device), adam.exp_avg_sq.to(device)

    def one(index: int) -> torch.Tensor:
        return less_style_feature(model, lora_params, projector, adam, moments, batch, index)

    one(0)  # warm-up
    times, features = [], []
    with PeakMemory(device) as peak:
        for index in range(config.reference_examples):
            synchronize(device)
            start = time.perf_counter()
            features.append(one(index))
            synchronize(device)
            times.append(time.perf_counter() - start)
    for param in lora_params:
        param.grad = None
    reference = torch.stack(features).numpy()
    difference = float(np.abs(reference - ours[: len(reference)]).max())
    seconds = statistics.median(times) + write_per_row
    log(f"LESS-style reference (batch 1): {1 / seconds:.2f} examples/s")
    return {
        "batch_size": 1,
        "examples": config.reference_examples,
        "featurize_seconds_per_example": statistics.median(times),
        "write_seconds_per_example": write_per_row,
        "seconds_per_example": seconds,
        "examples_per_s": 1.0 / seconds,
        "tokens_per_s": config.seq_len / seconds,
        "seconds_all": [round(t, 6) for t in times],
        "max_abs_feature_difference_vs_rose_hf": difference,
        **peak.as_dict(),
    }


def measure_vmap(config, tokenizer, model, dtype, device, batch) -> dict[str, Any]:
    """`torch.func` per-example gradients under eager attention and SDPA, compared with the hooks."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from rose_hf.data import IGNORE_INDEX
    from rose_hf.features.gradients import LoraGradientCollector, feature_mode, sft_per_example_loss

    batch_size = config.target_batch_size
    part = slice_batch(batch, 0, batch_size)
    eager = build_lora_model(config, tokenizer, device, dtype, "eager")
    eager.load_state_dict(model.state_dict())
    results: dict[str, Any] = {"batch_size": batch_size}
    for attn, net in (("eager", eager), ("sdpa", model)):
        collector = LoraGradientCollector(net)
        names = collector.names
        params = {name: param.detach() for name, param in net.named_parameters() if name in set(names)}
        buffers = dict(net.named_buffers())

        def example_loss(params, input_ids, attention_mask, labels, net=net, buffers=buffers):
            out = functional_call(
                net,
                (params, buffers),
                args=(),
                kwargs={"input_ids": input_ids[None], "attention_mask": attention_mask[None], "use_cache": False},
                strict=False,
            )
            logits, targets = out.logits[0, :-1].float(), labels[1:]
            mask = targets != IGNORE_INDEX
            token_loss = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
            return (token_loss * mask).sum() / mask.sum().clamp(min=1)

        per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))

        def run_vmap(params=params, per_example_grad=per_example_grad, names=names):
            grads = per_example_grad(params, part["input_ids"], part["attention_mask"], part["labels"])
            return torch.cat([grads[name].reshape(batch_size, -1) for name in names], dim=1).float()

        def run_hooks(collector=collector, net=net):
            with collector.capture():
                loss, _ = sft_per_example_loss(net, part)
                collector.backward(loss.sum())
                return collector.flat_gradients()

        with feature_mode(net):
            entry: dict[str, Any] = {
                "hooks": per_batch(
                    measure(run_hooks, config.repeats, device, min_seconds=config.min_seconds),
                    batch_size,
                    config.seq_len,
                )
            }
            try:
                timing = measure(run_vmap, config.repeats, device, min_seconds=config.min_seconds)
            except Exception as error:  # noqa: BLE001 - the failure itself is the measurement
                entry.update(status="failed", error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
                log(f"vmap ({attn}): failed ({entry['error'][:80]}...)")
            else:
                reference, ours = run_vmap().float(), run_hooks().float()
                relative = float((reference - ours).norm() / reference.norm().clamp(min=1e-30))
                entry.update(
                    status="ok",
                    relative_difference_vs_hooks=relative,
                    **per_batch(timing, batch_size, config.seq_len),
                )
                entry["seconds_vs_hooks"] = entry["seconds_per_batch"] / entry["hooks"]["seconds_per_batch"]
                log(
                    f"vmap ({attn}): {entry['examples_per_s']:.2f} examples/s, "
                    f"hooks {entry['hooks']['examples_per_s']:.2f}"
                )
        results[attn] = entry
    del eager
    return results
