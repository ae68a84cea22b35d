"""Class-conditional sampling speed of the scale-wise family (VAR-d16 / FlexVAR-d16 shapes, random weights) with CFG:
images per second of whole 10-scale token pyramids (680 tokens), tokens to pixels excluded.

For each model, dtype and batch size, in the same run:
- fast path: `st_ar_hf.pipelines.decoding_scalewise.generate` (KV cache across scales, the [cond; null] batch in one
  forward, the AdaLN modulations computed once per call),
- baseline "no cache": the reference that reruns the whole teacher-forced sequence (block-causal mask) at every scale
  (at batch 1 only: it is slow),
and the floor: for every scale, max(bytes read / read bandwidth, FLOPs / matmul peak), both measured here, the bytes
being the weights the scale reads and the KV cache of the scales so far.

    python benchmarks/bench_scalewise.py [--models var flexvar] [--batches 1 8] [--dtypes fp32 bf16] [--depth 16]
"""

import argparse

import torch
import torch.nn.functional as F
from measure import matmul_peak_flops, memory_bandwidth, timed

from st_ar_hf import (
    FlexVARConfig, FlexVARForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig, VARConfig, VARForImageGeneration,
    VARVQVAE, VARVQVAEConfig,
)
from st_ar_hf.pipelines.decoding_scalewise import generate, guidance_ratio
from st_ar_hf.pipelines.sampling import exponential_noise, filter_logits

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row (the best counts)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per row first")
    parser.add_argument("--no-reference", action="store_true", help="skip the no-cache baseline")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; d{args.depth} shapes, CFG {args.guidance_scale} (2x batch), top-k/top-p off")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        peak, bandwidth = matmul_peak_flops(dtype, device), memory_bandwidth(device)
        print(f"\n[{dtype_name}] matmul peak {peak / 1e12:.2f} TFLOP/s, read bandwidth {bandwidth / 1e9:.0f} GB/s")
        for model in args.models:
            transformer, vqvae = build(model, args.depth, dtype)
            transformer, vqvae = transformer.to(device), vqvae.to(device)
            # weights read at every scale: the blocks and the head (the AdaLN projections run once per call)
            weight_bytes = sum(p.numel() * p.element_size() for n, p in transformer.named_parameters()
                               if n.startswith("layers.") and "adaln" not in n or n.startswith("lm_head."))
            print(f"  {type(transformer).__name__}: {transformer.num_parameters() / 1e6:.0f}M parameters, "
                  f"{weight_bytes / 1e6:.0f} MB read per scale")
            for batch in args.batches:
                labels = torch.randint(0, 1000, (batch,), device=device)
                floor = floor_seconds(transformer.config, batch, weight_bytes, dtype.itemsize, peak, bandwidth)
                rows = [("fast (KV cache)", lambda: generate(transformer, vqvae, labels, transformer.config.patch_nums,
                                                             args.guidance_scale, generator=torch.Generator().manual_seed(0)))]
                if batch == 1 and not args.no_reference:
                    rows.append(("baseline: no cache", lambda: no_cache_reference(
                        transformer, vqvae, labels, args.guidance_scale, torch.Generator().manual_seed(0))))
                print(f"    batch {batch}: floor {batch / floor:7.3f} images/s")
                fast_seconds = None
                for label, run in rows:
                    seconds = timed(run, repeats=args.repeats, warmup=args.warmup)
                    fast_seconds = fast_seconds or seconds
                    print(f"      {label:20s} {batch / seconds:7.3f} images/s  {100 * floor / seconds:5.1f}% of floor  "
                          f"this / fast = {seconds / fast_seconds:5.2f}x")


if __name__ == "__main__":
    main()
