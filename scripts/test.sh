#!/usr/bin/env bash
# The README's test command (and what CI runs): install, then run the test suite offline on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
python -m pytest "$@"
