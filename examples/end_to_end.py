"""ROSE end to end with `RoseTrainer`: warmup -> selection -> final LoRA training on the top 5%, offline, on a CPU.

    OMP_NUM_THREADS=1 python examples/end_to_end.py       # one torch thread: see README "Two commands"
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero2.yaml examples/end_to_end.py

Stages land in outputs/end_to_end/{warmup,selection,final}; run it again and finished stages are skipped.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from rose_fixtures.base_model import tiny_base_model
    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
    from rose_hf import RoseConfig, RoseTrainer

    task = make_synthetic_task(SyntheticTaskConfig(pool_size=2000))
    path = tiny_base_model()
    trainer = RoseTrainer(
        model=path,
        args=SFTConfig(output_dir="outputs/end_to_end", num_train_epochs=2, learning_rate=1e-3,
                       per_device_train_batch_size=8, max_length=64, report_to=[], use_cpu=True, bf16=False),  # fmt: skip
        train_dataset=task.pool,
        preference_dataset=task.validation,
        rose_config=RoseConfig(selection_fraction=0.05, warmup_fraction=0.05),
        peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    trainer.train()
    trainer.save_model()
    print(f"final model trained on {len(trainer.selection.selected_indices)} selected rows -> outputs/end_to_end/final")


if __name__ == "__main__":
    main()
