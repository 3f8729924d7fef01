"""Exact per-example gradients of LoRA weights from ONE batched forward + backward.

A LoRA layer adds `B(A(x)) * scaling` to a frozen linear layer; `A` and `B` are plain `nn.Linear` modules without bias.
For a linear map `y = x W^T`, the gradient of a loss that is a SUM of per-example terms is
`dL/dW = sum_b sum_t grad_y[b, t] (x) x[b, t]`, so the gradient of example `b`'s own term alone is the inner sum over
its tokens. A forward hook on each `A`/`B` module keeps its input and puts a tensor hook on its output; the tensor hook
receives `grad_y` during backward and forms the per-example outer-product sums with one `bmm`.

This is exact under SDPA/flash/eager attention, gradient checkpointing (reentrant or not: hooks fire on whichever
forward builds the graph that backward walks), DeepSpeed ZeRO-3 and FSDP2 (activations and output gradients are never
sharded), and on a 4-bit (QLoRA) base, whose LoRA `A`/`B` stay float `nn.Linear`s; `torch.func.vmap` approaches are
not. Padding needs no special care: right-padded positions carry no loss and, under a causal mask, influence no other
position, so their output gradients are exactly zero.

Example:
```python
>>> collector = LoraGradientCollector(peft_model)
>>> with collector.capture():
...     per_example_loss, _ = sft_per_example_loss(peft_model, batch)
...     collector.backward(per_example_loss.sum())
>>> grads = collector.flat_gradients()  # (batch, num_lora_params), float32
```
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..data import IGNORE_INDEX
from ..errors import UnsupportedAdapterError
from ..sharding import zero3_partitioned


@dataclass(frozen=True)
class LoraParameter:
    """One LoRA weight matrix whose per-example gradient is collected.

    Args:
        name: the parameter's name in `model.named_parameters()` (the key for optimizer state and metadata).
        module: the `nn.Linear` (`lora_A[adapter]` or `lora_B[adapter]`) that owns it.
        shape: `(out_features, in_features)`; read from the module so it is right under ZeRO-3 sharding too.
    """

    name: str
    module: nn.Linear
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def _is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear`, or one that FSDP2's `fully_shard` re-classed as `FSDPLinear(FSDPModule, nn.Linear)`."""
    if type(module) is nn.Linear:
        return True
    bases = type(module).__bases__
    return len(bases) == 2 and bases[1] is nn.Linear and bases[0].__name__ == "FSDPModule"


