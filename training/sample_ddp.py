#!/usr/bin/env python
"""Distributed class-conditional sampling into an ADM-format `.npz` (uint8 [N, H, W, 3] under `arr_0`, labels under
`arr_1`) for `st-ar evaluate`.

    accelerate launch training/sample_ddp.py --model org/st-ar-b-256 --num_samples 50000 --guidance_scale 2.0 --output_file samples.npz
    accelerate launch training/sample_ddp.py --model converted/flexvar-d16 --num_samples 50000 --per_class \
        --guidance_scale 2.5 --top_k 900 --top_p 0.95 --output_file samples.npz

Any family's pipeline: the sampling arguments are the pipeline's (`--guidance_scale` defaults to the family's,
`--cfg_interval` is LlamaGen's, `--scales` VAR's and FlexVAR's; Prologue takes split settings, e.g.
`--guidance_scale 0.7 3.75 0.2 --temperature 0.7 0.9`).

Image i has label i % num_classes (`--per_class`) or a label drawn uniformly from a generator seeded with `--seed`,
and is decoded from its own generator seeded with seed + i: the set is the same for any number of processes and
any batch size. Each process samples the indices i = process_index (mod num_processes). `--resize 256` resizes
(bicubic, as LlamaGen's evaluation of its 384 px models) before saving.
"""

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from st_ar_hf.cli import run_command
from st_ar_hf.flags import FlagParser
from st_ar_hf.hub import load_star_pipeline
from st_ar_hf.training.tracking import finish_run


def parse_args(argv=None):
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="STARPipeline folder or Hub repo id")
    parser.add_argument("--output_file", required=True, old_names=("--out",), help="the .npz to write")
    parser.add_argument("--num_samples", type=int, default=50000)
    parser.add_argument("--per_class", action="store_true", help="labels i %% num_classes instead of uniform random")
    parser.add_argument("--guidance_scale", type=float, nargs="+", default=None,
                        help="default: the family's (LlamaGen 2.0; VAR 1.5 and FlexVAR 2.5, their cfg; Prologue the "
                        "paper's split CFG); Prologue also S POWER or S_PROLOGUE S_VISUAL POWER")
    parser.add_argument("--cfg_interval", type=int, default=-1, help="LlamaGen only")
    parser.add_argument("--scales", type=int, nargs="+", default=None, help="VAR / FlexVAR scale schedule")
    parser.add_argument("--temperature", type=float, nargs="+", default=None,
                        help="default 1.0 (Prologue without guidance: the paper's); Prologue also T_PROLOGUE T_VISUAL")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward and process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resize", type=int, default=None, help="resize to this size (bicubic) before saving")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args(argv)
    for name in ("guidance_scale", "temperature"):  # None, one number, or Prologue's tuple
        values = getattr(args, name)
        if values is not None:
            setattr(args, name, values[0] if len(values) == 1 else tuple(values))
    for name in ("num_samples", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.resize is not None and args.resize < 1:
        parser.error(f"--resize must be >= 1, got {args.resize}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    return args


def main(args) -> None:
    output_file = Path(args.output_file)
    if output_file.suffix != ".npz" or output_file.is_dir():
        raise ValueError(f"--output_file {output_file}: expected a file ending in .npz")
    accelerator = Accelerator()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    pipe = load_star_pipeline(args.model).to(accelerator.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    num_classes = pipe.transformer.config.num_classes
    labels = (np.arange(args.num_samples) % num_classes if args.per_class else
              np.random.default_rng(args.seed).integers(0, num_classes, args.num_samples))
    mine = np.arange(accelerator.process_index, args.num_samples, accelerator.num_processes)  # this process's indices

    images = []
    for start in tqdm(range(0, len(mine), args.batch_size), disable=not accelerator.is_local_main_process):
        indices = mine[start : start + args.batch_size]
        out = pipe(labels[indices].tolist(), guidance_scale=args.guidance_scale, cfg_interval=args.cfg_interval,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, scales=args.scales,
                   output_type="pil", generator=[torch.Generator().manual_seed(args.seed + int(i)) for i in indices])
        if args.resize is not None:
            out.images = [image.resize((args.resize, args.resize), PIL.Image.BICUBIC) for image in out.images]
        images.append(np.stack([np.asarray(image, dtype=np.uint8) for image in out.images]))
    local = torch.from_numpy(np.concatenate(images)).to(accelerator.device)  # [n_i, H, W, 3]

    # every process holds ceil or floor of N / P images: pad to the same count for the gather, then interleave back
    per_process = -(-args.num_samples // accelerator.num_processes)
    padded = torch.zeros((per_process, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    gathered = accelerator.gather(padded[None]).cpu().numpy()  # [P, per_process, H, W, 3]
    if accelerator.is_main_process:
        samples = gathered.transpose(1, 0, 2, 3, 4).reshape(-1, *local.shape[1:])[: args.num_samples]  # index order
        out, partial = Path(args.output_file), Path(f"{args.output_file}.partial")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:  # complete or absent: a reader never sees half a batch
            np.savez(f, arr_0=samples, arr_1=labels)
        partial.replace(out)
        print(f"wrote {len(samples)} images of {samples.shape[1]}x{samples.shape[2]} to {args.output_file}")
    finish_run(accelerator)


if __name__ == "__main__":
    sys.exit(run_command(main, parse_args(), "sample_ddp.py"))
