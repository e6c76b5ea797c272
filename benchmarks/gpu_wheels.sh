#!/usr/bin/env bash
# Wheels the GPU machine (no network) needs beside its torch and transformers, downloaded here into
# benchmarks/.wheels (git-ignored; carry it: `carry: ["benchmarks/.wheels"]`). benchmarks/gpu_run.sh
# installs whatever lies there with --no-deps --no-index.
#     bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # the GPU machine's Python, default 3.12
#
# - flash-maxsim and late-interaction-kernels: the peers' fused MaxSim kernels (pure Python +
#   Triton), measured beside colzero's in benchmarks/maxsim_kernels.py;
# - pydantic (+ pydantic-core for that Python) and datasets: benchmarks/gpu_trainer_check.py builds
#   phases from their settings records and Arrow tables.
set -euo pipefail
py="${1:-3.12}"
dir="$(cd "$(dirname "$0")" && pwd)/.wheels"
mkdir -p "$dir"
pip download --no-deps -d "$dir" flash-maxsim late-interaction-kernels
pip download --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$dir" \
    "pydantic>=2.6" "datasets>=3.0" \
    || echo "datasets / pydantic wheels for Python $py not all found; gpu_trainer_check may not run" >&2
du -sh "$dir"
