#!/usr/bin/env bash
# Creates .venv and installs the project on the CPU build of torch (pinned by constraints.txt). Sourced by the
# README's commands: scripts/test.sh and scripts/demo.sh. The install is editable, so a stamp of pyproject.toml and
# constraints.txt in .venv skips it while neither changes (delete .venv to force it).
set -euo pipefail
stamp=.venv/installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    python3 -m venv .venv
    . .venv/bin/activate
    pip install -q --upgrade pip
    pip install -q -c constraints.txt torch==2.13.0
    pip install -q -c constraints.txt -e ".[test,training,evaluation,demo]"
    rm -f .venv/installed-* && touch "$stamp"
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
