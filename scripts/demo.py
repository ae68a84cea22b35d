"""End to end on tiny random models (pretrained weights are out of reach offline): a GPT and a VQ tokenizer are saved
as safetensors directories, reloaded through transformers' AutoModel, the GPT sampled class-conditionally with CFG,
and the tokens decoded into a PNG grid. (`st-ar convert` turns official LlamaGen checkpoints into such directories.)

    python scripts/demo.py [--output runs/demo]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig
from st_ar_hf.pipelines.generation import generate


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    gpt = LlamaGenForImageGeneration(LlamaGenConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                                    vocab_size=256, num_classes=10, block_size=64))
    torch.nn.init.normal_(gpt.lm_head.weight, std=0.02)  # the zero-initialised head would sample uniformly
    gpt.save_pretrained(args.output / "gpt")
    vq = LlamaGenVQVAE(LlamaGenVQVAEConfig(base_channels=32, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=32,
                                           codebook_size=256, codebook_embed_dim=8)).eval()
    vq.save_pretrained(args.output / "vq")
    start = time.perf_counter()
    gpt, vq = AutoModel.from_pretrained(args.output / "gpt"), AutoModel.from_pretrained(args.output / "vq")
    print(f"reloaded {type(gpt).__name__} ({gpt.num_parameters():,} parameters) and {type(vq).__name__} "
          f"({vq.num_parameters():,}) from {args.output} in {time.perf_counter() - start:.1f}s")

    class_labels = torch.arange(8) % 10
    start = time.perf_counter()
    tokens = generate(gpt, class_labels, guidance_scale=2.0, top_k=100, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    print(f"sampled {tokens.shape[0]} x {tokens.shape[1]} tokens with CFG 2.0 in {seconds:.2f}s "
          f"({tokens.numel() / seconds:.0f} tokens/s)")
    with torch.no_grad():
        pixels = vq.decode(tokens)  # [8, 3, 64, 64] in [-1, 1]
    images = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in images.reshape(2, 4, *images.shape[1:])], axis=0)
    Image.fromarray(grid).save(args.output / "samples.png")
    print(f"decoded to {args.output / 'samples.png'} ({grid.shape[1]}x{grid.shape[0]}; random weights, so noise)")


if __name__ == "__main__":
    main()
