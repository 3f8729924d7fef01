"""The callback in 2 processes (DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP2 on CPU) gives the features, scores and selection
of one process computing from the SAME adapter and Adam state; so does a second selector in the same launch that
keeps only similarities to the pairs (`store_pool_features=False`).

The warmup runs under `accelerate launch` with the recipes in recipes/accelerate_configs/. Its rank 0 also saves the
LoRA weights and Adam moments at every checkpoint (gathered with torch's/DeepSpeed's own APIs), and this test
recomputes the features from them in one process. Tolerance: features are stored in float16, and the two runs
compute each example in the same batch composition (chunks are fixed row ranges), so they agree up to float32
reduction order in the model (~1e-6 relative) before fp16 rounding; a feature element (|x| <~ 0.3) may then differ
by one fp16 ulp (<= 2.4e-4), which moves a score (a weighted mean of cosines of unit vectors) by far less than 1e-3.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType
from helpers import DISTRIBUTED_ROSE, ROOT, distributed_setup, make_lora_model
from peft import get_peft_model

from rose_fixtures.tiny import build_model
from rose_hf import RoseConfig
from rose_hf.features.checkpoint import TrainingCheckpoint
from rose_hf.features.preconditioner import AdamState
from rose_hf.pipeline import SelectionPipeline
from rose_hf.trainer.callback import check_distributed_type

SCRIPT = os.path.join(ROOT, "tests", "distributed", "warmup_script.py")
CONFIGS = os.path.join(ROOT, "recipes", "accelerate_configs")


# 27 of the 45 rows: the prefilter's 7 chunks and the features' 4 split unevenly over 2 processes (lockstep).
PREFILTER = 0.6


def launch(config: str, output_dir: str, zero_stage: int, prefilter_fraction: float | None = None) -> None:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(CONFIGS, config),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0",
        SCRIPT, "--output_dir", output_dir, "--zero_stage", str(zero_stage),
    ] + (["--prefilter_fraction", str(prefilter_fraction)] if prefilter_fraction else [])  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def single_process_reference(run_dir: str, output_dir: str, prefilter_fraction: float | None = None):
    """Features, scores and selection from the distributed run's own adapter and Adam state, in this process."""
    setup = distributed_setup(output_dir)
    model = get_peft_model(build_model("llama", setup["tokenizer"], hidden_size=32, seed=0), setup["lora"])
    config = RoseConfig(selection_dir=output_dir, prefilter_fraction=prefilter_fraction, **DISTRIBUTED_ROSE)
    pipeline = SelectionPipeline(setup["pool"], setup["pairs"], config)
    pipeline.prepare(model, setup["tokenizer"])
    names = pipeline.featurizer.collector.names
    steps = sorted(int(f.split("-")[1][:-3]) for f in os.listdir(run_dir) if f.startswith("state-"))
    for step in steps:
        state = torch.load(os.path.join(run_dir, f"state-{step}.pt"))
        params = dict(model.named_parameters())
        for name, weight in state["weights"].items():
            params[name].data.copy_(weight.reshape(params[name].shape))
        adam = AdamState(
            torch.cat([state["exp_avg"][n].flatten() for n in names]),
            torch.cat([state["exp_avg_sq"][n].flatten() for n in names]),
            state["betas"][0], state["betas"][1], state["eps"],
        )  # fmt: skip
        with open(os.path.join(run_dir, "rose", "features", f"checkpoint-{step}", "layout.json")) as handle:
            learning_rates = json.load(handle)["learning_rates"]
        pipeline.featurize(model, TrainingCheckpoint(step, learning_rates, adam))
    return pipeline.select(), steps, list(setup["pairs"]["subtask"])


def assert_prefilter_matches(run_dir: str, reference_dir: str, prefilter_fraction: float | None) -> int:
    """The distributed prefilter's cosines and kept rows are one process's; returns the rows with features."""
    if prefilter_fraction is None:
        assert not os.path.exists(os.path.join(run_dir, "rose", "prefilter"))
        return 45
    ours, theirs = os.path.join(run_dir, "rose", "prefilter"), os.path.join(reference_dir, "prefilter")
    with open(os.path.join(ours, "key.json")) as mine, open(os.path.join(theirs, "key.json")) as other:
        assert json.load(mine) == json.load(other)  # the same base model hash in 2 processes (ZeRO-3: gathered)
    cosines = np.load(os.path.join(ours, "pool.npy"))
    assert cosines.shape == (45, 6) and (np.load(os.path.join(ours, "pool_status.npy")) == 1).all()  # every row
    np.testing.assert_allclose(cosines, np.load(os.path.join(theirs, "pool.npy")), atol=1e-5, rtol=0)
    kept = np.load(os.path.join(ours, "kept.npy"))
    np.testing.assert_array_equal(kept, np.load(os.path.join(theirs, "kept.npy")))
    assert len(kept) == 27
    with open(os.path.join(run_dir, "rose", "selected_indices.json")) as handle:
        assert set(json.load(handle)) <= set(kept.tolist())
    return len(kept)


