"""Class-conditional sampling speed of the scale-wise family (VAR-d16 / FlexVAR-d16 shapes, random weights) with CFG
(the pipeline's default scales: 1.5 for VAR, 2.5 for FlexVAR): images per second of whole 10-scale token pyramids (680
tokens), tokens to pixels excluded but in the rows against the originals.

For each model, dtype and batch size, in the same run:
- fast path: `st_ar_hf.pipelines.decoding_scalewise.generate` (KV cache across scales, the [cond; null] batch in one
  forward, the AdaLN modulations computed once per call),
- baseline "no cache": the reference that reruns the whole teacher-forced sequence (block-causal mask) at every scale
  (at batch 1 only: it is slow),
- baseline "original": the original `autoregressive_infer_cfg` (top-k/top-p off, `more_smooth=False`, its tokenizer's
  decode to 256 px pixels included) when `--original-var` / `--original-flexvar` names a checkout of
  FoundationVision/VAR / jiaosiyu1999/FlexVAR (kept outside this repository; the transformer and tokenizer are built
  there with random weights and converted here, so every row of that model runs the converted weights), against the
  fast path followed by our tokenizer's decode (`ScaleWiseDecoding.decode_tokens`); bf16 runs the original as its demo
  does (fp32 weights under autocast),
and the floor: for every scale, max(bytes read / read bandwidth, FLOPs / matmul peak), both measured here, the bytes
being the weights the scale reads and the KV cache of the scales so far. The rows of a batch are interleaved
(`measure.interleaved_best`).

    python benchmarks/bench_scalewise.py [--models var flexvar] [--batches 1 8] [--dtypes fp32 bf16] [--depth 16]
        [--original-var ../VAR] [--original-flexvar ../FlexVAR]
"""

import argparse
import importlib
import sys

import torch
import torch.nn.functional as F
from measure import interleaved_best, matmul_peak_flops, memory_bandwidth

from st_ar_hf import (
    FlexVARConfig, FlexVARForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig, VARConfig, VARForImageGeneration,
    VARVQVAE, VARVQVAEConfig,
)
from st_ar_hf.models.llamagen.convert_llamagen import convert_llamagen_vq
from st_ar_hf.models.var.convert_var import convert_flexvar, convert_var, convert_var_vqvae
from st_ar_hf.pipelines.decoding_scalewise import ScaleWiseDecoding, generate, guidance_ratio
from st_ar_hf.pipelines.sampling import exponential_noise, filter_logits

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GUIDANCE = {"var": 1.5, "flexvar": 2.5}  # STARPipeline's defaults
OURS, ORIGINAL = "fast + decode", "original + decode"


def build(model: str, depth: int, dtype):
    """Random-weight transformer (VAR's init) of VAR's shape rule for `depth`, and the tokenizer."""
    torch.manual_seed(0)
    shape = dict(hidden_size=64 * depth, num_hidden_layers=depth, num_attention_heads=depth)
    if model == "var":
        transformer, vqvae = VARForImageGeneration(VARConfig(**shape)), VARVQVAE(VARVQVAEConfig())
    else:
        transformer = FlexVARForImageGeneration(FlexVARConfig(**shape))
        vqvae = LlamaGenVQVAE(LlamaGenVQVAEConfig(codebook_size=8912, codebook_embed_dim=32))
    torch.nn.init.normal_(transformer.lm_head.weight, std=0.02)  # VAR's head starts near zero: make logits vary
    return transformer.eval().to(dtype), vqvae.eval().to(dtype)


