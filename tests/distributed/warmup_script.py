"""A tiny LoRA warmup with RoseDataSelector attached, run by tests/test_distributed.py under each launcher setting.

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --cpu --num_processes 2 \
        tests/distributed/warmup_script.py --output_dir OUT

Besides the selectors' own output (OUT/rose, and OUT/rose_streamed without stored pool features), rank 0 saves, at every checkpoint, the LoRA weights and Adam moments
the run had (OUT/state-<step>.pt, gathered with DeepSpeed's and torch's own APIs), so the test can recompute the
features from the SAME adapter and optimizer state in one process and compare.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.join(os.path.dirname(__file__), "..", "..")]

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from helpers import distributed_setup  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class StateDumper(TrainerCallback):
    """Saves the full LoRA weights and Adam moments at each save (collective under ZeRO; rank 0 writes)."""

    def __init__(self, output_dir):
        self.output_dir = output_dir

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        weights, exp_avg, exp_avg_sq = {}, {}, {}
        try:
            import deepspeed
            from deepspeed.utils import safe_get_full_optimizer_state
        except ImportError:
            deepspeed = None
        zero = deepspeed is not None and any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in named.values())
        inner = optimizer
        while hasattr(inner, "optimizer") and not isinstance(inner, torch.optim.Optimizer):
            inner = inner.optimizer
        for name, param in named.items():
            if zero and hasattr(param, "ds_id"):
                with deepspeed.zero.GatheredParameters([param]):
                    weights[name] = param.detach().clone().cpu()
            else:
                weights[name] = param.detach().clone().cpu()
            if zero:
                exp_avg[name] = safe_get_full_optimizer_state(param, "exp_avg").cpu()
                exp_avg_sq[name] = safe_get_full_optimizer_state(param, "exp_avg_sq").cpu()
            else:
                exp_avg[name] = inner.state[param]["exp_avg"].cpu()
                exp_avg_sq[name] = inner.state[param]["exp_avg_sq"].cpu()
        group = inner.param_groups[0]
        if state.is_world_process_zero:
            torch.save(
                {"weights": weights, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "betas": group["betas"],
                 "eps": group["eps"]},
                os.path.join(self.output_dir, f"state-{state.global_step}.pt"),
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--zero_stage", type=int, default=0)
    parser.add_argument("--prefilter_fraction", type=float, default=None)
    args = parser.parse_args()
    state = PartialState()
    setup = distributed_setup(args.output_dir, zero_stage=args.zero_stage, prefilter_fraction=args.prefilter_fraction)
    selectors = [setup["selector"], setup["streamed_selector"]]  # with and without stored pool features
    trainer = setup["make_trainer"](callbacks=[StateDumper(args.output_dir), *selectors])
    trainer.train()
    if state.is_main_process:
        with open(os.path.join(args.output_dir, "launch.json"), "w") as handle:
            json.dump({"num_processes": state.num_processes, "distributed_type": str(state.distributed_type)}, handle)


if __name__ == "__main__":
    main()