def assert_other_objectives_select_alike(
    run_dir: str, reference_dir: str, subtasks: list[str], k: int, cache: str = "rose"
) -> None:
    """LESS's and the default dpo+sft's selections, scored from the distributed cache and from the one-process cache,
    are the same rows; dpo+sft's mean ranks differ by at most one swap of neighbours per objective."""
    from rose_hf.cache.store import FeatureStore
    from rose_hf.scoring.budget import select_top
    from rose_hf.scoring.selection import score_store

    for objective in ("sft", "dpo+sft"):
        config = RoseConfig(selection_dir=reference_dir, **{**DISTRIBUTED_ROSE, "validation_objective": objective})
        ours = score_store(FeatureStore(os.path.join(run_dir, cache)), subtasks, config).scores
        theirs = score_store(FeatureStore(reference_dir), subtasks, config).scores
        assert set(select_top(ours, size=k).tolist()) == set(select_top(theirs, size=k).tolist()), objective
        tolerance = 1e-3 if objective == "sft" else 1.0 / len(ours)
        np.testing.assert_allclose(ours, theirs, atol=tolerance, rtol=0)


def assert_streamed_matches(run_dir: str, reference, steps: list[int], reference_dir: str, subtasks: list[str],
                            rows: int):  # fmt: skip
    """The launch's second selector (`store_pool_features=False`, same warmup): its per-pair similarities are the
    dot products of the first selector's stored features (same processes, same chunks) with the validation features,
    and its scores and selection are one process's, as the stored features' are."""
    for step in steps:
        streamed = os.path.join(run_dir, "rose_streamed", "features", f"checkpoint-{step}")
        stored = os.path.join(run_dir, "rose", "features", f"checkpoint-{step}")
        with open(os.path.join(streamed, "meta.json")) as handle:
            assert json.load(handle)["validation_rank_max_diff"] <= 1e-6
        assert not os.path.exists(os.path.join(streamed, "pool.npy"))
        features = np.load(os.path.join(stored, "pool.npy")).astype(np.float32)
        for objective in ("dpo", "sft"):
            validation = np.load(os.path.join(streamed, f"validation_{objective}.npy"))
            np.testing.assert_allclose(validation, np.load(os.path.join(stored, f"validation_{objective}.npy")),
                                       atol=1e-6, rtol=0)  # fmt: skip
            chunks = sorted(f for f in os.listdir(os.path.join(streamed, "similarities")) if f.startswith(objective))
            similarities = np.concatenate([np.load(os.path.join(streamed, "similarities", f)) for f in chunks])
            assert similarities.shape == (rows, 6)  # the prefilter's kept rows, when it runs
            np.testing.assert_allclose(similarities, features @ validation.T, atol=2e-6, rtol=0)
    scores = np.load(os.path.join(run_dir, "rose_streamed", "scores.npy"))
    np.testing.assert_allclose(scores, reference.scores, atol=1e-3, rtol=0)
    with open(os.path.join(run_dir, "rose_streamed", "selected_indices.json")) as handle:
        assert json.load(handle) == reference.selected_indices
    k = len(reference.selected_indices)
    assert_other_objectives_select_alike(run_dir, reference_dir, subtasks, k, cache="rose_streamed")


@pytest.mark.distributed
@pytest.mark.parametrize(
    "config,zero_stage,prefilter",
    [("multi_gpu.yaml", 0, None), ("deepspeed_zero2.yaml", 2, None), ("deepspeed_zero3.yaml", 3, PREFILTER)],
    ids=["ddp", "zero2", "zero3-prefilter"],
)
def test_two_processes_match_one(tmp_path, config, zero_stage, prefilter):
    if zero_stage:
        pytest.importorskip("deepspeed")
    run_dir = str(tmp_path / "run")
    launch(config, run_dir, zero_stage, prefilter)
    with open(os.path.join(run_dir, "launch.json")) as handle:
        launched = json.load(handle)
    assert launched["num_processes"] == 2
    assert ("DEEPSPEED" in launched["distributed_type"]) == bool(zero_stage)

    reference, steps, subtasks = single_process_reference(run_dir, str(tmp_path / "reference"), prefilter)
    assert len(steps) == 2
    rows = assert_prefilter_matches(run_dir, str(tmp_path / "reference"), prefilter)
    for step in steps:
        with open(os.path.join(run_dir, "rose", "features", f"checkpoint-{step}", "meta.json")) as handle:
            meta = json.load(handle)
        assert meta["validation_rank_max_diff"] <= 1e-6  # both processes computed the same
        with open(str(tmp_path / "reference" / "features" / f"checkpoint-{step}" / "meta.json")) as handle:
            # The same adapter, Adam state and base hash the same in 2 processes (ZeRO-3: gathered) and in one.
            assert meta["fingerprint"] == json.load(handle)["fingerprint"]
        ours = np.load(os.path.join(run_dir, "rose", "features", f"checkpoint-{step}", "pool.npy")).astype(np.float32)
        theirs = np.load(str(tmp_path / "reference" / "features" / f"checkpoint-{step}" / "pool.npy")).astype(np.float32)
        assert ours.shape == theirs.shape == (rows, 256)
        assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() < 1e-2  # every row written: no example lost
        np.testing.assert_allclose(ours, theirs, atol=2.5e-4, rtol=0)
        print(f"{config} step {step}: max feature difference {np.abs(ours - theirs).max():.2e}")
    scores = np.load(os.path.join(run_dir, "rose", "scores.npy"))
    np.testing.assert_allclose(scores, reference.scores, atol=1e-3, rtol=0)
    print(f"{config}: max score difference {np.abs(scores - reference.scores).max():.2e}")
    with open(os.path.join(run_dir, "rose", "selected_indices.json")) as handle:
        assert json.load(handle) == reference.selected_indices
    assert_other_objectives_select_alike(run_dir, str(tmp_path / "reference"), subtasks, len(reference.selected_indices))
    assert_streamed_matches(run_dir, reference, steps, str(tmp_path / "reference"), subtasks, rows)


