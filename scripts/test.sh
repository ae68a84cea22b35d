#!/usr/bin/env bash
# The README's test command (and what CI runs): install, then run the test suite offline on CPU, two workers (one
# per core; the tests of a file share a worker, so its module fixtures are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
# one torch thread per worker (and per process a test starts): torch's default of one per core runs four threads on
# two cores, where the suite's many tiny operations wait on each other (docs/hf_ecosystem.md has the timings)
export OMP_NUM_THREADS=1
python -m pytest -n 2 --dist loadfile "$@"
