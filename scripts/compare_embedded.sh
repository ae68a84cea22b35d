#!/usr/bin/env bash
# ST-AR's loss ablation in miniature, over seeds: on the embedded digits, every variant below trains the embedded
# default's GPT (default.yaml) on one shared tokenizer, with the same steps and 64 token sequences per step; each is
# sampled (150 per class at the default guidance and top-p), probed (layer 2, every AR step) and scored (training/
# evaluate_digits.py: sample accuracy by a digit CNN, FID on EfficientNet-Lite0 features against the 4,500 train
# digits). Writes runs/compare/table.md (mean and spread over the seeds of each variant), probe.png (probe accuracy
# against AR step, every variant) and grids.png (each variant's final sample grid side by side).
#
#   bash scripts/compare_embedded.sh        # seed 0, every variant (11: about an hour on 2 cores)
#   bash scripts/compare_embedded.sh 0 1 2  # and seeds 1, 2 of CONFIRM (default: baseline masked unmasked temperature_0.5)
# Measured on the 2-core machine: two variants (train, sample, score, probe) in 10-11 minutes side by side; the
# eight confirming runs of seeds 1 and 2 take about 45 minutes. A run of ST-AR trains for 6-9 minutes on one core
# with another beside it, the baseline 5-7, `unmasked` 9-10.
#   VARIANTS="baseline split" bash scripts/compare_embedded.sh 0 1 2   # chosen variants (OUT=folder: elsewhere)
#
# Two parts run at a time (one core each); every finished part is kept, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
. scripts/jobs.sh
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no "$@"; }
out=${OUT:-runs/compare} data=runs/data/mnist5k
mkdir -p $out/logs
seeds=("${@:-0}")

# Each variant is the default config plus these flags, written out in full so that the table does not move when the
# defaults do: 32 images x 2 views or 64 images x 1 view, 64 token sequences per step either way.
star="--train_batch_size 32 --num_views 2 --mim_weight 1 --temperature 0.2 --ema_decay 0.99"
declare -A flags=(
  [baseline]="--train_batch_size 64 --num_views 1 --mim_weight 0 --step_weight 0 --view_weight 0"
  [baseline_32x2]="--train_batch_size 32 --num_views 2 --mim_weight 0 --step_weight 0 --view_weight 0"
  [mim]="$star --ar_pass masked --step_weight 0 --view_weight 0"
  [mim_step]="$star --ar_pass masked --step_weight 0.5 --view_weight 0"
  [mim_view]="$star --ar_pass masked --step_weight 0 --view_weight 0.5"
  [masked]="$star --ar_pass masked --step_weight 0.5 --view_weight 0.5"
  [unmasked]="$star --ar_pass unmasked --step_weight 0.5 --view_weight 0.5"
  [split]="$star --ar_pass split --step_weight 0.5 --view_weight 0.5"
  [ema_0.9999]="$star --ar_pass masked --step_weight 0.5 --view_weight 0.5 --ema_decay 0.9999"
  [temperature_0.1]="$star --ar_pass masked --step_weight 0.5 --view_weight 0.5 --temperature 0.1"
  [temperature_0.5]="$star --ar_pass masked --step_weight 0.5 --view_weight 0.5 --temperature 0.5"
)
order="baseline baseline_32x2 mim mim_step mim_view masked unmasked split ema_0.9999 temperature_0.1 temperature_0.5"
confirm=${CONFIRM:-baseline masked unmasked temperature_0.5}
read -r guidance top_p size < <(python -c "import yaml; c = yaml.safe_load(open('training/configs/default.yaml'))
print(c['validation_guidance_scale'], c['validation_top_p'], c['image_size'])")
steps=$(seq -s, 1 $(( (size / 4) ** 2 )))  # every AR step of the 4x-downsampled token grid

tokenizer=$out/tokenizer/vqvae
[ -f $tokenizer/config.json ] || add "" "launch training/train_tokenizer.py --config training/configs/tokenizer_default.yaml \
    --output_dir $out/tokenizer > $out/logs/tokenizer.log 2>&1"
cache=$out/evaluation_cache  # the digit classifier and the reference features, made by the first evaluation
cached="$cache/classifier-$size/model.safetensors $cache/reference-train-$size.npz"
first=
for seed in "${seeds[@]}"; do
  for variant in ${VARIANTS:-$order}; do
    [ "$seed" = 0 ] || [ -n "${VARIANTS:-}" ] || [[ " $confirm " == *" $variant "* ]] || continue
    run=$out/$variant-$seed
    [ -f $run/pipeline/model_index.json ] || add $tokenizer/config.json "launch training/train.py \
        --config training/configs/default.yaml --tokenizer_config null --vqvae $tokenizer ${flags[$variant]} \
        --seed $seed --output_dir $run \
        --validation_steps 0 --sample_accuracy_per_class 0 > $out/logs/train_$variant-$seed.log 2>&1"
    [ -f $run/samples.npz ] || add $run/pipeline/model_index.json "launch training/sample_ddp.py --model $run/pipeline \
        --num_samples 1500 --per_class --guidance_scale $guidance --top_p $top_p --batch_size 250 --seed $seed \
        --output_file $run/samples.npz > $out/logs/sample_$variant-$seed.log 2>&1"
    [ -f $run/generation.json ] || add "$run/samples.npz ${first:+$cached}" "OMP_NUM_THREADS=1 python \
        training/evaluate_digits.py --embedded_dataset_dir $data --samples $run/samples.npz --cache_dir $cache \
        --output_file $run/generation.json > $out/logs/evaluate_$variant-$seed.log 2>&1"
    [ -f $run/probe/probe.json ] || add $run/pipeline/model_index.json "launch training/linear_probe.py \
        --embedded_dataset_dir $data --model $run/pipeline --layer 2 --steps $steps --epochs 30 --learning_rate 0.01 \
        --output_dir $run/probe > $out/logs/probe_$variant-$seed.log 2>&1"
    first=${first:-$run}
  done
done
run_jobs $out/logs
python scripts/compare_embedded_report.py $out "${seeds[*]}" ${VARIANTS:-$order}
echo "$SECONDS s in all"
