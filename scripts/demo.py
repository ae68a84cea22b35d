"""End to end on tiny random models (pretrained weights are out of reach offline): a GPT and a VQ tokenizer form a
STARPipeline, which is saved (safetensors + model_index.json + card), reloaded with `STARPipeline.from_pretrained`,
and sampled class-conditionally by name with CFG into a PNG grid. (`st-ar convert` turns official LlamaGen
checkpoints into the components; random weights give noise images.)

    python scripts/demo.py [--output runs/demo]
"""

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig, STARPipeline
from st_ar_hf.pipelines.pipeline_star import IMAGENET_LABELS_FILE

LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    torch.manual_seed(0)

    gpt = LlamaGenForImageGeneration(LlamaGenConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                                    vocab_size=256, num_classes=10, block_size=64))
    torch.nn.init.normal_(gpt.lm_head.weight, std=0.02)  # the zero-initialised head would sample uniformly
    vq = LlamaGenVQVAE(LlamaGenVQVAEConfig(base_channels=32, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=32,
                                           codebook_size=256, codebook_embed_dim=8))
    imagenet_names = json.loads(IMAGENET_LABELS_FILE.read_text())
    id2label = {i: imagenet_names[str(i)] for i in range(gpt.config.num_classes)}  # the first 10 ImageNet classes
    STARPipeline(transformer=gpt, vqvae=vq, id2label=id2label).save_pretrained(args.output)

    start = time.perf_counter()
    pipe = STARPipeline.from_pretrained(args.output)
    print(f"saved and reloaded the pipeline ({pipe.transformer.num_parameters():,} + {pipe.vqvae.num_parameters():,} "
          f"parameters) from {args.output} in {time.perf_counter() - start:.1f}s")

    start = time.perf_counter()
    out = pipe(LABELS, guidance_scale=2.0, top_k=100, generator=[torch.Generator().manual_seed(i) for i in range(8)])
    seconds = time.perf_counter() - start
    print(f"sampled and decoded {len(out.images)} images of {out.tokens.shape[1]}x{out.tokens.shape[2]} tokens "
          f"with CFG 2.0 in {seconds:.2f}s")
    width, height = out.images[0].size
    grid = Image.new("RGB", (4 * width, 2 * height))
    for i, image in enumerate(out.images):
        grid.paste(image, ((i % 4) * width, (i // 4) * height))
    grid.save(args.output / "samples.png")
    print(f"wrote {args.output / 'samples.png'}")


if __name__ == "__main__":
    main()
