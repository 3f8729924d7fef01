"""Fingerprints of what cached features depend on, so that a cache can never serve features of another run.

A checkpoint's features are a function of three things, and the cache is keyed on exactly those:
- the adapter weights at that step (every trainable parameter, hashed in full);
- the optimizer state at that step (the Adam moments of the LoRA weights and Adam's betas/eps, hashed in full);
- the base model (its config, and a fixed strided sample of every frozen tensor with its name, shape and dtype).
`state_fingerprint` returns them as a dict, so a mismatch can say which part changed. Hashes are of the bytes of the
tensors, so they are the same in every process, on every device and under DDP, ZeRO-2 and ZeRO-3 (whose partitioned
parameters are gathered, one at a time, by every process together).

The data is keyed on its CONTENT (`dataset_fingerprint`), not on `datasets`' own `_fingerprint` (which records how
a dataset was built, so the same rows re-read from JSONL or rebuilt with `from_list` get another one). The hash
streams the Arrow buffers of the used columns in batches, independent of chunking, string widths and struct field
order: about 1 s per million short rows.

`warmup_arguments` picks the training arguments of the warmup that shape its trajectory, for `run.json`: they are
not the key (the state fingerprint is), but they tell a user what changed when a checkpoint is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..sharding import full_tensor, zero3_partitioned

# Elements sampled from each frozen base tensor: enough that two different trainings or checkpoints of a base never
# agree on all of them, few enough that an 8B model is sampled in well under a second.
BASE_SAMPLE = 1024
# Config entries that say nothing about what the weights compute in a training forward pass: where they came from,
# which library wrote them, and the runtime switches and special-token ids trainers set (`Trainer` turns `use_cache`
# off, TRL aligns the token ids with the tokenizer), which would otherwise make the same base look different.
RUNTIME_CONFIG_KEYS = (
    "_name_or_path", "transformers_version", "_commit_hash", "use_cache", "output_attentions", "output_hidden_states",
    "return_dict", "pad_token_id", "bos_token_id", "eos_token_id",
)
# Per-row columns besides the format's own that change the tokenisation (TRL's chat template arguments).
TOKENIZATION_COLUMNS = ("tools", "chat_template_kwargs")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "subtask")

# The warmup's training arguments that change its trajectory (and so the features); `TrainingArguments` and TRL's
# `SFTConfig` field names. Missing ones are skipped.
WARMUP_ARGUMENTS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "optim", "optim_args",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed", "bf16", "fp16",
    "save_strategy", "save_steps", "max_length", "packing", "completion_only_loss", "assistant_only_loss",
)


def _sha256() -> Any:
    return hashlib.sha256()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bfloat16 included), read on the CPU."""
    flat = tensor.detach().reshape(-1).contiguous()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return memoryview(flat.view(torch.uint8).numpy())


def _update(hasher, name: str, tensor: torch.Tensor) -> None:
    hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    hasher.update(_tensor_bytes(tensor))


class _gathered:
    """Full values of a ZeRO-3 parameter inside the block (collective: every process must enter it); else a no-op."""

    def __init__(self, params: list[torch.Tensor]):
        # Only parameters not available already: DeepSpeed's exit partitions every parameter it was given, which fails
        # for one still marked active by a module of a feature pass (a second RoseDataSelector's fingerprint right
        # after the first one's features); an available parameter holds its full values, the same on every process.
        self.params = [p for p in params if zero3_partitioned(p) and p.ds_status.name != "AVAILABLE"]
        self.context = None

    def __enter__(self):
        if self.params:
            import deepspeed

            self.context = deepspeed.zero.GatheredParameters(self.params, modifier_rank=None)
            self.context.__enter__()
        return self

    def __exit__(self, *exc):
        if self.context is not None:
            return self.context.__exit__(*exc)
        return False


def _shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", None) or param.shape)


