"""Feature caching for one checkpoint, then selection: the process tests/test_resume.py kills with SIGKILL.

    python tests/distributed/featurize_script.py OUTPUT_DIR

Everything is seeded (model, LoRA weights, Adam state), so every run computes the same features. It prints
"chunk <id>" after each chunk is recorded, and "done" at the end.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "..")]

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from helpers import make_lora_model, make_tokenizer, pool_dataset  # noqa: E402

from rose_hf import RoseConfig  # noqa: E402
from rose_hf.features.checkpoint import TrainingCheckpoint  # noqa: E402
from rose_hf.features.preconditioner import AdamState  # noqa: E402
from rose_hf.pipeline import SelectionPipeline  # noqa: E402

RESUME_ROSE = dict(prefilter_fraction=None, projection_dim=128, chunk_size=4, feature_batch_size=3, feature_max_length=48, report=False,
                   scoring="paper")


def main(output_dir: str) -> None:
    PartialState()
    torch.set_num_threads(1)  # the same reduction order in every run, so resumed chunks are bit-identical
    tokenizer = make_tokenizer()
    pool, task = pool_dataset(42)
    model = make_lora_model(tokenizer, seed=5)
    pipeline = SelectionPipeline(pool, task.validation, RoseConfig(selection_dir=output_dir, **RESUME_ROSE))
    pipeline.prepare(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    n = pipeline.featurizer.collector.num_params
    adam = AdamState(torch.randn(n, generator=generator) * 1e-3, torch.rand(n, generator=generator) * 1e-6,
                     0.9, 0.999, 1e-8)  # fmt: skip
    for step in (10, 20):
        pipeline.featurize(model, TrainingCheckpoint(step, [1e-3] * 10, adam),
                           on_chunk=lambda chunk: print(f"chunk {chunk}", flush=True))
    pipeline.select()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
