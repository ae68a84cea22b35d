"""Class-conditional sampling speed of Prologue-B (random weights) with split CFG: whole images (16 prologue tokens,
the EOS and 256 visual tokens) per second.

For each batch size, in the same run:
- fast path: `st_ar_hf.pipelines.decoding_prologue.generate`, what `STARPipeline` runs (static KV cache,
  [cond; null] in one forward, the paper's split CFG 0.7 / 3.75 / 0.2),
- baseline "original": Prologue's own `ARModel.sampling()` (KV cache, the same split CFG) on the same weights, when
  `--original` names a checkout of Zyriix/prologue (kept outside this repository; its Prologue-B AR is built there
  from its configs as train.sh's Prologue-B-B run, randomised, and converted here for the fast path),
- baseline "no cache": the whole [cond; null] sequence recomputed every step (batch 1 only: it is quadratic),
- LlamaGen-B at equal settings (CFG, batch, dtype): 256 tokens per image where Prologue decodes 273,
and the floor of one decoding step at the mean context: max(bytes read / read bandwidth, FLOPs / matmul peak), the
bytes being the weights but the embedding tables and the filled KV cache (`measure.decoding_step_floor`).
Each row is timed best of `--repeats` calls, the rows interleaved, after one warm-up call per row.

    python benchmarks/bench_prologue.py [--batches 1 4] [--dtypes fp32 bf16] [--repeats 2] [--original ../prologue]
"""

import argparse
import contextlib
import io
import sys

import torch
import torch.nn.functional as F
from measure import decoding_step_floor, interleaved_best, matmul_peak_flops, memory_bandwidth

from st_ar_hf import (LlamaGenConfig, LlamaGenForImageGeneration, PrologueConfig, PrologueForImageGeneration,
                      PrologueVQVAEConfig)
from st_ar_hf.models.prologue.convert_prologue import convert_prologue
from st_ar_hf.pipelines import decoding_llamagen, decoding_prologue
from st_ar_hf.pipelines.sampling import exponential_noise, sample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SPLIT_CFG = (0.7, 3.75, 0.2)


# the original's config layers for the AR stage (pipeline_utils.sh: $BASE,$AR_B,$TOK_Prologue,$TRAIN_AR) and what
# train.sh's "Prologue-B-B" run overrides that its AR reads (the rest are the tokenizer's and the trainer's)
ORIGINAL_CONFIGS = ("default", "ar/_defaults", "ar/base", "tokenizer/default", "tokenizer/prologue", "train/ar")
ORIGINAL_OVERRIDES = {"use_eos": True, "ARModel.ste_ar_embedding": True}


def build(dtype, device, original_checkout=None):
    """(Prologue-B, LlamaGen-B, original Prologue-B or None) with random weights. Without a checkout Prologue's
    residual gates are opened (they start closed); with one, Prologue-B is the random original converted."""
    torch.manual_seed(0)
    original = None
    if original_checkout is None:
        prologue = PrologueForImageGeneration(PrologueConfig.from_preset("B")).eval()
        with torch.no_grad():
            for layer in prologue.layers:
                layer.attn_gate.fill_(1.0)
                layer.mlp_gate.fill_(1.0)
    else:
        original, tokenizer = build_original(original_checkout)
        prologue = convert_prologue(original.state_dict(), tokenizer)
        original = original.to(device, dtype)
    llamagen = LlamaGenForImageGeneration(LlamaGenConfig.from_preset("B")).eval()
    torch.nn.init.normal_(llamagen.lm_head.weight, std=0.02)
    return prologue.to(device, dtype), llamagen.to(device, dtype), original


def build_original(checkout):
    """(the original's ARModel from its YAML configs with every parameter random, its tokenizer's config)."""
    sys.path.insert(0, checkout)
    from models import ARModel
    from omegaconf import OmegaConf
    from utils import build_ar_logit_mask

    OmegaConf.register_new_resolver("eval", eval, replace=True)  # as its utils.load_config
    config = OmegaConf.merge(*(OmegaConf.load(f"{checkout}/configs/{name}.yaml") for name in ORIGINAL_CONFIGS))
    for key, value in ORIGINAL_OVERRIDES.items():
        OmegaConf.update(config, key, value)
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints its settings
        original = ARModel(config).eval()
    with torch.no_grad():  # the gates are projections of the condition, near 0 at init: made O(1)
        for name, param in original.named_parameters():
            param.normal_(std=param.shape[-1] ** -0.5 if ".gate" in name else 0.02)
    visual, prologue = config.Quantizer.codebook_size, config.SemanticQuantizer.codebook_size
    # the per-step mask train_ar.py installs from its quantisers' all-zero position masks (prologue codes, EOS, visual)
    original.set_logit_mask(build_ar_logit_mask(torch.zeros(config.x_len, visual), torch.zeros(config.z_len, prologue),
                                                visual, prologue))
    return original, PrologueVQVAEConfig(image_size=config.image_size, patch_size=config.patch_size,
                                             num_prologue_tokens=config.z_len, codebook_size=visual,
                                             prologue_codebook_size=prologue)


