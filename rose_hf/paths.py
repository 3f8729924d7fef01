"""Where rose_hf keeps what it builds once and reuses (float copies of GGUF models; in a source checkout, the tiny
fixture models): one root for everything."""

from __future__ import annotations

import os

CACHE_ENV = "ROSE_HF_CACHE"


def cache_root() -> str:
    """`$ROSE_HF_CACHE` when set, else `~/.cache/rose_hf` (read at each call, so a changed variable applies)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rose_hf")
