#!/usr/bin/env bash
# Every GPU check, one after the other: the phase shapes (benchmarks/gpu_check.py) and the trainer end
# to end with a kill and a resume (benchmarks/gpu_trainer_check.py). Results and logs go to $1.
#     PYTHONPATH=src bash benchmarks/gpu_run.sh OUT_DIR
set -uo pipefail
out="${1:?usage: gpu_run.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# wheels carried from benchmarks/gpu_wheels.sh (the machine has no network): the peers' kernels, ...
if compgen -G "benchmarks/.wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-deps --no-index benchmarks/.wheels/*.whl 2>&1 | tail -3 || true
fi
status=0
python3 benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log" || status=1
python3 benchmarks/gpu_trainer_check.py --out "$out" 2>&1 | grep -v "it/s\]" | tee "$out/gpu_trainer_check.log" || status=1
exit $status
