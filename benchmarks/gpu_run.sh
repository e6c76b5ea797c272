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
if [ -d benchmarks/.wheels ]; then
    for pkg in flash-maxsim late-interaction-kernels pydantic datasets; do
        python3 -m pip install -q --no-index --find-links benchmarks/.wheels "$pkg" 2>&1 | tail -2 \
            || echo "could not install $pkg from benchmarks/.wheels"
    done
fi
status=0
export COLZERO_COMMIT="${COLZERO_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
python3 benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log" || status=1
python3 benchmarks/gpu_trainer_check.py --out "$out" 2>&1 | grep -v "it/s\]" | tee "$out/gpu_trainer_check.log" || status=1
ls "$out"/20*-*.json 2>/dev/null | sed 's/^/commit as benchmarks\/results\/gpu\/: /'
exit $status
