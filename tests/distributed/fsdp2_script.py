"""The tiny warmup of tests/distributed/warmup_script.py under FSDP2 (`fully_shard`), with RoseDataSelector's events.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/fsdp2_script.py --output_dir OUT

`transformers.Trainer` does not shard on a CPU (accelerate sets FSDP up only on accelerators), so this script shards
the PEFT model with `fully_shard` itself (each decoder layer, then the root, as accelerate's TRANSFORMER_BASED_WRAP
does), trains it with a plain data-parallel loop (each process its half of every batch) and calls the callback's
events where the Trainer would: `on_train_begin`, `on_step_begin`, `on_save` at each epoch end, `on_train_end`.

The second save is interrupted after each process's first chunk, and a fresh selector resumes it from
`on_train_begin`, as a resumed run does. Rank 0 also saves, at each save, the full LoRA weights and Adam moments
(OUT/state-<step>.pt) so the test can recompute everything in one process.
"""

import argparse
import functools
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "..")]

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from helpers import distributed_setup  # noqa: E402
from peft import get_peft_model  # noqa: E402
from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import TrainerControl, TrainerState, TrainingArguments, get_linear_schedule_with_warmup  # noqa: E402

from rose_fixtures.tiny import build_model  # noqa: E402
from rose_hf import RoseDataSelector  # noqa: E402
from rose_hf.data import SFTCollator, prepare_sft_dataset  # noqa: E402
from rose_hf.sharding import uses_fsdp2  # noqa: E402

EPOCHS, BATCH = 2, 4  # 16 warmup rows / 4 = 4 steps per epoch, as in the Trainer warmup of the other tests


class Interrupted(RuntimeError):
    pass


def dump_state(model, optimizer, step: int, output_dir: str, is_main: bool) -> None:
    """Full LoRA weights and Adam moments, gathered with torch's own `DTensor.full_tensor()` (not rose_hf's code;
    collective: every rank calls it)."""
    weights, exp_avg, exp_avg_sq = {}, {}, {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert isinstance(param, DTensor) and param.to_local().shape[0] < param.shape[0]  # really sharded
            weights[name] = param.detach().full_tensor().clone()
            exp_avg[name] = optimizer.state[param]["exp_avg"].full_tensor().clone()
            exp_avg_sq[name] = optimizer.state[param]["exp_avg_sq"].full_tensor().clone()
    group = optimizer.param_groups[0]
    if is_main:
        torch.save({"weights": weights, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "betas": group["betas"],
                    "eps": group["eps"]}, os.path.join(output_dir, f"state-{step}.pt"))  # fmt: skip


def interrupted_save_then_resume(selector, setup, args, trainer_state, control, events) -> RoseDataSelector:
    """A run killed during a save (every process stops after its first chunk), then resumed: the resumed run's
    fresh selector finishes that checkpoint in `on_train_begin`, from the restored model and optimizer."""
    pipeline = selector.pipeline
    featurize = pipeline.featurize

    def stop(chunk):
        raise Interrupted(f"chunk {chunk}")

    pipeline.featurize = functools.partial(featurize, on_chunk=stop)
    try:
        selector.on_save(args, trainer_state, control, **events)
        raise AssertionError("the interrupted save finished")
    except Interrupted:
        pass
    PartialState().wait_for_everyone()  # both first chunks written
    checkpoint = pipeline.store.checkpoint(trainer_state.global_step)
    assert not checkpoint.is_complete() and len(checkpoint.pending_chunks()) == checkpoint.num_chunks() - 2
    resumed = RoseDataSelector(setup["pool"], setup["pairs"], selector.config)
    resumed.on_train_begin(args, trainer_state, control, **events)
    assert checkpoint.is_complete()
    return resumed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--prefilter_fraction", type=float, default=None)
    cli = parser.parse_args()
    state = PartialState(cpu=True)  # gloo
    torch.manual_seed(0)
    setup = distributed_setup(cli.output_dir, prefilter_fraction=cli.prefilter_fraction)
    tokenizer = setup["tokenizer"]
    selectors = [setup["selector"], setup["streamed_selector"]]  # with and without stored pool features
    model = get_peft_model(build_model("llama", tokenizer, hidden_size=32, seed=0), setup["lora"])
    # Layer 0 in its own FSDP group, layer 1 in the root's: the root keeps its parameters unsharded after a forward
    # without backward (the evaluation below), which the Adam-state lookup must undo.
    fully_shard(model.base_model.model.model.layers[0])
    fully_shard(model)
    assert uses_fsdp2(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-3, weight_decay=0.0)
    steps_per_epoch = 16 // BATCH
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, EPOCHS * steps_per_epoch)

    warmup = prepare_sft_dataset(setup["pool"].select(range(16)), tokenizer, 64)
    rows = [{"input_ids": i, "labels": label} for i, label in zip(warmup["input_ids"], warmup["labels"])]
    collate = SFTCollator(tokenizer.pad_token_id)
    args = TrainingArguments(output_dir=os.path.join(cli.output_dir, "warmup"), save_strategy="epoch", use_cpu=True,
                             report_to=[], disable_tqdm=True)  # fmt: skip
    trainer_state = TrainerState(max_steps=EPOCHS * steps_per_epoch, is_world_process_zero=state.is_main_process)
    control = TrainerControl()
    events = dict(model=model, optimizer=optimizer, lr_scheduler=scheduler, processing_class=tokenizer)

    for selector in selectors:
        selector.on_train_begin(args, trainer_state, control, **events)
    for epoch in range(EPOCHS):
        for step in range(steps_per_epoch):
            for selector in selectors:
                selector.on_step_begin(args, trainer_state, control, **events)
            batch_rows = rows[step * BATCH : (step + 1) * BATCH][state.process_index :: state.num_processes]
            batch = collate(batch_rows)
            model.train()
            model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            trainer_state.global_step += 1
        with torch.no_grad():  # an evaluation before the save leaves the root group (layer 1's LoRA) unsharded
            model.eval()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert any(not isinstance(p, DTensor) for n, p in model.named_parameters() if "layers.1." in n)
        if epoch < EPOCHS - 1:
            for selector in selectors:
                selector.on_save(args, trainer_state, control, **events)
        else:
            selectors = [interrupted_save_then_resume(s, setup, args, trainer_state, control, events) for s in selectors]
        # The feature pass left training as it was: every LoRA weight still trainable, FSDP2's sharded DTensor.
        lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
        assert len(lora) == len(trainable) and all(p.requires_grad and isinstance(p, DTensor) for _, p in lora), [
            (n, type(p).__name__, p.requires_grad) for n, p in lora if not (p.requires_grad and isinstance(p, DTensor))
        ]
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
        dump_state(model, optimizer, trainer_state.global_step, cli.output_dir, state.is_main_process)
    for selector in selectors:
        selector.on_train_end(args, trainer_state, control, **events)
        assert selector.selected_indices is not None
    if state.is_main_process:
        with open(os.path.join(cli.output_dir, "launch.json"), "w") as handle:
            json.dump({"num_processes": state.num_processes, "distributed_type": "FSDP2 (fully_shard)"}, handle)
    state.destroy_process_group()


if __name__ == "__main__":
    main()
