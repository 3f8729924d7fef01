"""GPU smoke check (not part of CI): exact per-example gradients on CUDA, and the tiny recipe end to end on the GPU.

    python scripts/gpu_smoke.py OUTPUT_DIR
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gradients_check(out: dict) -> None:
    from accelerate import PartialState
    from helpers import make_lora_model, make_tokenizer, pool_dataset

    from rose_hf.data import SFTCollator, prepare_sft_dataset
    from rose_hf.features.gradients import LoraGradientCollector, feature_mode, sft_per_example_loss

    def batched(model, rows, tokenizer):
        collector = LoraGradientCollector(model)
        batch = {k: v.cuda() for k, v in SFTCollator(tokenizer.pad_token_id)(rows).items()}
        with feature_mode(model), collector.capture():
            loss, _ = sft_per_example_loss(model, batch)
            collector.backward(loss.sum())
            return collector.flat_gradients(), None, collector.names

    PartialState()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tokenizer = make_tokenizer()
    pool, _ = pool_dataset(16)
    rows = list(prepare_sft_dataset(pool, tokenizer, max_length=None))
    for attn in ("sdpa", "eager"):
        model = make_lora_model(tokenizer, "llama", attn_implementation=attn).cuda()
        grads, _, names = batched(model, rows, tokenizer)
        model.eval()
        params = dict(model.named_parameters())
        loop = []
        for row in rows:
            model.zero_grad()
            ids = torch.tensor([row["input_ids"]], device="cuda")
            labels = torch.tensor([row["labels"]], device="cuda")
            logits = model(input_ids=ids).logits[:, :-1].float()
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100).backward()
            loop.append(torch.cat([params[n].grad.flatten() for n in names]))
        loop = torch.stack(loop)
        rel = ((grads - loop).norm(dim=1) / loop.norm(dim=1)).max().item()
        bf16, _, _ = batched(model.to(torch.bfloat16), rows, tokenizer)
        cos = F.cosine_similarity(bf16, loop, dim=1).min().item()
        out[f"cuda_{attn}_fp32_max_relative_error"] = rel
        out[f"cuda_{attn}_bf16_min_cosine"] = cos
        print(f"{attn}: batched vs loop max relative error {rel:.2e}; bf16 min cosine {cos:.5f}", flush=True)


def recipe_check(output_dir: str, out: dict) -> None:
    from rose_fixtures.tiny_assets import write_tiny_assets
    from rose_hf.cli import main

    assets = write_tiny_assets(os.path.join(output_dir, "tiny_assets"))  # the files the recipe names
    start = time.perf_counter()
    main(["select", "--config", "recipes/tiny/rose_tiny.yaml", "--use_cpu", "false", "--bf16", "true",
          "--output_dir", os.path.join(output_dir, "tiny"),
          *[item for key, path in assets.items() for item in (f"--{key}", path)]])  # fmt: skip
    out["tiny_recipe_select_seconds"] = time.perf_counter() - start
    with open(os.path.join(output_dir, "tiny", "selection", "selection.json")) as handle:
        info = json.load(handle)
    out["tiny_recipe_selected"] = info["num_selected"]
    out["tiny_recipe_feature_seconds"] = info["feature_seconds"]


if __name__ == "__main__":
    output_dir = sys.argv[1]
    os.makedirs(output_dir, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    gradients_check(results)
    recipe_check(output_dir, results)
    with open(os.path.join(output_dir, "gpu_smoke.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))
