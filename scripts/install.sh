#!/usr/bin/env bash
# Creates .venv and installs the project on the CPU build of torch (pinned by constraints.txt). Sourced by the
# README's commands: scripts/test.sh and scripts/demo.sh.
set -euo pipefail
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -c constraints.txt torch==2.13.0
pip install -q -c constraints.txt -e ".[test,training,evaluation,demo]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
