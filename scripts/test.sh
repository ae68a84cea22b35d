#!/usr/bin/env bash
# The README's test command (and what CI runs): install, then run the test suite offline on CPU, two workers (one
# per core; the tests of a file share a worker, so its module fixtures are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
python -m pytest -n 2 --dist loadfile "$@"
