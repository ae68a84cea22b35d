#!/usr/bin/env bash
# The README's main-job command until the training run lands: install, then scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
python scripts/demo.py "$@"