FSDP2_SCRIPT = os.path.join(ROOT, "tests", "distributed", "fsdp2_script.py")


@pytest.mark.distributed
def test_fsdp2_two_processes_match_one(tmp_path):
    """Under `fully_shard` (gloo, 2 processes), with the prefilter: LoRA weights and Adam moments are sharded
    DTensors; the prefilter's cosines and kept rows, the features, scores and selection equal one process's from the same (gathered) adapter and Adam state, to the DDP/ZeRO
    tolerances, and a save interrupted after each process's first chunk is finished by a resumed run."""
    run_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", FSDP2_SCRIPT,
               "--output_dir", run_dir, "--prefilter_fraction", str(PREFILTER)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    with open(os.path.join(run_dir, "launch.json")) as handle:
        assert json.load(handle)["num_processes"] == 2

    reference, steps, subtasks = single_process_reference(run_dir, str(tmp_path / "reference"), PREFILTER)
    assert steps == [4, 8]
    rows = assert_prefilter_matches(run_dir, str(tmp_path / "reference"), PREFILTER)
    state = torch.load(os.path.join(run_dir, "state-8.pt"))
    assert all(torch.count_nonzero(v) > 0 for v in state["exp_avg_sq"].values())  # every shard gathered
    for step in steps:
        with open(os.path.join(run_dir, "rose", "features", f"checkpoint-{step}", "meta.json")) as handle:
            assert json.load(handle)["validation_rank_max_diff"] <= 1e-6
        ours = np.load(os.path.join(run_dir, "rose", "features", f"checkpoint-{step}", "pool.npy"))
        theirs = np.load(str(tmp_path / "reference" / "features" / f"checkpoint-{step}" / "pool.npy"))
        ours, theirs = ours.astype(np.float32), theirs.astype(np.float32)
        assert ours.shape == theirs.shape == (rows, 256)
        assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() < 1e-2
        np.testing.assert_allclose(ours, theirs, atol=2.5e-4, rtol=0)
        print(f"fsdp2 step {step}: max feature difference {np.abs(ours - theirs).max():.2e}")
    scores = np.load(os.path.join(run_dir, "rose", "scores.npy"))
    np.testing.assert_allclose(scores, reference.scores, atol=1e-3, rtol=0)
    print(f"fsdp2: max score difference {np.abs(scores - reference.scores).max():.2e}")
    with open(os.path.join(run_dir, "rose", "selected_indices.json")) as handle:
        assert json.load(handle) == reference.selected_indices
    assert_other_objectives_select_alike(run_dir, str(tmp_path / "reference"), subtasks, len(reference.selected_indices))
    assert_streamed_matches(run_dir, reference, steps, str(tmp_path / "reference"), subtasks, rows)


def test_fsdp1_is_refused_and_fsdp2_accepted(monkeypatch, tokenizer):
    monkeypatch.setenv("FSDP_VERSION", "1")  # what `accelerate launch` exports for an fsdp_version 1 config
    with pytest.raises(ValueError, match="not FSDP1.*fsdp_version: 2.*fsdp2.yaml"):
        check_distributed_type(DistributedType.FSDP)
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp2 = load_config_from_file(os.path.join(CONFIGS, "fsdp2.yaml"))  # what `accelerate launch` reads
    assert fsdp2.distributed_type == DistributedType.FSDP
    monkeypatch.setenv("FSDP_VERSION", str(fsdp2.fsdp_config["fsdp_version"]))
    check_distributed_type(DistributedType.FSDP)
    model = make_lora_model(tokenizer)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="not FSDP1"):  # FSDP without fully_shard modules is FSDP1
        check_distributed_type(DistributedType.FSDP, model)
    check_distributed_type(DistributedType.DEEPSPEED, model)  # supported: no error
    check_distributed_type(DistributedType.MULTI_GPU, model)