def build_original(model: str, depth: int, checkout: str, device):
    """((transformer, vqvae) converted from the original's, the original's sampler as fn(labels, guidance_scale, dtype)
    -> pixels): the original transformer and tokenizer built in `checkout` as its `build_vae_var` does, with random
    weights (the layers' default init kept for the tokenizer, which the original loads from a file)."""
    torch.manual_seed(0)
    # VAR and FlexVAR both have top-level `models` and `dist`: drop the other checkout's before importing
    for name in [name for name in sys.modules if name.split(".")[0] in ("models", "dist")]:
        del sys.modules[name]
    sys.path.insert(0, checkout)
    try:
        models = importlib.import_module("models")
    finally:
        sys.path.remove(checkout)
    shape = dict(depth=depth, embed_dim=64 * depth, num_heads=depth, attn_l2_norm=True, flash_if_available=False,
                 fused_if_available=False)
    if model == "var":
        vae = models.VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4)
        original = models.VAR(vae, **shape)
    else:
        vae = models.VQ_models["VQ-16"](codebook_size=8912, codebook_embed_dim=32)
        original = models.FlexVAR(vae, **shape)
    original.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    torch.nn.init.normal_(original.head.weight, std=0.02)  # as build(): make logits vary
    if model == "var":
        ours = convert_var(original.state_dict()), convert_var_vqvae(vae.state_dict())
    else:
        ours = convert_flexvar(original.state_dict()), convert_llamagen_vq(vae.state_dict())
    vae, original = vae.eval().to(device), original.eval().to(device)

    def sample(labels, cfg, dtype):
        with torch.autocast(device.type, dtype, enabled=dtype != torch.float32):  # bf16: as the originals' demos
            if model == "var":
                return original.autoregressive_infer_cfg(len(labels), labels, cfg=cfg, top_k=0, top_p=0.0,
                                                         more_smooth=False)
            return original.autoregressive_infer_cfg(vae, len(labels), labels, tuple(ours[0].config.patch_nums),
                                                     cfg=cfg, top_k=0, top_p=0.0, more_smooth=False)
    return ours, sample


@torch.no_grad()
def generate_and_decode(transformer, vqvae, labels, guidance_scale):
    """What STARPipeline runs: the fast path, then the tokenizer's decode to pixels."""
    maps, f_hat = generate(transformer, vqvae, labels, transformer.config.patch_nums, guidance_scale,
                           generator=torch.Generator().manual_seed(0))
    return ScaleWiseDecoding.decode_tokens(vqvae, maps, f_hat)


@torch.no_grad()
def no_cache_reference(transformer, vqvae, labels, guidance_scale, generator):
    """Every scale runs the whole [cond; uncond] sequence so far again; same sampling as the fast path."""
    config = transformer.config
    scales, flexvar = config.patch_nums, config.model_type == "flexvar"
    doubled = torch.cat([labels, torch.full_like(labels, config.null_class_id)])
    maps, vectors, f_hat, inputs, start = [], [], None, [], 0
    for k, side in enumerate(scales):
        logits = transformer(doubled, torch.cat(inputs, 1).repeat(2, 1, 1) if inputs else None, scales=scales).logits
        t = guidance_scale * guidance_ratio(config.model_type, k, scales, scales[-1])
        cond, uncond = logits[:, start:].chunk(2)
        guided = filter_logits(((1 + t) * cond - t * uncond).flatten(0, 1))
        noise = exponential_noise(generator, (len(labels), side * side, config.vocab_size), labels.device).flatten(0, 1)
        maps.append((guided.softmax(-1) / noise).argmax(-1).view(len(labels), side, side))
        vectors = vqvae.code_vectors(maps[-1])
        if flexvar and k + 1 < len(scales):
            inputs.append(F.interpolate(vectors, size=(scales[k + 1],) * 2, mode="bicubic").flatten(2).transpose(1, 2))
        elif not flexvar:
            f_hat, next_input = vqvae.next_scale_input(f_hat, vectors, k, scales)
            inputs += [next_input] if next_input is not None else []
        start += side * side
    return maps


