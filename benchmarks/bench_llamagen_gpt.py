"""Throughput of LlamaGen-B (random weights) on this machine: full forward and KV-cached decoding, fp32 and bf16.

Each measurement prints its baseline from the same run and the ratio:
- forward: SDPA attention against the eager (matmul + softmax) attention,
- decoding: the static-KV-cache step against recomputing the whole prefix for every token (no cache),
and the fraction of this machine's matmul peak, measured here with a large square matmul in the same dtype. Decoding
small batches is bound by reading the weights (and the filled KV cache) once per step instead: its floor is
`measure.decoding_step_floor` (bytes read / read bandwidth, or FLOPs / peak where larger), and the script prints the
fraction of that floor reached.

    python benchmarks/bench_llamagen_gpt.py [--size B] [--batch 8] [--decode-tokens 64] [--dtypes fp32 bf16]
"""

import argparse
import copy

import torch
from measure import decoding_step_floor, forward_flops_per_token, matmul_peak_flops, memory_bandwidth, timed
from transformers import StaticCache

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration
from st_ar_hf.pipelines.decoding_llamagen import decode_one_token, prefill

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@torch.no_grad()
def bench_forward(model, batch):
    config = model.config
    tokens = torch.randint(0, config.vocab_size, (batch, config.block_size - 1))
    labels = torch.randint(0, config.num_classes, (batch,))
    seconds = timed(lambda: model(tokens, labels))
    flops = batch * config.block_size * forward_flops_per_token(config, config.block_size / 2)
    return batch * config.block_size / seconds, flops / seconds


@torch.no_grad()
def bench_decode(model, batch, steps, use_cache):
    config = model.config
    labels = torch.randint(0, config.num_classes, (batch,))
    tokens = torch.randint(0, config.vocab_size, (batch, steps))

    def cached():
        cache = StaticCache(config=config, max_cache_len=model.max_sequence_length)
        prefill(model, labels, cache)
        position = torch.tensor([config.cls_token_num])
        for k in range(steps):
            decode_one_token(model, tokens[:, k], cache, position)
            position += 1

    def recompute():
        for k in range(steps):
            model(input_ids=tokens[:, : k + 1], class_labels=labels)

    seconds = timed(cached if use_cache else recompute, repeats=1)
    flops = batch * sum(forward_flops_per_token(config, config.cls_token_num + k + 1) for k in range(steps))
    return batch * steps / seconds, flops / seconds, steps / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="B")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LlamaGen-{args.size}, batch {args.batch}")
    for name in args.dtypes:
        dtype = DTYPES[name]
        sdpa = LlamaGenForImageGeneration(LlamaGenConfig.from_preset(args.size)).eval().to(dtype)
        eager = LlamaGenForImageGeneration._from_config(
            copy.deepcopy(sdpa.config), attn_implementation="eager"
        ).eval().to(dtype)
        eager.load_state_dict(sdpa.state_dict())
        peak, bandwidth = matmul_peak_flops(dtype), memory_bandwidth()
        mean_keys = sdpa.config.cls_token_num + args.decode_tokens / 2
        floor_steps_per_s = 1 / decoding_step_floor(sdpa, args.batch, mean_keys, peak, bandwidth)
        print(f"\n[{name}] matmul peak {peak / 1e9:.1f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s "
              f"-> at most {floor_steps_per_s:.1f} decode steps/s")
        rows = [
            ("forward (sdpa)", *bench_forward(sdpa, args.batch)),
            ("forward baseline (eager)", *bench_forward(eager, args.batch)),
            ("decode (static KV cache)", *bench_decode(sdpa, args.batch, args.decode_tokens, use_cache=True)),
            ("decode baseline (no cache)", *bench_decode(sdpa, args.batch, args.decode_tokens, use_cache=False)),
        ]
        for label, tokens_per_s, flops_per_s, *steps_per_s in rows:
            line = f"  {label:28s} {tokens_per_s:9.1f} tokens/s  {flops_per_s / 1e9:7.1f} GFLOP/s  {100 * flops_per_s / peak:5.1f}% of peak"
            if steps_per_s:
                line += f"  {steps_per_s[0]:5.1f} steps/s = {100 * steps_per_s[0] / floor_steps_per_s:5.1f}% of the floor"
            print(line)
        print(f"  ratio forward sdpa/eager: {rows[0][1] / rows[1][1]:.2f}x   "
              f"ratio decode cache/no-cache: {rows[2][1] / rows[3][1]:.2f}x")


if __name__ == "__main__":
    main()
