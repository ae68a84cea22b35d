#!/usr/bin/env bash
# The embedded Prologue demo: on the MNIST-5k digits, train the small Prologue tokenizer jointly with its AR prior
# (prologue_tokenizer_embedded.yaml) and, with the same budget, the plain 2D tokenizer (tokenizer_2d_embedded.yaml);
# pre-tokenise the train split with each (the centre crop; digits are not mirrored); train the same small AR on each for seeds 0, 1
# and 2; sample 150 digits per class from every AR without guidance (temperature 1) and score them
# (training/evaluate_digits.py: FID on EfficientNet-Lite0 features against the 4,500 train digits, sample accuracy by
# a digit CNN trained on the train split); measure the tokenizers' reconstruction, the linear probe on the
# prologue tokens against the first visual tokens, and a grid of prologue-fixed resamples
# (training/evaluate_prologue_digits.py). Two parts run at a time, each as soon as its inputs exist. Results in
# runs/prologue_embedded/compare/ (one log per part) and a table on stdout.
# POST=1 adds Prologue-Post (prologue_post_tokenizer_embedded.yaml: a prologue encoder over the frozen 2D tokenizer)
# as a third row. RUN=<folder> and PROLOGUE_ARGS="--flag value ..." run a variant of the Prologue tokenizer elsewhere
# (parts already in the folder, e.g. a copied 2D baseline, are kept). TOKENIZER_STEPS and AR_STEPS change the
# budgets of the configs (400 and 300, which fit the run in about 15 minutes). Every finished part is kept: a rerun
# resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no "$@"; }
run=${RUN:-runs/prologue_embedded}
out=$run/compare
export OUT=$out
mkdir -p $out
kinds="prologue 2d$([ "${POST:-0}" = 1 ] && echo " post" || true)"
data=runs/data/mnist5k

# Every part is a job "files it needs|command" (scripts/jobs.sh), listed in priority order.
. scripts/jobs.sh
declare -A tokenizer_config=([prologue]=prologue_tokenizer_embedded [2d]=tokenizer_2d_embedded [post]=prologue_post_tokenizer_embedded)
for kind in $kinds; do
  need=$([ $kind = post ] && echo $run/tokenizer_2d/vqvae/config.json || true)
  extra=$([ $kind = prologue ] && echo "${PROLOGUE_ARGS:-}" || ([ $kind = post ] && echo "--model $run/tokenizer_2d/vqvae") || true)
  [ -f $run/tokenizer_$kind/vqvae/config.json ] || add "$need" "launch training/train_tokenizer.py \
      --config training/configs/${tokenizer_config[$kind]}.yaml --output_dir $run/tokenizer_$kind $extra \
      ${TOKENIZER_STEPS:+--max_train_steps $TOKENIZER_STEPS} > $out/tokenizer_$kind.log 2>&1"
  [ -f $run/codes_$kind/codes_info.json ] || add $run/tokenizer_$kind/vqvae/config.json "OMP_NUM_THREADS=1 python \
      training/extract_codes.py --embedded_dataset_dir $data --vqvae $run/tokenizer_$kind/vqvae --image_size 24 \
      --ten_crop false --random_flip false --batch_size 250 --output_dir $run/codes_$kind > $out/codes_$kind.log 2>&1"
done
samples=()
for seed in 0 1 2; do
  for kind in $kinds; do
    [ -f $run/ar_$kind-$seed/pipeline/model_index.json ] || add $run/codes_$kind/codes_info.json "launch training/train.py \
        --config training/configs/prologue_ar_embedded.yaml --train_codes $run/codes_$kind --seed $seed \
        --output_dir $run/ar_$kind-$seed --validation_steps 0 ${AR_STEPS:+--max_train_steps $AR_STEPS} \
        > $out/ar_$kind-$seed.log 2>&1"
    [ -f $out/$kind-$seed.npz ] || add $run/ar_$kind-$seed/pipeline/model_index.json "launch training/sample_ddp.py \
        --model $run/ar_$kind-$seed/pipeline --num_samples 1500 --per_class --guidance_scale 1 --temperature 1 \
        --batch_size 100 --seed $seed --output_file $out/$kind-$seed.npz > $out/sample_$kind-$seed.log 2>&1"
    samples+=($out/$kind-$seed.npz)
  done
done
tokenizers=$(for kind in $kinds; do echo $run/tokenizer_$kind/vqvae/config.json; done)
add "$tokenizers $run/ar_prologue-0/pipeline/model_index.json" "OMP_NUM_THREADS=1 python training/evaluate_prologue_digits.py \
    --embedded_dataset_dir $data --prologue $run/tokenizer_prologue/vqvae --baseline $run/tokenizer_2d/vqvae \
    $([[ $kinds == *post* ]] && echo "--post $run/tokenizer_post/vqvae" || true) --pipeline $run/ar_prologue-0/pipeline \
    --output_file $out/tokenizers.json > $out/score_tokenizers.log 2>&1"
add "${samples[*]}" "python training/evaluate_digits.py --embedded_dataset_dir $data --samples ${samples[*]} \
    --output_file $out/generation.json > $out/score_samples.log 2>&1"

run_jobs $out
echo "$SECONDS s in all"
KINDS="$kinds" python - <<'PY'
import json
import os
import numpy as np
out = os.environ["OUT"]
generation, tokenizers = json.load(open(f"{out}/generation.json")), json.load(open(f"{out}/tokenizers.json"))
rows = {k.split("/")[-1][:-4]: v for k, v in generation["samples"].items()}
print(f"digit classifier on the test split: {generation['classifier_held_out_accuracy']:.3f}")
print("| tokenizer | gFID, no CFG (seeds 0-2) | class accuracy, no CFG | PSNR | SSIM | rFID | linear probe |\n|---|---|---|---|---|---|---|")
kinds = sorted(os.environ["KINDS"].split(), key=["2d", "prologue", "post"].index)
for kind in kinds:
    fid = np.array([rows[f"{kind}-{s}"]["fid"] for s in range(3)])
    acc = np.array([rows[f"{kind}-{s}"]["sample_accuracy"] for s in range(3)])
    t = tokenizers[kind]
    probe = t.get("probe_prologue_tokens", next(v for k, v in t.items() if k.startswith("probe_first")))
    print(f"| {kind} | {fid.mean():.2f} ± {fid.std(ddof=1):.2f} | {acc.mean():.3f} ± {acc.std(ddof=1):.3f} | "
          f"{t['psnr']:.2f} | {t['ssim']:.3f} | {t['rfid']:.2f} | {probe:.3f} |")
for kind in kinds[1:]:
    for s in range(3):
        p, b = rows[f"{kind}-{s}"], rows[f"2d-{s}"]
        print(f"seed {s}: {kind} - 2d: gFID {p['fid'] - b['fid']:+.2f}, accuracy {p['sample_accuracy'] - b['sample_accuracy']:+.3f}")
PY