def find_lora_parameters(model: nn.Module, adapter_name: str | None = None) -> list[LoraParameter]:
    """The trainable LoRA `A`/`B` weights of `model`, in `named_parameters()` order.

    Raises:
        ValueError: when the model has no LoRA adapter, or an adapter kind whose per-example gradient is not an
            outer-product sum (DoRA, LoRA on embeddings or convolutions).
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as error:  # pragma: no cover - peft is a dependency
        raise ImportError("rose_hf needs `peft` for LoRA models: `pip install peft`.") from error

    linears: dict[int, tuple[nn.Linear, str]] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = [adapter_name] if adapter_name else list(module.active_adapters)
        for adapter in adapters:
            if adapter in getattr(module, "lora_embedding_A", {}):
                raise UnsupportedAdapterError(
                    f"LoRA on the embedding layer `{module_name}` is not supported for gradient features: remove it "
                    "from `target_modules` of your LoraConfig."
                )
            if adapter not in module.lora_A:
                continue
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise UnsupportedAdapterError(
                    f"`{module_name}` uses DoRA (`use_dora=True`), whose per-example gradients are not outer-product "
                    "sums: set `use_dora=False` in your LoraConfig."
                )
            for part in (module.lora_A[adapter], module.lora_B[adapter]):
                if not _is_plain_linear(part) or part.bias is not None:
                    raise UnsupportedAdapterError(
                        f"`{module_name}` has a LoRA part of type {type(part).__name__} (bias={part.bias is not None}); "
                        "only bias-free `nn.Linear` LoRA parts are supported: set `lora_bias=False` and target "
                        "linear layers only in your LoraConfig."
                    )
                linears[id(part.weight)] = (part, module_name)

    params = []
    for name, param in model.named_parameters():
        if id(param) in linears and param.requires_grad:
            module, _ = linears[id(param)]
            params.append(LoraParameter(name, module, (module.out_features, module.in_features)))
    if not params:
        raise UnsupportedAdapterError(
            "The model has no trainable LoRA adapter, so there are no LoRA gradients to featurize: wrap it with "
            "`peft.get_peft_model(model, LoraConfig(...))` or pass `peft_config=` to the trainer."
        )
    return params


class LoraGradientCollector:
    """Collects per-example gradients of every LoRA weight during one batched backward pass.

    Args:
        model: a PEFT LoRA model (or any model containing `LoraLayer`s).
        adapter_name: the adapter to featurize; defaults to the active one(s).
    """

    def __init__(self, model: nn.Module, adapter_name: str | None = None):
        self.model = model
        self.parameters = find_lora_parameters(model, adapter_name)
        self.num_params = sum(p.numel for p in self.parameters)
        self._grads: dict[str, torch.Tensor] = {}
        self._outputs: list[torch.Tensor] = []
        self._active = False

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @contextlib.contextmanager
    def capture(self) -> Iterator[LoraGradientCollector]:
        """Within this context, `self.backward(loss)` accumulates per-example gradients (cleared on entry)."""
        self._grads, self._outputs = {}, []
        handles = [p.module.register_forward_hook(self._forward_hook(p.name)) for p in self.parameters]
        self._active = True
        try:
            yield self
        finally:
            self._active = False
            self._outputs = []
            for handle in handles:
                handle.remove()

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (a SUM of per-example losses) to the LoRA outputs only.

        Restricting backward to the LoRA outputs leaves every parameter's `.grad` untouched, so the training run's
        state is unchanged and no DDP/DeepSpeed gradient-reduction hook fires.
        """
        if not self._outputs:
            raise RuntimeError("No LoRA layer ran with autograd inside `capture()`: is the adapter enabled?")
        torch.autograd.backward(loss, inputs=self._outputs)
        for output in self._outputs:
            output.grad = None

    def _forward_hook(self, name: str):
        def hook(module: nn.Linear, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            # A forward without autograd (a no_grad reference pass) builds no graph backward will walk: skip it.
            if not (self._active and torch.is_grad_enabled() and output.requires_grad):
                return
            inputs = args[0].detach()

            def grad_hook(grad_output: torch.Tensor) -> None:
                self._accumulate(name, inputs, grad_output)

            output.register_hook(grad_hook)
            self._outputs.append(output)

        return hook

    def _accumulate(self, name: str, inputs: torch.Tensor, grad_output: torch.Tensor) -> None:
        # (B, T, out)^T @ (B, T, in) -> (B, out, in): the per-example sum over tokens of outer products.
        if inputs.dim() == 2:  # a linear called on (B, in) without a sequence axis
            inputs, grad_output = inputs.unsqueeze(1), grad_output.unsqueeze(1)
        inputs = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
        grad_output = grad_output.reshape(grad_output.shape[0], -1, grad_output.shape[-1])
        per_example = torch.bmm(grad_output.transpose(1, 2), inputs.to(grad_output.dtype)).float()
        if name in self._grads:  # a module called twice in one forward (weight tying, loops)
            self._grads[name] += per_example
        else:
            self._grads[name] = per_example

    def gradients(self) -> dict[str, torch.Tensor]:
        """Per-example gradients by parameter name, each `(batch, out, in)` float32."""
        missing = [p.name for p in self.parameters if p.name not in self._grads]
        if missing:
            raise RuntimeError(
                f"No gradient reached {len(missing)} LoRA weight(s) (e.g. `{missing[0]}`): run the forward AND the "
                "backward inside `collector.capture()`, with the adapter enabled."
            )
        return self._grads

    def flat_gradients(self) -> torch.Tensor:
        """Per-example gradients flattened and concatenated in parameter order: `(batch, num_params)` float32."""
        grads = self.gradients()
        return torch.cat([grads[p.name].flatten(1) for p in self.parameters], dim=1)


# A vocabulary-sized float32 row per token dominates memory for large vocabularies: Gemma-3's 262k makes 16 rows of 256
# tokens 4.3 GB per copy, and a plain cross-entropy keeps three (logits, their log-softmax, their gradient). Log-probs
# are therefore computed from the last hidden states, at most this many logit entries at a time (128 MB in float32),
# each chunk recomputed in backward instead of kept.
LOGIT_CHUNK_ELEMENTS = 1 << 25

# Causal LMs (by `config.model_type`) whose forward computes `logits = lm_head(last_hidden_state)` followed at most by
# a tanh soft-cap at `config.final_logit_softcapping` (read from transformers 5.x). Others (Cohere's `logit_scale`,
# Granite's `logits_scaling`, GPT-2's ...) keep the plain path, which asks the model for its logits.
CHUNKED_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo2", "phi3"}
)


