"""Kill feature caching with SIGKILL at random points, run it again: the final features, scores and selection are
bit-for-bit those of an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT

SCRIPT = os.path.join(ROOT, "tests", "distributed", "featurize_script.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ARTIFACTS = ["scores.npy", "selected_indices.json", "features/checkpoint-10/pool.npy",
             "features/checkpoint-20/pool.npy", "features/checkpoint-20/validation_dpo.npy", "features/checkpoint-20/validation_sft.npy"]  # fmt: skip


def run_to_completion(output_dir: str) -> str:
    result = subprocess.run([sys.executable, SCRIPT, output_dir], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def run_and_kill(output_dir: str, rng: random.Random) -> bool:
    """Start the script, SIGKILL it after a random number of recorded chunks plus a random delay.

    Returns whether the process was killed (False if it finished first)."""
    process = subprocess.Popen(
        [sys.executable, SCRIPT, output_dir], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    chunks_before_kill = rng.randint(0, 3)
    seen = 0
    while seen < chunks_before_kill:
        line = process.stdout.readline()
        if not line or line.startswith("done"):
            process.wait()
            return False
        seen += line.startswith("chunk")
    time.sleep(rng.uniform(0.0, 0.3))  # lands anywhere: mid-batch, mid-write, between records
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_bits(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    run_to_completion(reference)

    rng = random.Random(1234)
    trials = 0
    for trial in range(3):
        output_dir = str(tmp_path / f"killed-{trial}")
        kills = 0
        while run_and_kill(output_dir, rng) and kills < 6:
            kills += 1
        stdout = run_to_completion(output_dir)
        assert kills >= 1, "the trial must actually interrupt the run"
        # The final run redid only the unfinished chunks: fewer than a full run's 22 chunk records.
        assert stdout.count("chunk") < 22
        for artifact in ARTIFACTS:
            with open(os.path.join(reference, artifact), "rb") as a, open(os.path.join(output_dir, artifact), "rb") as b:
                assert a.read() == b.read(), f"trial {trial}: {artifact} differs after {kills} kill(s)"
        trials += 1
    assert trials == 3


@pytest.mark.slow
def test_rerunning_a_finished_selection_does_no_work(tmp_path):
    output_dir = str(tmp_path / "run")
    first = run_to_completion(output_dir)
    assert first.count("chunk") == 22  # 42 rows / 4 per chunk = 11 chunks x 2 checkpoints
    mtimes = {a: os.path.getmtime(os.path.join(output_dir, a)) for a in ARTIFACTS}
    scores = np.load(os.path.join(output_dir, "scores.npy"))
    second = run_to_completion(output_dir)
    assert "chunk" not in second
    assert {a: os.path.getmtime(os.path.join(output_dir, a)) for a in ARTIFACTS} == mtimes
    np.testing.assert_array_equal(np.load(os.path.join(output_dir, "scores.npy")), scores)
