"""GGUF models (llama.cpp's format) as ordinary Hugging Face checkpoints: one loader for the CLI, `RoseTrainer` and
scripts.

transformers reads a GGUF file through `from_pretrained(folder, gguf_file=name)` and dequantizes it to a float model,
but that model keeps a `quantization_config` and `save_pretrained` refuses it ("quantized with gguf and is not
serializable"). The warmup's checkpoints, the final stage and every later run need a model they can reload, so the
first use writes a **float copy**: the same architecture built from the config without `quantization_config`, with
the dequantized weights, saved beside its tokenizer (chat template included). Later uses load that copy, which is
faster than dequantizing again (13-19 s for a 135M model on one CPU thread).

The copy is keyed on the GGUF file's content (size and SHA-256) and on the transformers version that dequantized it,
so a changed file never reuses a stale copy. It is written to a temporary folder and renamed, so an interrupted
conversion leaves nothing that looks finished.

Example:
```python
>>> from rose_hf.gguf import gguf_float_copy
>>> path = gguf_float_copy("models/smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
>>> model = AutoModelForCausalLM.from_pretrained(path)                                      # doctest: +SKIP
```
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time

from .logs import log
from .paths import CACHE_ENV, cache_root

GGUF_CACHE_ENV = CACHE_ENV
_RECORD = "rose_hf_gguf.json"
_HASH_BLOCK = 1 << 24


def default_cache_dir() -> str:
    """Where float copies go: `gguf/` under `rose_hf.paths.cache_root()` (`$ROSE_HF_CACHE`, else
    `~/.cache/rose_hf`)."""
    return os.path.join(cache_root(), "gguf")


def resolve_gguf_file(model_name_or_path: str, gguf_file: str) -> str:
    """The GGUF file's path: `gguf_file` itself when it is a path to a file, else `model_name_or_path/gguf_file`.

    Raises:
        FileNotFoundError: naming both fields and what was looked for (models are never downloaded here: pass a
            local folder).
    """
    candidates = [gguf_file] if os.path.isabs(gguf_file) else []
    candidates.append(os.path.join(model_name_or_path, gguf_file))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"gguf_file={gguf_file!r} was not found in model_name_or_path={model_name_or_path!r} (looked for "
        f"{candidates}). Pass the local folder that holds the .gguf file as model_name_or_path and the file's name as "
        "gguf_file (e.g. --model_name_or_path models/smollm2 --gguf_file SmolLM2-135M-Instruct.Q4_1.gguf)."
    )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "Loading a GGUF model needs the `gguf` package, which transformers uses to read the file: "
            "`pip install gguf` (or `pip install 'rose_hf[real]'`)."
        )


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def float_copy_path(model_name_or_path: str, gguf_file: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Where the float copy of a GGUF file lives, and what that place is keyed on (the file's name, size and SHA-256,
    and the transformers version that dequantizes it), without converting anything."""
    import transformers

    source = resolve_gguf_file(model_name_or_path, gguf_file)
    key = {
        "file": os.path.basename(source),
        "bytes": os.path.getsize(source),
        "sha256": _file_digest(source),
        "transformers": transformers.__version__,
    }
    stem = os.path.splitext(os.path.basename(source))[0]
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir or default_cache_dir(), f"{stem}-{tag}"), key


def gguf_float_copy(model_name_or_path: str, gguf_file: str, cache_dir: str | None = None) -> str:
    """A folder holding the float copy of a GGUF model and its tokenizer, written on first use and reused after.

    Args:
        model_name_or_path: the local folder that holds the GGUF file (or any folder when `gguf_file` is a path).
        gguf_file: the file's name inside that folder, or its path.
        cache_dir: where copies are kept (default `default_cache_dir()`).

    Returns:
        The folder, loadable by `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.

    Raises:
        ImportError: the `gguf` package is missing (with the install command).
        FileNotFoundError: the file is not there (naming both fields).
    """
    source = resolve_gguf_file(model_name_or_path, gguf_file)
    _require_gguf()
    path, key = float_copy_path(model_name_or_path, gguf_file, cache_dir)
    if os.path.isfile(os.path.join(path, _RECORD)):
        return path

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log(f"converting {source} to a float model in {path} (once; reused afterwards).")
    folder, name = os.path.dirname(source), os.path.basename(source)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = os.path.splitext(name)[0]
    model = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    model.load_state_dict(quantized.state_dict())  # strict: every tensor (tied embeddings included) is carried over
    model.generation_config = quantized.generation_config
    del quantized

    partial = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    with open(os.path.join(partial, _RECORD), "w") as handle:
        json.dump({**key, "source": os.path.abspath(source), "seconds": time.perf_counter() - start}, handle, indent=2)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, _RECORD)):
        shutil.rmtree(path)  # an unfinished copy of the same key: replace it
    try:
        os.replace(partial, path)
    except OSError:  # another process finished the same copy first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
        if not os.path.isfile(os.path.join(path, _RECORD)):
            raise
    log(f"float copy of {name} ready in {time.perf_counter() - start:.0f}s.")
    return path


__all__ = ["default_cache_dir", "float_copy_path", "gguf_float_copy", "resolve_gguf_file"]
