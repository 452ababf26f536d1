#!/usr/bin/env bash
# The GPU check, in one command and under 5 minutes, with no network and nothing installed:
#   1. the Torch backend on CUDA (FP32, FP16, FP16 as CUDA graphs; batch 1 and 8) as JSON
#      (tests/gpu/device_check.py), on any machine with an NVIDIA GPU and PyTorch;
#   2. where TensorRT is importable, the TensorRT tests (python -m pytest tests/gpu), their log
#      beside the JSON.
# Usage: tests/gpu/device_check.sh [JSON_FILE]   (default: $OUT/device_check.json, else ./device_check.json)
#        DEVICE=cpu tests/gpu/device_check.sh ... a dry run of step 1 on the CPU (seconds), for machines without a GPU
#        MODEL=models/NAME ...                     time a trained model instead of the untrained edge preset
set -uo pipefail
cd "$(dirname "$0")/../.."

out="${1:-${OUT:-.}/device_check.json}"
mkdir -p "$(dirname "$out")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
export EDGEAD_OFFLINE=1                 # teacher weights: only what this machine already has
status=0

args=(--device "${DEVICE:-cuda}" --out "$out")
[ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
timeout 150 python tests/gpu/device_check.py "${args[@]}" || status=$?

if [ "${DEVICE:-cuda}" != cpu ] && python -c "import sys, tensorrt; sys.exit(0 if hasattr(tensorrt, 'Builder') else 1)" 2>/dev/null; then
    log="$(dirname "$out")/tests_gpu.log"
    echo "device_check: TensorRT is here: python -m pytest tests/gpu (log: $log)"
    timeout 140 python -m pytest -q -p no:cacheprovider tests/gpu >"$log" 2>&1 || status=$?
    tail -n 15 "$log"
else
    echo "device_check: TensorRT is not importable here (or DEVICE=cpu): tests/gpu not run"
fi
exit "$status"
