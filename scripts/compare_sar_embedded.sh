#!/usr/bin/env bash
# The embedded SAR demo: on the MNIST-5k digits, pre-train a small FlexVAR by teacher forcing (after its tokenizer),
# then continue it for the same 200 steps twice from the same checkpoint, by teacher forcing alone
# (sar_embedded_tf.yaml) and with SAR (sar_embedded.yaml), for seeds 0, 1 and 2; sample 150 digits per class from
# every model with the same noise and score them (training/evaluate_digits.py: FID on EfficientNet-Lite0 features
# against the 4,500 train digits, sample accuracy by a digit CNN trained on the train split). Results in
# runs/sar_embedded/compare/results.json and a summary table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
. scripts/jobs.sh
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no "$@"; }
runs=runs/sar_embedded out=runs/sar_embedded/compare
cache=$out/evaluation_cache  # the digit CNN and the reference features, made by the first evaluation
mkdir -p $out
[ -f $runs/pretrain/pipeline/model_index.json ] || launch --num_cpu_threads_per_process 2 \
    training/train_scalewise.py --config training/configs/flexvar_embedded.yaml   # alone on the machine: 2 threads
# Then two parts at a time, one thread each, every part as soon as its inputs exist, in this order of preference:
# the pre-trained model's sampler and evaluation (which also trains the digit CNN and scores the reference digits
# into $cache), the six continuations, then the other samplers (150 digits per class with the same noise) and
# evaluations. Finished parts are kept, so a rerun resumes.
sample() { [ -f $out/$1.npz ] || add $runs/$1/pipeline/model_index.json "launch training/sample_ddp.py \
    --model $runs/$1/pipeline --num_samples 1500 --per_class --guidance_scale 1.5 --batch_size 100 \
    --output_file $out/$1.npz > $out/sample_$1.log 2>&1"; }
evaluate() { [ -f $out/$1.json ] || add "$out/$1.npz $2" "OMP_NUM_THREADS=1 python training/evaluate_digits.py \
    --embedded_dataset_dir runs/data/mnist5k --samples $out/$1.npz --cache_dir $cache --output_file $out/$1.json \
    > $out/evaluate_$1.log 2>&1"; }
sample pretrain
evaluate pretrain ""
continuations="tf-0 sar-0 tf-1 sar-1 tf-2 sar-2"
for model in $continuations; do
  config=training/configs/$([ ${model%-*} = sar ] && echo sar_embedded || echo sar_embedded_tf).yaml
  [ -f $runs/$model/pipeline/model_index.json ] || add "" "launch training/train_scalewise.py --config $config \
      --seed ${model#*-} --output_dir $runs/$model --validation_steps 0 > $out/$model.log 2>&1"
done
for model in $continuations; do sample $model; done
for model in $continuations; do evaluate $model "$cache/classifier-24/model.safetensors $cache/reference-train-24.npz"; done
run_jobs $out
python - <<'PY'
import json
import numpy as np
models = ["pretrain"] + [f"{mode}-{seed}" for seed in range(3) for mode in ("tf", "sar")]
parts = {model: json.load(open(f"runs/sar_embedded/compare/{model}.json")) for model in models}
rows = {model: next(iter(part["samples"].values())) for model, part in parts.items()}
results = {**parts["pretrain"], "samples": {model: rows[model] for model in models}}
json.dump(results, open("runs/sar_embedded/compare/results.json", "w"), indent=1)
print(f"digit classifier on the test split: {results['classifier_held_out_accuracy']:.3f}")
print("| model | FID (EfficientNet-Lite0) | class accuracy |\n|---|---|---|")
print(f"| pre-trained (800 steps) | {rows['pretrain']['fid']:.2f} | {rows['pretrain']['sample_accuracy']:.3f} |")
for mode, name in (("tf", "+200 steps teacher forcing"), ("sar", "+200 steps SAR")):
    fid = np.array([rows[f"{mode}-{s}"]["fid"] for s in range(3)])
    acc = np.array([rows[f"{mode}-{s}"]["sample_accuracy"] for s in range(3)])
    print(f"| {name} (seeds 0-2) | {fid.mean():.2f} ± {fid.std(ddof=1):.2f} | {acc.mean():.3f} ± {acc.std(ddof=1):.3f} |")
for s in range(3):  # same seed: same checkpoint, data order and scale schedules
    tf, sar = rows[f"tf-{s}"], rows[f"sar-{s}"]
    print(f"seed {s}: SAR - TF: FID {sar['fid'] - tf['fid']:+.2f}, accuracy {sar['sample_accuracy'] - tf['sample_accuracy']:+.3f}")
PY
