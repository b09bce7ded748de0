#!/usr/bin/env bash
# Every GPU check and measurement of training on one GPU, as one script for a lent GPU machine.
#
#   bash benchmarks/gpu_check.sh [tests|env|train|all]     (results under $OUT, default ./gpu-check)
#
# tests: the CUDA tests (no host sync inside a rollout or an update, eager and captured; a captured
#        env step replays the eager one; captured updates follow the eager ones; training on the
#        graphs end to end), about a minute.
# env:   env steps/s and GPU memory, eager and as a captured CUDA graph, up to N = 262144.
# train: time to score of the gpu preset on 3 seeds (CUDA graphs; the eager path on seed 1 beside
#        them), 15 and 60 s snapshots, 1024 evaluation episodes each on the GPU.
# Sized for a 15-minute GPU lease: tests + env ~3 minutes, train ~6 minutes. $OUT gets 6 files (the
# tables and their JSON); the runs stay in /tmp/gpu-check-runs.
#
# Run from the repository root on a machine whose python3 has a CUDA build of torch; the project
# need not be installed (PYTHONPATH is the checkout). Packages the machine lacks (minatar, for the
# tests' reference) are installed from wheels in .whl/ if that folder exists: make it with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform any -d .whl minatar==1.0.15
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
out="${OUT:-gpu-check}"
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d .whl ]]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi -L | tee "$out/device.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

status=0
if [[ "$what" == tests || "$what" == all ]]; then
    timeout 300 "$python" -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_cuda_graphs.py tests/test_env_api.py \
        tests/test_env_differential.py 2>&1 | tee "$out/cuda_tests.txt" || status=1
fi
if [[ "$what" == env || "$what" == all ]]; then
    timeout 240 "$python" benchmarks/env_throughput.py --device cuda --seconds 0.5 --repeats 3 \
        --json "$out/env_throughput_cuda.json" 2>&1 | tee "$out/env_throughput_cuda.txt" || status=1
fi
if [[ "$what" == train || "$what" == all ]]; then
    timeout 540 "$python" benchmarks/train_speed.py --device cuda --seeds 1,2,3 --eager-seeds 1 --snapshots 15,60 \
        --targets 40,100 --episodes 1024 --logdir /tmp/gpu-check-runs --json "$out/train_speed_cuda.json" -- --preset gpu \
        2>&1 | tee "$out/train_speed_cuda.txt" || status=1
fi
exit $status
