#!/usr/bin/env bash
# Baseline against ST-AR on the embedded digits, equal steps and sequences per step: trains both (the ST-AR run is
# the embedded default and is reused when present), probes layer 2 at five AR steps, samples 50 digits per class
# and compares them with the 500 test digits (EfficientNet-Lite0 features; not Inception), and measures where each
# layer attends (training/attention_maps.py). Results in runs/compare.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no "$@"; }
mkdir -p runs/compare
[ -f runs/default/pipeline/model_index.json ] || launch training/train.py
[ -f runs/default_baseline/pipeline/model_index.json ] || launch training/train.py --config training/configs/default_baseline.yaml
python - <<'PY'
import numpy as np
from st_ar_hf.training.data import center_crop_arr, decode_image, load_stream
images = [np.asarray(center_crop_arr(decode_image(e["image"]), 24)) for e in
          load_stream(data_files="runs/data/mnist5k/test-*.parquet").decode(False)]
np.savez("runs/compare/reference.npz", arr_0=np.stack(images))
PY
for run in default default_baseline; do
  launch training/linear_probe.py --embedded_dataset_dir runs/data/mnist5k --model runs/$run/pipeline --layer 2 \
      --steps 1,9,18,27,36 --epochs 30 --learning_rate 0.01 --output_dir runs/compare/$run
  launch training/sample_ddp.py --model runs/$run/pipeline --num_samples 500 --per_class --guidance_scale 2.0 \
      --out runs/compare/$run/samples.npz
  st-ar evaluate --feature-network efficientnet-lite0 --samples runs/compare/$run/samples.npz --reference runs/compare/reference.npz \
      --out runs/compare/$run/generation.json
  python training/attention_maps.py --model runs/$run/pipeline --embedded_dataset_dir runs/data/mnist5k \
      --output_dir runs/compare/$run/attention
done
