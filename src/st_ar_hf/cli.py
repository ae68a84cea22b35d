"""`st-ar` command line: `st-ar convert llamagen-vq|llamagen-gpt ...`."""

import argparse
import sys

from .configuration_llamagen import LLAMAGEN_PRESETS


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .convert import convert_llamagen_gpt, convert_llamagen_vq

    try:
        if args.kind == "llamagen-vq":
            model = convert_llamagen_vq(args.checkpoint, output_dir=args.output)
        else:
            model = convert_llamagen_gpt(
                args.checkpoint, size=args.size, num_attention_heads=args.num_attention_heads,
                block_size=args.block_size, output_dir=args.output,
            )
    except ValueError as error:
        print(f"st-ar convert: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {type(model).__name__} ({model.num_parameters():,} parameters) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