def floor_seconds(config, batch: int, weight_bytes: float, element_size: int, peak: float, bandwidth: float) -> float:
    """Sum over scales of max(bytes read / bandwidth, matmul FLOPs / peak) for the doubled batch. Bytes: the weights
    and the keys and values of the context; FLOPs per token: 24 C^2 per block (qkv, out, MLP; the AdaLN modulations
    are computed once), 4 C x context for attention, 2 C V for the head."""
    hidden, seconds, context = config.hidden_size, 0.0, 0
    cache_bytes_per_token = 2 * config.num_hidden_layers * hidden * element_size
    for side in config.patch_nums:
        tokens = side * side
        context += tokens
        per_token = config.num_hidden_layers * (24 * hidden * hidden + 4 * hidden * context) + 2 * hidden * config.vocab_size
        step_bytes = weight_bytes + 2 * batch * context * cache_bytes_per_token
        seconds += max(step_bytes / bandwidth, 2 * batch * tokens * per_token / peak)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["var", "flexvar"], choices=["var", "flexvar"])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--guidance-scale", type=float, help="default: 1.5 for VAR, 2.5 for FlexVAR")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row (the best counts)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per row first")
    parser.add_argument("--no-reference", action="store_true", help="skip the no-cache baseline")
    parser.add_argument("--original-var", metavar="DIR", help="a checkout of FoundationVision/VAR to compare against")
    parser.add_argument("--original-flexvar", metavar="DIR",
                        help="a checkout of jiaosiyu1999/FlexVAR to compare against")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; d{args.depth} shapes, CFG per model (2x batch), top-k/top-p off")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        peak, bandwidth = matmul_peak_flops(dtype, device), memory_bandwidth(device)
        print(f"\n[{dtype_name}] matmul peak {peak / 1e12:.2f} TFLOP/s, read bandwidth {bandwidth / 1e9:.0f} GB/s")
        for model in args.models:
            guidance = GUIDANCE[model] if args.guidance_scale is None else args.guidance_scale
            checkout = getattr(args, f"original_{model}")
            if checkout:
                (transformer, vqvae), original = build_original(model, args.depth, checkout, device)
            else:
                transformer, vqvae = build(model, args.depth, dtype)
            transformer, vqvae = transformer.to(device, dtype), vqvae.to(device, dtype)
            # weights read at every scale: the blocks and the head (the AdaLN projections run once per call)
            weight_bytes = sum(p.numel() * p.element_size() for n, p in transformer.named_parameters()
                               if n.startswith("layers.") and "adaln" not in n or n.startswith("lm_head."))
            print(f"  {type(transformer).__name__}: {transformer.num_parameters() / 1e6:.0f}M parameters, "
                  f"{weight_bytes / 1e6:.0f} MB read per scale, CFG {guidance}")
            for batch in args.batches:
                labels = torch.randint(0, 1000, (batch,), device=device)
                floor = floor_seconds(transformer.config, batch, weight_bytes, dtype.itemsize, peak, bandwidth)
                rows = [("fast (KV cache)", lambda: generate(transformer, vqvae, labels, transformer.config.patch_nums,
                                                             guidance, generator=torch.Generator().manual_seed(0)))]
                if batch == 1 and not args.no_reference:
                    rows.append(("baseline: no cache", lambda: no_cache_reference(
                        transformer, vqvae, labels, guidance, torch.Generator().manual_seed(0))))
                if checkout:
                    rows.append((OURS, lambda: generate_and_decode(transformer, vqvae, labels, guidance)))
                    rows.append((ORIGINAL, lambda: original(labels, guidance, dtype)))
                print(f"    batch {batch}: floor {batch / floor:7.3f} images/s")
                for label, run in rows:
                    for _ in range(args.warmup):
                        run()
                best = interleaved_best(rows, args.repeats, {label for label, _ in rows})
                fast_seconds = best["fast (KV cache)"]
                for label, seconds in best.items():
                    if label == ORIGINAL:
                        print(f"      {label:20s} {batch / seconds:7.3f} images/s  ours / original = "
                              f"{seconds / best[OURS]:5.2f}x")
                    elif label == OURS:
                        print(f"      {label:20s} {batch / seconds:7.3f} images/s  (tokens to pixels, as STARPipeline)")
                    else:
                        print(f"      {label:20s} {batch / seconds:7.3f} images/s  {100 * floor / seconds:5.1f}% of "
                              f"floor  this / fast = {seconds / fast_seconds:5.2f}x")


if __name__ == "__main__":
    main()