def _chunked_head(model: nn.Module) -> nn.Module | None:
    """The output embedding when log-probs can be computed from hidden states in chunks, else `None`."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in CHUNKED_HEAD_MODEL_TYPES:
        return None
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    # A LoRA on the head itself would see chunks of tokens instead of the batch's rows: its per-example gradient
    # needs the whole (B, T, V) call. Under ZeRO-3 the head's weight is released after the model's forward, and the
    # chunks' recomputation in backward would meet an empty partition.
    if head is None or any(hasattr(module, "lora_A") for module in head.modules()):
        return None
    if any(zero3_partitioned(param) for param in head.parameters()):
        return None
    return head


def _head_log_probs(head: nn.Module, softcap: float | None, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)
    if softcap is not None:  # in the model's dtype, as its forward does
        logits = torch.tanh(logits / softcap) * softcap
    # The plain path's own kernel: a gather minus a logsumexp rounds differently in float32, and a token's gradient
    # (softmax - one-hot) cancels enough on Gemma-3 to show it at 5e-5.
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def token_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """Each next token's log-probability where `mask` is set, without the whole batch's logits.

    Args:
        model: a causal LM (a PEFT model included).
        input_ids, attention_mask: `(B, T)`, right-padded.
        targets: `(B, T - 1)` token ids, the token position `t` predicts (usually `input_ids[:, 1:]`).
        mask: `(B, T - 1)` bool, which positions are wanted.
        chunk_elements: logit entries per chunk (default `LOGIT_CHUNK_ELEMENTS`); `0` asks the model for its full
            `(B, T, V)` logits instead (the plain path, which models outside `CHUNKED_HEAD_MODEL_TYPES` always take).

    Returns:
        `(B, T - 1)` float32 log-probs, 0 where `mask` is not set. The gradient is the plain path's: the chunks only
        change which logits exist at one time.
    """
    head = _chunked_head(model) if chunk_elements != 0 else None
    if head is None:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = outputs.logits[:, :-1].float()
        token_logps = -F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view_as(targets)
        return token_logps * mask

    captured = []

    def keep_hidden(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # The model's forward still runs (DeepSpeed's and FSDP's hooks with it); its head sees no position.
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    hidden = captured[0][:, :-1]
    rows, positions = mask.nonzero(as_tuple=True)
    hidden, wanted = hidden[rows, positions], targets[rows, positions]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    vocab = head.weight.shape[0] if getattr(head, "weight", None) is not None else model.config.vocab_size
    step = max(1, (chunk_elements or LOGIT_CHUNK_ELEMENTS) // max(vocab, 1))
    parts = []
    for start in range(0, len(wanted), step):
        args = (head, softcap, hidden[start : start + step], wanted[start : start + step])
        if torch.is_grad_enabled() and hidden.requires_grad:
            parts.append(torch.utils.checkpoint.checkpoint(_head_log_probs, *args, use_reentrant=False))
        else:
            parts.append(_head_log_probs(*args))
    # No wanted position at all: an empty sum that still hangs off the graph, so that backward runs (to zeros).
    values = torch.cat(parts) if parts else hidden.sum(dim=-1).float()
    token_logps = torch.zeros(targets.shape, dtype=torch.float32, device=values.device)
    return token_logps.index_put((rows, positions), values)


def sft_per_example_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's mean next-token cross-entropy over its own completion tokens.

    Summing these and calling backward gives, per example, exactly the gradient of running that example alone
    (which a token-averaged batch loss would not: it weights examples by their length).

    Args:
        model: a causal LM.
        batch: `input_ids`, `attention_mask` and `labels` (`-100` on prompt and padding), right-padded.
        chunk_elements: as in `token_log_probs`.

    Returns:
        `(loss, num_tokens)`: per-example loss `(B,)` float32 (0 where there is no completion token) and the number
        of completion tokens `(B,)`.
    """
    labels = batch["labels"][:, 1:].to(batch["input_ids"].device)
    mask = labels != IGNORE_INDEX
    token_logps = token_log_probs(
        model, batch["input_ids"], batch["attention_mask"], labels.clamp(min=0), mask, chunk_elements
    )
    num_tokens = mask.sum(dim=1)
    loss = -token_logps.sum(dim=1) / num_tokens.clamp(min=1)
    return loss, num_tokens


def sequence_log_probs(
    model: nn.Module, batch: dict[str, torch.Tensor], chunk_elements: int | None = None
) -> torch.Tensor:
    """Sum of the completion tokens' log-probabilities per sequence (TRL's DPO `logps`, no length averaging).

    Args:
        batch: `input_ids`, `attention_mask` and `completion_mask`, as TRL's `DataCollatorForPreference` builds them.
        chunk_elements: as in `token_log_probs`.
    """
    mask = batch["completion_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
    input_ids = batch["input_ids"]
    return token_log_probs(model, input_ids, batch["attention_mask"], input_ids[:, 1:], mask, chunk_elements).sum(dim=1)


@contextlib.contextmanager
def feature_mode(model: nn.Module) -> Iterator[None]:
    """Deterministic forward passes (dropout off) that keep gradient checkpointing where it was on.

    `model.eval()` turns dropout off, but transformers only checkpoints layers in training mode; re-marking just the
    checkpointed layers as training (not their children, which own the dropout) keeps the memory savings and stays
    deterministic. Checkpointing is switched to the non-reentrant implementation meanwhile, because the reentrant one
    re-runs backward into every parameter's `.grad`. Every module's mode and checkpoint function are restored on exit.
    """
    modes = {module: module.training for module in model.modules()}
    functions = {}
    model.eval()
    try:
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) is True and hasattr(
                module, "_gradient_checkpointing_func"
            ):
                module.training = True
                functions[module] = module._gradient_checkpointing_func
                module._gradient_checkpointing_func = functools.partial(
                    torch.utils.checkpoint.checkpoint, use_reentrant=False
                )
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for module, function in functions.items():
            module._gradient_checkpointing_func = function
