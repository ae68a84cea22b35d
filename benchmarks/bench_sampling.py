"""Class-conditional sampling speed of LlamaGen-B (random weights) with CFG: whole token grids per second.

For each dtype and batch size, in the same run:
- fast path: `st_ar_hf.pipelines.decoding_llamagen.generate`, what `STARPipeline` runs, on the model as loaded by
  default (static KV cache, [cond; uncond] in one forward, SDPA),
- baseline "original": LlamaGen's own `generate()` on the same weights, when `--original` names a checkout of
  FoundationVision/LlamaGen (kept outside this repository; its GPT is built there and converted here),
- baseline "eager": the fast loop with the eager (matmul + softmax) attention,
- baseline "no cache": the reference that recomputes the whole sequence every step (batch 1 only: it is quadratic),
and the floor of one decoding step at the mean context: max(bytes read / read bandwidth, FLOPs / matmul peak), the
bytes being the weights but the embedding tables and the filled KV cache (`measure.decoding_step_floor`).
Top-k and top-p are off in every row; each row is timed best of `--repeats` calls, the rows interleaved, after
one warm-up call per row.

    python benchmarks/bench_sampling.py [--batches 1 4 8] [--dtypes fp32 bf16] [--original ../LlamaGen] [--compile]
"""

import argparse
import copy
import sys

import torch
from measure import decoding_step_floor, interleaved_best, matmul_peak_flops, memory_bandwidth

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration
from st_ar_hf.models.llamagen.convert_llamagen import convert_llamagen_gpt
from st_ar_hf.pipelines.decoding_llamagen import generate
from st_ar_hf.pipelines.sampling import exponential_noise, guide, sample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(config, size, original_checkout):
    """(ours, original or None) with the same random weights; the head made non-zero so that logits vary."""
    torch.manual_seed(0)
    if original_checkout is None:
        ours = LlamaGenForImageGeneration(config)
        torch.nn.init.normal_(ours.lm_head.weight, std=0.02)
        return ours.eval(), None
    sys.path.insert(0, original_checkout)
    from autoregressive.models.gpt import GPT_models

    original = GPT_models[f"GPT-{size}"](block_size=config.block_size, vocab_size=config.vocab_size).eval()
    torch.nn.init.normal_(original.output.weight, std=0.02)
    return convert_llamagen_gpt(original.state_dict(), size=size, block_size=config.block_size), original


def original_generate_call(original, labels, guidance_scale):
    from autoregressive.models.generate import generate as llamagen_generate

    return lambda: llamagen_generate(original, labels, original.block_size, cfg_scale=guidance_scale, top_k=0, top_p=1.0)


@torch.no_grad()
def no_cache_reference(model, class_labels, guidance_scale, generator):
    """Every step runs the full [cond; uncond] sequence again; same sampling as the fast path."""
    labels = torch.cat([class_labels, torch.full_like(class_labels, model.config.null_class_id)])
    tokens = torch.empty(len(class_labels), 0, dtype=torch.long, device=class_labels.device)
    for _ in range(model.config.block_size):
        logits = guide(model(input_ids=torch.cat([tokens, tokens]), class_labels=labels).logits[:, -1], guidance_scale)
        noise = exponential_noise(generator, logits.shape, logits.device)
        tokens = torch.cat([tokens, sample(logits, noise=noise)[:, None]], dim=1)
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="B")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd decoding step")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) no-cache baseline")
    parser.add_argument("--original", metavar="DIR", help="a checkout of FoundationVision/LlamaGen to compare against")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per row (the best counts)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; LlamaGen-{args.size}, {args.block_size} tokens/image, "
          f"CFG {args.guidance_scale} (2x batch)")
    config = LlamaGenConfig.from_preset(args.size, block_size=args.block_size)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        sdpa, original = build(config, args.size, args.original)
        sdpa = sdpa.to(device, dtype)
        original = original.to(device, dtype) if original is not None else None  # as LlamaGen's sample_c2i.py casts it
        eager = LlamaGenForImageGeneration._from_config(copy.deepcopy(config), attn_implementation="eager")
        eager.load_state_dict(sdpa.state_dict())
        eager = eager.eval().to(device, dtype)
        peak, bandwidth = matmul_peak_flops(dtype, device), memory_bandwidth(device)
        print(f"\n[{dtype_name}] matmul peak {peak / 1e12:.2f} TFLOP/s, read bandwidth {bandwidth / 1e9:.0f} GB/s")
        warmed_up = set()
        for batch in args.batches:
            labels = torch.randint(0, config.num_classes, (batch,), device=device)
            rows = [("fast (the model as loaded)", lambda: generate(sdpa, labels, args.guidance_scale,
                                                               generator=torch.Generator().manual_seed(0)))]
            if original is not None:
                rows.append(("baseline: original generate()", original_generate_call(original, labels, args.guidance_scale)))
            if args.compile:
                rows.append(("fast + torch.compile", lambda: generate(sdpa, labels, args.guidance_scale, compile=True,
                                                                      generator=torch.Generator().manual_seed(0))))
            rows.append(("baseline: eager attention", lambda: generate(eager, labels, args.guidance_scale,
                                                                       generator=torch.Generator().manual_seed(0))))
            if batch == 1 and not args.no_reference:
                rows.append(("baseline: no cache", lambda: no_cache_reference(sdpa, labels, args.guidance_scale,
                                                                              torch.Generator().manual_seed(0))))
            mean_keys = config.cls_token_num + config.block_size / 2
            floor = decoding_step_floor(sdpa, 2 * batch, mean_keys, peak, bandwidth) * config.block_size  # per grid batch
            print(f"  batch {batch:3d}: floor {batch / floor:8.2f} images/s ({1e3 * floor / config.block_size:.1f} ms/step)")
            best = interleaved_best(rows, args.repeats, warmed_up)
            fast_seconds = best[rows[0][0]]
            for label, seconds in best.items():
                print(f"    {label:30s} {batch / seconds:8.3f} images/s {batch * config.block_size / seconds:7.0f} tokens/s"
                      f"  {100 * floor / seconds:5.1f}% of floor  fast path {seconds / fast_seconds:5.2f}x faster")
            if args.compile:
                eager_tokens, compiled_tokens = (generate(sdpa, labels, args.guidance_scale, compile=compile,
                                                          generator=torch.Generator().manual_seed(0)) for compile in (False, True))
                print(f"    torch.compile tokens equal to the eager path's: {torch.equal(eager_tokens, compiled_tokens)}")


if __name__ == "__main__":
    main()
