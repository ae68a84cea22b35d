#!/usr/bin/env bash
# Installs the project with its test extras into .venv (CPU torch pinned by constraints.txt) and runs the tests
# offline. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -c constraints.txt torch==2.13.0
pip install -q -c constraints.txt -e ".[test]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest "$@"
