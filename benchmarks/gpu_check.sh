#!/usr/bin/env bash
# GPU check: one training step of lora-diffusion vs weight-LoRA vs full fine-tuning on a randomly
# initialised 1.3b base (batch 8 x 512, bf16), each method's peak memory, and one lora-diffusion
# step on a frozen bf16 7b base; prints JSON. Under 8 minutes on one modern GPU.
#   benchmarks/gpu_check.sh                      # on a GPU machine
#   benchmarks/gpu_check.sh --device cpu --size tiny --big-size tiny --batch 2 --seq 64   # CPU
# Needs torch, transformers and peft; uses the installed ldp, or this checkout's platform/ folder
# when ldp is not installed (the check needs only the core library).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import ldp.methods" 2>/dev/null; then
  export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
