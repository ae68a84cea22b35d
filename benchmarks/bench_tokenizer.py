"""Encode and decode throughput of the VQ-16 tokenizer (random weights) at 256x256, fp32 and bf16 autocast.

Baselines from the same run: each bf16 figure is compared with fp32, and channels_last with the default
contiguous layout. The floor of a call is its convolution and matmul FLOPs (counted by torch's FlopCounterMode)
over the machine's peak, taken as the faster of a 2048^2 matmul and a 256-channel 3x3 convolution measured here in
the same dtype (on AMD CPUs oneDNN's convolutions run about twice as fast as MKL's matmul); the script prints the
fraction of that floor reached.

    python benchmarks/bench_tokenizer.py [--batch 4] [--image-size 256] [--dtypes fp32 bf16] [--device cpu]
"""

import argparse

import torch
import torch.nn.functional as F
from measure import matmul_peak_flops, timed
from torch.utils.flop_counter import FlopCounterMode

from st_ar_hf import LlamaGenVQVAE, LlamaGenVQVAEConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def conv_peak_flops(dtype, device, channels=256, size=64, batch=2) -> float:
    x = torch.randn(batch, channels, size, size, dtype=dtype, device=device)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype, device=device)
    return 2 * batch * channels * channels * 9 * size * size / timed(lambda: F.conv2d(x, w, padding=1), repeats=5)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    vqvae = LlamaGenVQVAE(LlamaGenVQVAEConfig.from_preset("VQ-16")).to(device).eval()
    pixels = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device) * 2 - 1
    indices = vqvae.encode(pixels).indices
    calls = {"encode": lambda: vqvae.encode(pixels), "decode": lambda: vqvae.decode(indices)}
    flops = {name: count_flops(fn) for name, fn in calls.items()}
    print(f"VQ-16 ({vqvae.num_parameters() / 1e6:.1f}M), batch {args.batch} at {args.image_size}px, {device}; "
          f"GFLOP per image: encode {flops['encode'] / args.batch / 1e9:.0f}, decode {flops['decode'] / args.batch / 1e9:.0f}")

    results = {}
    for layout in ("contiguous", "channels_last"):
        vqvae.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        for name in args.dtypes:
            dtype = DTYPES[name]
            peak = max(matmul_peak_flops(dtype, device), conv_peak_flops(dtype, device))
            for call, fn in calls.items():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    seconds = timed(fn, repeats=args.repeats)
                results[layout, name, call] = seconds
                line = (f"{layout:13s} {name} {call}: {args.batch / seconds:6.2f} images/s, "
                        f"{flops[call] / seconds / peak:.0%} of the peak ({peak / 1e9:.0f} GFLOP/s)")
                if name != "fp32" and (layout, "fp32", call) in results:
                    line += f"; {results[layout, 'fp32', call] / seconds:.2f}x fp32"
                if layout != "contiguous":
                    line += f"; {results['contiguous', name, call] / seconds:.2f}x contiguous"
                print(line, flush=True)


if __name__ == "__main__":
    main()
