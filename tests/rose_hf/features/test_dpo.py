"""DPO validation gradients against autograd of TRL's own `DPOTrainer.compute_loss`, and TRL-identical tokenisation."""

import pytest
import torch
from datasets import Dataset
from helpers import make_lora_model, tiny_pairs
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from rose_hf.data import prepare_preference_dataset
from rose_hf.features.dpo import check_loss_type, dpo_pair_gradients
from rose_hf.features.gradients import LoraGradientCollector, feature_mode

CONVERSATIONAL = Dataset.from_dict(
    {
        "prompt": [[{"role": "user", "content": "what is the answer ?"}], [{"role": "user", "content": "hello"}]],
        "chosen": [[{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "hello world"}]],
        "rejected": [[{"role": "assistant", "content": "no"}], [{"role": "assistant", "content": "bad"}]],
    }
)
IMPLICIT = Dataset.from_dict(
    {"chosen": ["what is the answer ? yes", "hello world"], "rejected": ["what is the answer ? no", "hello bad"]}
)


def make_trainer(model, tokenizer, dataset, tmp_path, loss_type, beta=0.1):
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type=[loss_type],
        report_to=[],
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=1,
    )
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.parametrize("dataset", [tiny_pairs(), CONVERSATIONAL, IMPLICIT], ids=["standard", "conversational", "implicit"])
def test_tokenisation_matches_dpo_trainer(tokenizer, dataset, tmp_path):
    model = make_lora_model(tokenizer)
    trainer = make_trainer(model, tokenizer, dataset, tmp_path, "sigmoid")
    ours = prepare_preference_dataset(dataset, tokenizer, max_length=None)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[key] == trainer.train_dataset[key], key


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
def test_pair_gradients_equal_autograd_of_dpo_trainer_loss(tokenizer, tmp_path, loss_type):
    dataset = tiny_pairs()
    model = make_lora_model(tokenizer, seed=3)
    trainer = make_trainer(model, tokenizer, dataset, tmp_path, loss_type, beta=0.5)
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = [{k: row[k] for k in keys} for row in rows]

    ours, brute = batched_and_brute_force(model, trainer, collator, rows, loss_type)
    for i, expected in enumerate(brute):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(ours[i], expected, rtol=1e-4, atol=1e-7)


def batched_and_brute_force(model, trainer, collator, rows, loss_type, beta=0.5):
    """rose_hf's per-pair gradients of one batch, and autograd of `DPOTrainer.compute_loss` one pair at a time."""
    collector = LoraGradientCollector(model)
    params = dict(model.named_parameters())
    brute = []
    with feature_mode(model):
        ours = dpo_pair_gradients(model, collector, collator(rows), beta=beta, loss_type=loss_type)
        for row in rows:
            model.zero_grad()
            trainer.compute_loss(model, collator([row])).backward()
            brute.append(torch.cat([params[n].grad.flatten() for n in collector.names]))
    return ours, brute


def test_batch_coupled_loss_types_are_refused():
    with pytest.raises(ValueError, match="loss_type='aot'"):
        check_loss_type("aot")
