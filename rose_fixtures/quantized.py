"""4-bit (QLoRA) versions of a saved tiny model, and the float model that computes exactly what a 4-bit one does.

bitsandbytes >= 0.50 runs 4-bit linears on a CPU (it dequantizes each weight and multiplies in the compute dtype),
which is what the QLoRA tests and benchmark use. Comparing the 4-bit model with `dequantized_copy` separates what
rose_hf does on a quantized base (hooks, Adam state, adapter toggling) from what quantization does to the weights.

Example:
```python
>>> model.save_pretrained(path)
>>> quantized = load_in_4bit(path)             # nf4 base, float32 compute
>>> reference = dequantized_copy(quantized, path)  # float32 nn.Linear weights = bitsandbytes' own dequantization
```
"""

from __future__ import annotations

import torch
from torch import nn


def load_in_4bit(path: str, compute_dtype: torch.dtype = torch.float32, quant_type: str = "nf4") -> nn.Module:
    """The causal LM saved at `path` with every linear layer (but the output head) quantized to 4 bits."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type=quant_type
    )
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=compute_dtype)


def dequantized_copy(quantized: nn.Module, path: str) -> nn.Module:
    """A float32 copy of the model at `path` whose linear weights are `quantized`'s 4-bit weights, dequantized by
    `bitsandbytes.functional.dequantize_4bit` (pass `quantized` before a LoRA adapter wraps it)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    modules = dict(model.named_modules())
    count = 0
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            with torch.no_grad():
                modules[name].weight.copy_(weight.float())
            count += 1
    if count == 0:
        raise ValueError("`quantized` has no bitsandbytes 4-bit linear layer: load it with `load_in_4bit(path)`.")
    return model
