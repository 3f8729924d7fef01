"""Probe (not CI): does the EOS at the end of `chosen` in the `sft` (LESS) validation loss change the ranking?

    OMP_NUM_THREADS=1 python scripts/probe_sft_eos.py OUTPUT_DIR      # ~3 min on one CPU thread

Per seed of the synthetic world (2,000 rows, target task sorting): a LoRA warmup (4 epochs on a seeded 5% of the
pool) with `validation_objective="sft"`; at its last checkpoint, the validation features with TRL's EOS (as cached)
and without it (the EOS token dropped from each `chosen`, as LESS's validation loss has none), scored against the
same cached pool features. Prints the rank correlation, the overlap of the two top 5% and their helpful and harmful
shares, and writes them to OUTPUT_DIR/result.json.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _scores(pool, validation, subtasks, ok):
    """Max over subtasks of the mean cosine with the subtask's pairs (one checkpoint); rows without a feature last."""
    import numpy as np

    per_subtask = [pool @ validation[subtasks == s].mean(0) for s in dict.fromkeys(subtasks)]
    return np.where(ok, np.max(np.stack(per_subtask, 1), 1), -np.inf)


def main(output_dir: str) -> None:
    import numpy as np
    from peft import LoraConfig
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rose_fixtures.base_model import tiny_base_model
    from rose_fixtures.tasks import SyntheticTaskConfig, make_synthetic_task
    from rose_hf import RoseConfig, RoseDataSelector
    from rose_hf.features.featurizer import compute_validation_features
    from rose_hf.features.gradients import feature_mode

    base = tiny_base_model()
    results = {}
    for seed in (0, 1, 2):
        task = make_synthetic_task(SyntheticTaskConfig(pool_size=2000, seed=seed))
        tokenizer = AutoTokenizer.from_pretrained(base)
        root = os.path.join(output_dir, f"seed{seed}")
        config = RoseConfig(selection_dir=os.path.join(root, "rose"), validation_objective="sft", projection_dim=1024,
                            feature_max_length=64, report=False, overwrite=True)  # fmt: skip
        selector = RoseDataSelector(task.pool, task.validation, config)
        rows = np.random.default_rng(seed).choice(len(task.pool), 100, replace=False)
        warmup = task.pool.select(sorted(rows)).select_columns(["prompt", "completion"])
        args = SFTConfig(output_dir=os.path.join(root, "sft"), num_train_epochs=4, per_device_train_batch_size=8,
                         learning_rate=1e-3, save_strategy="epoch", report_to=[], use_cpu=True, bf16=False,
                         max_length=64, disable_tqdm=True, seed=seed, logging_steps=50)  # fmt: skip
        lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")  # fmt: skip
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=args, train_dataset=warmup,
                             processing_class=tokenizer, peft_config=lora, callbacks=[selector])  # fmt: skip
        trainer.train()
        pipeline = selector.pipeline
        last = pipeline.store.completed_checkpoints()[-1]  # the live model is in its state now
        eos = tokenizer.eos_token_id
        assert all(row["chosen_ids"][-1] == eos for row in pipeline.pair_tokens)
        without = pipeline.pair_tokens.map(lambda row: {"chosen_ids": row["chosen_ids"][:-1]})
        with feature_mode(trainer.model):
            validation_without = compute_validation_features(pipeline.featurizer, without, 16, pipeline.pad_token_id, 64)
        validation_with = last.validation_features()
        pool, ok = last.pool_features().astype(np.float32), last.pool_status() == 1
        subtasks = np.array(pipeline.subtasks)

        with_eos, without_eos = (_scores(pool, v, subtasks, ok) for v in (validation_with, validation_without))
        k = round(0.05 * len(pool))
        top_with, top_without = (np.argsort(-s, kind="stable")[:k] for s in (with_eos, without_eos))
        helpful, harmful = task.helpful_mask(), task.harmful_mask()
        results[seed] = {
            "spearman": float(spearmanr(with_eos[ok], without_eos[ok]).correlation),
            "top5_overlap": len(set(top_with) & set(top_without)) / k,
            "precision_with_eos": float(helpful[top_with].mean()),
            "precision_without_eos": float(helpful[top_without].mean()),
            "harmful_with_eos": float(harmful[top_with].mean()),
            "harmful_without_eos": float(harmful[top_without].mean()),
            "validation_cosine": float(np.mean(np.sum(validation_with * validation_without, axis=1))),
        }
        print(seed, results[seed], flush=True)
    with open(os.path.join(output_dir, "result.json"), "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/probe_sft_eos")
