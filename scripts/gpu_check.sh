#!/usr/bin/env bash
# The device run (H100/H200, not CI): installs the wheels the GPU image lacks (carried in .whl, see README),
# then the speed benchmark on CUDA and the GPU smoke check. Results land in $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null \
  || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/opt/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 ROSE_HF_CACHE=/tmp/rose_cache
nvidia-smi -L
python3 -c "import torch, transformers, trl, peft, datasets; print(torch.__version__, transformers.__version__, trl.__version__, peft.__version__, datasets.__version__)"
python3 -c "from benchmarks.speed.run import main; main(['--output_dir', '$OUT/speed', '--device', 'cuda'])" 2>&1 | tail -60
python3 scripts/gpu_smoke.py $OUT/smoke 2>&1 | grep -v -i warn | tail -40
rm -rf $OUT/smoke/tiny
