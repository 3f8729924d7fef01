"""An ordinary TRL SFT LoRA script, plus ONE line: `callbacks=[selector]`. Runs offline on a CPU in about a minute.

    OMP_NUM_THREADS=1 python examples/add_callback.py     # one torch thread: see README "Two commands"
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml examples/add_callback.py

The tiny base model is pretrained once on the bundled synthetic data (cached in ~/.cache/rose_hf, or $ROSE_HF_CACHE); with your own model,
pool and preference pairs, only the data and model lines change.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rose_fixtures.base_model import tiny_base_model
    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
    from rose_hf import RoseConfig, RoseDataSelector

    # Your data: an instruction pool (TRL SFT format) and a few preference pairs of the target task.
    task = make_synthetic_task(SyntheticTaskConfig(pool_size=2000))
    pool, pairs = task.pool, task.validation
    warmup_slice = pool.shuffle(seed=0).select(range(len(pool) // 20))  # the paper's 5% random warmup

    # Your model.
    path = tiny_base_model()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

    selector = RoseDataSelector(
        train_dataset=pool, preference_dataset=pairs, config=RoseConfig(selection_dir="outputs/add_callback/rose")
    )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir="outputs/add_callback/warmup", num_train_epochs=2, learning_rate=1e-3,
                       per_device_train_batch_size=8, save_strategy="epoch", max_length=64, report_to=[],
                       use_cpu=True, bf16=False),  # fmt: skip
        train_dataset=warmup_slice,
        peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        processing_class=tokenizer,
        callbacks=[selector],  # <- the one added line
    )
    trainer.train()

    trainer.log(selector.metrics)  # the selection's figures, to report_to (TensorBoard, W&B...) like any metric
    health = selector.result.info["health"]
    print(f"selected {len(selector.selected_indices)} of {len(pool)} rows; health: {health['verdict']} "
          f"({health['message']}); by source:")
    print(selector.selected_dataset.to_pandas()["source"].value_counts().to_string())


if __name__ == "__main__":
    main()
