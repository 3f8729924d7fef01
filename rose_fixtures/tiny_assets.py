"""The tiny recipe's inputs as files: the tiny pretrained base model, the synthetic pool and its preference pairs.

    python -m rose_fixtures.tiny_assets --output_dir outputs/tiny_assets
    OMP_NUM_THREADS=1 rose-hf train --config recipes/tiny/rose_tiny.yaml

writes `<output_dir>/base_model/` (a `save_pretrained` folder: model and tokenizer), `pool.jsonl` (2000
prompt-completion rows, target task "sort") and `pairs.jsonl` (its 10 preference pairs in 2 subtasks), which
`recipes/tiny/rose_tiny.yaml` names. The model is pretrained once (about 20 s on one thread) and cached under
`rose_hf.paths.cache_root()`; a second call only copies.
"""

from __future__ import annotations

import argparse
import os
import shutil

POOL_FILE, PAIRS_FILE, MODEL_DIR = "pool.jsonl", "pairs.jsonl", "base_model"


def write_tiny_assets(output_dir: str, pool_size: int = 2000, seed: int = 0) -> dict[str, str]:
    """Write the tiny recipe's model, pool and pairs into `output_dir`; their paths by recipe key."""
    from .base_model import tiny_base_model
    from .tasks import SyntheticTaskConfig, make_synthetic_task

    os.makedirs(output_dir, exist_ok=True)
    task = make_synthetic_task(SyntheticTaskConfig(pool_size=pool_size, seed=seed))
    paths = {
        "model_name_or_path": os.path.join(output_dir, MODEL_DIR),
        "dataset_name": os.path.join(output_dir, POOL_FILE),
        "preference_dataset_name": os.path.join(output_dir, PAIRS_FILE),
    }
    task.pool.to_json(paths["dataset_name"], lines=True)
    task.validation.to_json(paths["preference_dataset_name"], lines=True)
    # `_trainer` holds the pretraining run's leftovers: the recipe needs the model and its tokenizer only.
    shutil.copytree(tiny_base_model(), paths["model_name_or_path"], dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("_trainer"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m rose_fixtures.tiny_assets", description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=os.path.join("outputs", "tiny_assets"), help="Folder to write into.")
    parser.add_argument("--pool_size", type=int, default=2000, help="Rows of the synthetic pool.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic task.")
    args = parser.parse_args(argv)
    paths = write_tiny_assets(args.output_dir, args.pool_size, args.seed)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return paths


if __name__ == "__main__":
    main()
