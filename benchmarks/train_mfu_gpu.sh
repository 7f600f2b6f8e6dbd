#!/usr/bin/env bash
# Training-step MFU at the paper's shapes on one GPU (whisper-large-v3 + Llama-3.1-8B, random weights, bf16): the
# measured default (36% on one H100, docs/training.md) beside the candidates for >= 45%: torch.compile'd encoder,
# connector and LLM decoder, and a larger micro-batch. One JSON row per run; about 8 minutes on an H100/H200.
#     bash benchmarks/train_mfu_gpu.sh            # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
run() { "$PY" benchmarks/train_throughput.py --strategies torch --seq 256 --steps 6 --warmup 3 "$@" | grep '^{'; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run --batch 16                 # the reference row (36.1% on one H100)
run --batch 16 --compile
run --batch 32 --compile
