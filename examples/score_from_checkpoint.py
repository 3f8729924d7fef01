"""Score a pool from a LoRA warmup that already ran (saved checkpoints with optimizer.pt) and print the top examples.

    python examples/score_from_checkpoint.py                      # runs a small warmup first if none is given
    python examples/score_from_checkpoint.py --warmup_dir out/warmup --base_model my/base

Offline, on a CPU. The Adam moments are read from each checkpoint's optimizer.pt and matched to the LoRA weights by
parameter name; the checkpoint weights come from the learning rates in trainer_state.json (rebuilt from the saved
scheduler when the warmup logged rarely).
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup_dir", default=None, help="Trainer output_dir holding checkpoint-<step> folders.")
    parser.add_argument("--base_model", default=None, help="The warmup's base model (default: the tiny one).")
    parser.add_argument("--output_dir", default="outputs/score_from_checkpoint")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rose_fixtures.base_model import tiny_base_model
    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
    from rose_hf import RoseConfig, checkpoint_dirs, select_from_checkpoints

    task = make_synthetic_task(SyntheticTaskConfig(pool_size=2000))
    base = args.base_model or tiny_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    warmup_dir = args.warmup_dir
    if warmup_dir is None:  # a plain SFT LoRA warmup, nothing rose_hf-specific: it only saves checkpoints
        warmup_dir = os.path.join(args.output_dir, "warmup")
        if not os.path.isdir(warmup_dir):
            SFTTrainer(
                model=AutoModelForCausalLM.from_pretrained(base),
                args=SFTConfig(output_dir=warmup_dir, num_train_epochs=2, learning_rate=1e-3, logging_steps=1,
                               per_device_train_batch_size=8, save_strategy="epoch", max_length=64, report_to=[],
                               use_cpu=True, bf16=False),  # fmt: skip
                train_dataset=task.pool.shuffle(seed=0).select(range(100)),
                peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                processing_class=tokenizer,
            ).train()

    checkpoints = checkpoint_dirs(warmup_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoints[0], is_trainable=True)
    result = select_from_checkpoints(
        model, checkpoints, task.pool, task.validation, tokenizer,
        RoseConfig(selection_dir=os.path.join(args.output_dir, "selection"), report=False),
    )  # fmt: skip
    print(f"checkpoint weights {[round(float(w), 3) for w in result.weights]}; top {args.top} of {len(task.pool)}:")
    for rank, index in enumerate(result.selected_indices[: args.top], start=1):
        row = task.pool[index]
        print(f"{rank:>3}. score {result.scores[index]:+.4f}  [{row['source']}]  {row['prompt']!r} -> {row['completion']!r}")


if __name__ == "__main__":
    main()
