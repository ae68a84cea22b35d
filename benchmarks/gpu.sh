#!/usr/bin/env bash
# The GPU check: run once by a session whose task is lent a GPU (the device tool's `run`, about 8 minutes on one
# H100/H200); its printed tables go into the README. Not part of CI; without a CUDA GPU it says so and exits 0.
#
#   bash benchmarks/gpu.sh [LLAMAGEN_CHECKOUT]
#
# LLAMAGEN_CHECKOUT: a copy of FoundationVision/LlamaGen (outside this repository, never committed) for the rows
# against the original `generate()`. Python: $PYTHON, else python3. A GPU image that lacks this project's other
# dependencies takes them as wheels in gpu_wheels/, built here and carried with the call:
#   .venv/bin/pip wheel --no-deps -w gpu_wheels . diffusers datasets evaluate multiprocess dill xxhash
# They are installed into a venv that sees the image's own torch, transformers and accelerate.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu.sh: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False): skipped, nothing was checked"
    exit 0
fi
if [ -d gpu_wheels ]; then
    "$PYTHON" -m venv --system-site-packages /tmp/st-ar-gpu && PYTHON=/tmp/st-ar-gpu/bin/python
    "$PYTHON" -m pip install -q --no-index --no-deps gpu_wheels/*.whl || exit 1
fi
ORIGINAL=${1:+--original $1}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
status=0
step() { echo; echo "== $1"; shift; timeout 300 "$@" || { echo "FAILED (exit $?): $*"; status=1; }; }

step "CUDA tests of the suite (SDPA with masks, bf16, compiled decoding with CUDA graphs, CPU offload)" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests
cd benchmarks
step "LlamaGen-B sampling, bf16, with and without compile_decoding (tokens checked against the eager path)" \
    "$PYTHON" bench_sampling.py --dtypes bf16 --batches 1 8 32 --compile --no-reference --repeats 3 $ORIGINAL
step "VAR-d16 and FlexVAR-d16 sampling, bf16" \
    "$PYTHON" bench_scalewise.py --dtypes bf16 --batches 1 8 32 --no-reference --repeats 3
step "ST-AR training step against the baseline step, bf16" \
    "$PYTHON" bench_training.py --dtypes bf16 --sequences 32
step "SAR training step against teacher forcing, FlexVAR-d16 (16 blocks), bf16 and fp32" \
    "$PYTHON" bench_sar.py --dtypes bf16 fp32 --batch 8 --repeats 3
step "Prologue-B sampling (split CFG) against LlamaGen-B, bf16" \
    "$PYTHON" bench_prologue.py --dtypes bf16 --batches 1 8 32 --no-reference --repeats 3
step "Prologue's phase-1 step against the plain tokenizer step" \
    "$PYTHON" bench_prologue_tokenizer.py --batch 8 --repeats 3
exit $status
