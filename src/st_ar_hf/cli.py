"""`st-ar` command line: `st-ar convert llamagen-vq|llamagen-gpt ...`, `st-ar sample ...`, `st-ar evaluate ...`,
`st-ar push ...`."""

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from .models.llamagen import LLAMAGEN_PRESETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="st-ar", description="st-ar-hf: LlamaGen / ST-AR on the Hugging Face stack")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an official LlamaGen checkpoint to a model directory")
    kinds = convert.add_subparsers(dest="kind", required=True)
    vq = kinds.add_parser("llamagen-vq", help="VQ tokenizer (vq_ds16_c2i.pt, vq_ds8_c2i.pt)")
    gpt = kinds.add_parser("llamagen-gpt", help="class-conditional GPT (c2i_B_256.pt, c2i_XL_384.pt, ...)")
    for sub in (vq, gpt):
        sub.add_argument("--checkpoint", required=True, help="the official .pt file (loaded with weights_only=True)")
        sub.add_argument("--output", required=True, help="directory to write config.json, model.safetensors, README.md")
    gpt.add_argument("--size", choices=sorted(LLAMAGEN_PRESETS), help="preset giving the head count")
    gpt.add_argument("--num-attention-heads", type=int, help="head count for checkpoints matching no preset")
    gpt.add_argument("--block-size", type=int, default=256, help="image tokens: 256 for 256px checkpoints, 576 for 384px")

    sample = commands.add_parser("sample", help="sample class-conditional images into a PNG grid")
    sample.add_argument("--model", required=True, help="a STARPipeline directory or Hub repo id")
    sample.add_argument("--labels", nargs="+", required=True, help="class ids or names (quote names with spaces)")
    sample.add_argument("--num-images-per-label", type=int, default=1)
    sample.add_argument("--guidance-scale", type=float, default=2.0)
    sample.add_argument("--cfg-interval", type=int, default=-1)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0, help="image i is drawn with seed + i, alone reproducible")
    sample.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sample.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    sample.add_argument("--compile", action="store_true", help="torch.compile the decoding step")
    sample.add_argument("--out", required=True, help="PNG file for the grid (one row per label)")

    evaluate = commands.add_parser("evaluate", help="FID, sFID, IS, precision and recall of an ADM-format sample batch")
    evaluate.add_argument("--samples", required=True, help=".npz with uint8 [N, H, W, 3] images under arr_0")
    evaluate.add_argument("--reference", required=True, help="reference batch in the same format and resolution")
    evaluate.add_argument("--feature-network", choices=["inception", "efficientnet-lite0"],
                          help="default: ADM's Inception-v3 when its weights are found, else EfficientNet-Lite0 (warned)")
    evaluate.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or torch-fidelity's "
                          "weights-inception-2015-12-05-6726825d.pth; default $ST_AR_INCEPTION_WEIGHTS or torch's hub cache")
    evaluate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--out", help="also write the results to this JSON file")

    push = commands.add_parser("push", help="upload a training run's pipeline (or tokenizer) with its card to the Hub")
    push.add_argument("run_dir", metavar="RUN_DIR", help="a training output dir (its pipeline/ or vqvae/ is uploaded) "
                      "or a saved STARPipeline / LlamaGenVQVAE dir")
    push.add_argument("--repo-id", required=True, help="org/name, created if needed")
    push.add_argument("--eval-results", action="append", default=[], metavar="FILE",
                      help="results JSON of `st-ar evaluate --out` for the card's model-index (repeatable); "
                      "default: RUN_DIR/evaluation.json when present")
    push.add_argument("--eval-dataset", help="Hub data set of the reference batch; default: the training data set")
    push.add_argument("--base-model", help="Hub id of the weights the run started from; default: from the run")
    push.add_argument("--private", action="store_true")
    push.add_argument("--commit-message")
    push.add_argument("--include-checkpoints", action="store_true",
                      help="also upload RUN_DIR/checkpoint-* (optimiser, EMA teacher, random states) under checkpoints/")
    return parser


def _evaluate(args) -> str:
    from .evaluation import evaluate_generation, feature_network, load_adm_statistics, load_image_batch

    samples, reference = load_image_batch(args.samples, "--samples"), load_image_batch(args.reference, "--reference")
    network = feature_network(args.feature_network, args.inception_weights).to(args.device)
    results = evaluate_generation(samples, reference, network, args.batch_size, load_adm_statistics(args.samples),
                                  load_adm_statistics(args.reference))
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


def _push(args) -> str:
    from .hub import push_run

    commits = push_run(args.run_dir, args.repo_id, args.eval_results, args.eval_dataset, args.base_model, args.private,
                       args.commit_message, args.include_checkpoints)
    return "\n".join(f"pushed {url}" for url in commits)


def _sample(args) -> str:
    from .hub import load_star_pipeline

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    labels = [int(label) if label.isdigit() else label for label in args.labels]
    pipe = load_star_pipeline(args.model).to(args.device, dtype)
    num_images = len(labels) * args.num_images_per_label
    out = pipe(
        labels, num_images_per_label=args.num_images_per_label, guidance_scale=args.guidance_scale,
        cfg_interval=args.cfg_interval, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(num_images)],
        compile_decoding=args.compile,
    )
    width, height = out.images[0].size
    grid = Image.new("RGB", (width * args.num_images_per_label, height * len(labels)))
    for i, image in enumerate(out.images):
        grid.paste(image, ((i % args.num_images_per_label) * width, (i // args.num_images_per_label) * height))
    grid.save(args.out)
    return f"wrote {num_images} images ({width}x{height}) to {args.out}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .models.llamagen.convert_llamagen import convert_llamagen_gpt, convert_llamagen_vq

    try:
        if args.command != "convert":
            print({"sample": _sample, "evaluate": _evaluate, "push": _push}[args.command](args))
            return 0
        if args.kind == "llamagen-vq":
            model = convert_llamagen_vq(args.checkpoint, output_dir=args.output)
        else:
            model = convert_llamagen_gpt(
                args.checkpoint, size=args.size, num_attention_heads=args.num_attention_heads,
                block_size=args.block_size, output_dir=args.output,
            )
    except ValueError as error:  # bad input, named
        print(f"st-ar {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the Hub (every huggingface_hub error is an OSError) or the disk failed
        print(f"st-ar {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {type(model).__name__} ({model.num_parameters():,} parameters) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