def original_sampling_call(original, labels):
    """The original's sampler at SPLIT_CFG as its evaluation runs the paper's setting (pipeline_utils.sh's
    "sc:0.7:3.75:0.2": constant prologue scale, cosine visual ramp from 1), temperature 1, top-k/top-p off."""
    one_hot = F.one_hot(labels, original.num_classes).float()  # the null class is the last column
    prologue_scale, visual_scale, power = SPLIT_CFG
    return lambda: original.sampling(len(labels), one_hot, temperature=1.0, topK=None, topP=None, cache_kv=True,
                                     semantic_cfg_schedule="constant", semantic_cfg_scale=prologue_scale,
                                     visual_cfg_schedule="cosine", visual_cfg_scale=visual_scale,
                                     visual_cfg_power=power)


@torch.no_grad()
def no_cache_reference(model, class_labels, generator):
    """Every step runs the full [cond; null] sequence again; the same guidance, mask and sampling as the fast path."""
    config = model.config
    scales = decoding_prologue.guidance_scales(SPLIT_CFG, config.num_prologue_tokens, config.sequence_length)
    labels = torch.cat([class_labels, torch.full_like(class_labels, config.null_class_id)])
    tokens = torch.empty(len(class_labels), 0, dtype=torch.long, device=class_labels.device)
    for step in range(config.sequence_length):
        cond, uncond = model(input_ids=torch.cat([tokens, tokens]), class_labels=labels).logits[:, -1].chunk(2)
        logits = uncond + (cond - uncond) * scales[step]  # masked entries stay at the float32 minimum
        noise = exponential_noise(generator, logits.shape, logits.device)
        tokens = torch.cat([tokens, sample(logits, noise=noise)[:, None]], dim=1)
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) no-cache baseline")
    parser.add_argument("--original", metavar="DIR", help="a checkout of Zyriix/prologue to compare against")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per row (the best counts)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; Prologue-B (273 tokens/image) against LlamaGen-B (256), split CFG "
          f"{SPLIT_CFG} / CFG 2.0 (2x batch)")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        prologue, llamagen, original = build(dtype, device, args.original)
        config = prologue.config
        peak, bandwidth = matmul_peak_flops(dtype, device), memory_bandwidth(device)
        print(f"\n[{dtype_name}] matmul peak {peak / 1e12:.2f} TFLOP/s, read bandwidth {bandwidth / 1e9:.0f} GB/s")
        warmed_up = set()
        for batch in args.batches:
            labels = torch.randint(0, 1000, (batch,), device=device)
            rows = [
                ("Prologue fast (STARPipeline)", lambda: decoding_prologue.generate(
                    prologue, labels, SPLIT_CFG, generator=torch.Generator().manual_seed(0))),
                ("LlamaGen-B fast, equal settings", lambda: decoding_llamagen.generate(
                    llamagen, labels, 2.0, generator=torch.Generator().manual_seed(0))),
            ]
            if original is not None:
                rows.insert(1, ("baseline: original sampling()", original_sampling_call(original, labels)))
            if batch == 1 and not args.no_reference:
                rows.append(("Prologue baseline: no cache", lambda: no_cache_reference(
                    prologue, labels, torch.Generator().manual_seed(0))))
            floor = decoding_step_floor(prologue, 2 * batch, config.sequence_length / 2, peak, bandwidth) * config.sequence_length
            print(f"  batch {batch:3d}: Prologue floor {batch / floor:8.3f} images/s "
                  f"({1e3 * floor / config.sequence_length:.1f} ms/step)")
            best = interleaved_best(rows, args.repeats, warmed_up)
            fast_seconds = best[rows[0][0]]
            for label, seconds in best.items():
                print(f"    {label:34s} {batch / seconds:8.3f} images/s  {100 * floor / seconds:5.1f}% of Prologue's "
                      f"floor  Prologue fast path {seconds / fast_seconds:5.2f}x faster")


if __name__ == "__main__":
    main()