def _config_dict(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    values = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    for key in RUNTIME_CONFIG_KEYS:
        values.pop(key, None)
    return values


def json_hash(payload: Any) -> str:
    """A stable hash of a JSON-able payload (sets sorted, keys sorted)."""

    def normalise(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            return sorted(str(v) for v in value)
        if isinstance(value, dict):
            return {str(k): normalise(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [normalise(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(normalise(payload), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_name(name: str) -> str:
    """`base_model.model.model.layers.0.q_proj.base_layer.weight` -> `model.layers.0.q_proj.weight`."""
    for wrapper in (".base_layer", ".original_module"):
        name = name.replace(wrapper, "")
    return name.removeprefix("base_model.model.")


def base_model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Identity of the base model under an adapter: its name (if any), its config and a sampled hash of its weights.

    The weights part hashes, for every frozen parameter in name order, its name, shape and dtype and `BASE_SAMPLE`
    elements at a fixed stride, so a model built from config, a fine-tuned checkpoint of the same architecture or a
    model loaded in another dtype all get their own fingerprint. Sampled: two bases differing only in a few elements
    of a tensor can collide (that is the price of hashing an 8B model in under a second). Collective under ZeRO-3.

    Returns:
        `{"name_or_path", "config_hash", "weights_hash"}`; `name_or_path` is `None` for a model built from config.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", None) or None
    hasher = _sha256()
    # Under a PEFT adapter the base is what is frozen; a plain model is all base. Names as in the unwrapped model, so
    # the same base gets the same fingerprint with or without an adapter around it.
    adapted = hasattr(model, "peft_config")
    frozen = sorted(
        ((_base_name(n), p) for n, p in model.named_parameters() if not (adapted and p.requires_grad)),
        key=lambda item: item[0],
    )
    for param_name, param in frozen:
        hasher.update(f"{param_name}|{_shape(param)}|{param.dtype}|".encode())
        with _gathered([param]):
            if param.device.type == "meta":  # offloaded without values here: its shape and dtype are all we have
                continue
            flat = full_tensor(param.detach()).reshape(-1)  # an FSDP2 shard is gathered (collective)
            stride = max(1, flat.numel() // BASE_SAMPLE)
            hasher.update(_tensor_bytes(flat[::stride][:BASE_SAMPLE]))  # read before ZeRO-3 frees the gathered copy
    weights = hasher.hexdigest()[:16]
    return {"name_or_path": name, "config_hash": json_hash(_config_dict(base)), "weights_hash": weights}


def adapter_fingerprint(model: nn.Module) -> str:
    """Hash of every trainable parameter's full values (the LoRA weights, and `modules_to_save` if any).

    Collective under ZeRO-3 (each partitioned parameter is gathered).
    """
    hasher = _sha256()
    trainable = sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda item: item[0])
    for name, param in trainable:
        with _gathered([param]):
            _update(hasher, name, full_tensor(param.detach()))
    return hasher.hexdigest()[:16]


def optimizer_fingerprint(adam) -> str | None:
    """Hash of the Adam moments and hyperparameters the features are preconditioned with (`None` without Adam)."""
    if adam is None:
        return None
    hasher = _sha256()
    hasher.update(f"{adam.beta1!r}|{adam.beta2!r}|{adam.eps!r}|".encode())
    _update(hasher, "exp_avg", adam.exp_avg)
    _update(hasher, "exp_avg_sq", adam.exp_avg_sq)
    return hasher.hexdigest()[:16]


def state_fingerprint(model: nn.Module, adam, base: dict[str, Any]) -> dict[str, Any]:
    """The key of one checkpoint's features: `{"adapter", "optimizer", "base"}` (see the module docstring).

    Args:
        model: the PEFT model at the checkpoint (not a DDP/DeepSpeed wrapper).
        adam: the `AdamState` the pool features are preconditioned with, or `None` (`preconditioner="sgd"`).
        base: `base_model_fingerprint(model)`, computed once per run (its `name_or_path` is left out: where the
            weights were loaded from says nothing about them).
    """
    base_key = {key: base[key] for key in ("config_hash", "weights_hash")}
    return {"adapter": adapter_fingerprint(model), "optimizer": optimizer_fingerprint(adam), "base": base_key}


FINGERPRINT_PARTS = {"adapter": "adapter weights", "optimizer": "optimizer state (Adam moments)",
                     "base": "base model weights"}  # fmt: skip


def describe_change(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """Which parts of a checkpoint's fingerprint differ, in words (for the warning when features are recomputed)."""
    if not recorded:
        return "no fingerprint was recorded (a cache written by an older rose_hf, or interrupted before it began)"
    changed = [words for key, words in FINGERPRINT_PARTS.items() if recorded.get(key) != current.get(key)]
    return "the " + ", ".join(changed) + " differ" if changed else "nothing"


# --- data ----------------------------------------------------------------------------------------------------------
def warmup_arguments(args: Any) -> dict[str, Any]:
    """The training arguments of the warmup that shape its trajectory, JSON-able (for `run.json` and the report)."""
    num_processes = int(getattr(args, "world_size", 1) or 1)
    picked = {}
    for name in WARMUP_ARGUMENTS:
        if hasattr(args, name):
            value = getattr(args, name)
            picked[name] = getattr(value, "value", value)  # enums (scheduler, optimizer, strategy) as their names
    picked["num_processes"] = num_processes
    batch = getattr(args, "per_device_train_batch_size", None)
    accumulation = getattr(args, "gradient_accumulation_steps", None)
    if batch is not None and accumulation is not None:
        picked["examples_per_step"] = batch * accumulation * num_processes
    return json.loads(json.dumps(picked, default=str))


class _ContentHasher:
    """Streams Arrow arrays into one hasher per (column path, part), so the digest does not depend on chunking."""

    def __init__(self):
        self.parts: dict[str, Any] = {}
        self.rows = 0

    def _part(self, key: str):
        if key not in self.parts:
            self.parts[key] = _sha256()
        return self.parts[key]

    def add(self, path: str, array) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = array.type
        if pa.types.is_dictionary(kind):
            array, kind = array.dictionary_decode(), array.type.value_type
        if pa.types.is_null(kind):
            return  # no content: an all-null column hashes as an absent one
        valid = np.asarray(array.is_valid(), dtype=np.uint8)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
                or pa.types.is_large_binary(kind):  # fmt: skip
            tag = "str" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else "bytes"
            wide = pa.large_string() if tag == "str" else pa.large_binary()
            array = pc.fill_null(array.cast(wide), "" if tag == "str" else b"")
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
            self._part(f"{path}:{tag}:valid").update(valid)
            self._part(f"{path}:{tag}:lengths").update(np.diff(offsets))
            data = array.buffers()[2]
            if data is not None and offsets[-1] > offsets[0]:
                self._part(f"{path}:{tag}:data").update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            self._part(f"{path}:list:valid").update(valid)
            lengths = pc.fill_null(pc.list_value_length(array), 0)
            self._part(f"{path}:list:lengths").update(np.asarray(lengths, dtype=np.int64))
            self.add(f"{path}[]", array.flatten())
        elif pa.types.is_struct(kind):
            self._part(f"{path}:struct:valid").update(valid)
            children = array.flatten()  # offset and parent validity applied
            for index in sorted(range(kind.num_fields), key=lambda i: kind.field(i).name):
                child = children[index]
                if child.null_count < len(child):  # an all-null field hashes as an absent one
                    self.add(f"{path}.{kind.field(index).name}", child)
        elif pa.types.is_boolean(kind):
            self._part(f"{path}:bool").update(valid)
            self._part(f"{path}:bool:values").update(np.asarray(pc.fill_null(array, False), dtype=np.uint8))
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            # Numbers by value: an int64 column and a float64 one holding the same numbers (JSON readers differ).
            self._part(f"{path}:number:valid").update(valid)
            numbers = np.asarray(pc.fill_null(array.cast(pa.float64()), 0.0), dtype=np.float64)
            self._part(f"{path}:number:values").update(numbers)
        else:  # timestamps and the like: by their text
            self.add(path, array.cast(pa.large_string()))

    def hexdigest(self, header: str) -> str:
        final = _sha256()
        final.update(f"{header}|{self.rows}|".encode())
        for key in sorted(self.parts):
            final.update(f"{key}={self.parts[key].hexdigest()};".encode())
        return final.hexdigest()[:16]


def dataset_fingerprint(dataset, columns: Iterable[str], batch_size: int = 65_536) -> str:
    """Hash of the CONTENT of `columns` of `dataset`, in row order.

    The same rows give the same fingerprint however they were loaded: a re-read JSON/JSONL/Parquet file, a
    `to_list`/`from_list` round trip, `save_to_disk`/`load_from_disk`, a `select` with or without flattened indices.
    Columns that `dataset` lacks are skipped; missing struct fields and all-null fields count as absent.

    Args:
        dataset: a `datasets.Dataset`.
        columns: the columns the features depend on (e.g. `prompt`, `completion`).
    """
    used = [column for column in columns if column in dataset.column_names]
    hasher = _ContentHasher()
    arrow = dataset.select_columns(used).with_format("arrow") if used else None
    if arrow is not None:
        for batch in arrow.iter(batch_size=batch_size):
            for column in used:
                # One array per batch: rows gathered through an indices mapping come as one chunk per row.
                hasher.add(column, batch.column(column).combine_chunks())
    hasher.rows = len(dataset)
    return hasher.hexdigest(",".join(used))


def pool_fingerprint(pool) -> str:
    """Content fingerprint of an instruction pool: the columns of its TRL format and the chat template arguments."""
    from ..data import SFT_FORMATS, sft_format

    return dataset_fingerprint(pool, SFT_FORMATS[sft_format(pool)] + TOKENIZATION_COLUMNS)


def preference_fingerprint(pairs) -> str:
    """Content fingerprint of preference pairs: prompt, chosen, rejected, subtask and the chat template arguments."""
    return dataset_fingerprint(pairs, PREFERENCE_COLUMNS + TOKENIZATION_COLUMNS)


def describe_argument_changes(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> str:
    """`"learning_rate 0.002 -> 0.005, seed 0 -> 1"`: the recorded warmup arguments that differ now ("" if none)."""
    if not recorded or not current:
        return ""
    keys = sorted(set(recorded) | set(current))
    changed = [k for k in keys if recorded.get(k) != current.get(k)]
    return ", ".join(f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed)
