#!/usr/bin/env python
"""Attention analysis of a GPT (ST-AR's §3.2, property 1: attention concentrates on the class token and on spatially
adjacent tokens).

    python training/attention_maps.py --model runs/default/pipeline --embedded_dataset_dir runs/data/mnist5k

For `--num_images` centre-cropped images (class-conditioned on their label), every layer's attention (eager, averaged
over heads) is read at every query position. Writes:
- `attention_maps.png`: for one image and the query predicting token `--query_step`, each layer's weights over the
  image-token grid (future tokens are 0; the class token's weight is in the panel title);
- `receptive_field.json` / `.png`: per layer, the mean attention mass on the class token, on the query's spatial
  neighbours (the already generated tokens within Chebyshev distance `--radius` on the grid), and on the rest,
  averaged over queries and images.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from st_ar_hf import LlamaGenForImageGeneration, STARPipeline
from st_ar_hf.training.arguments import ANY, COUNT, NON_NEGATIVE, DataArguments, run_script, setting
from st_ar_hf.training.data import center_crops, load_image_dataset, to_pixel_values


@dataclass
class AttentionArguments(DataArguments):
    """Per-layer attention maps and the attention mass on class token / neighbours / the rest."""

    model: str | None = setting(None, ANY, "STARPipeline folder or Hub repo id (required)")
    num_images: int = setting(16, COUNT)
    query_step: int | None = setting(None, COUNT, "the token whose prediction is shown (default: last)")
    radius: int = setting(1, NON_NEGATIVE, "Chebyshev distance of the neighbours on the token grid")
    output_dir: str = setting("runs/attention", ANY)

    def __post_init__(self):
        super().__post_init__()
        if self.model is None:
            raise ValueError("--model is required: the STARPipeline whose GPT is analysed")


@torch.no_grad()
def main(args: AttentionArguments) -> dict:
    pipe = STARPipeline.from_pretrained(args.model)
    gpt = LlamaGenForImageGeneration._from_config(pipe.transformer.config, attn_implementation="eager").eval()
    gpt.load_state_dict(pipe.transformer.state_dict())
    config, grid = gpt.config, gpt.config.grid_size
    query_step = args.query_step or config.block_size
    if not 1 <= query_step <= config.block_size:
        raise ValueError(f"--query_step {query_step} is outside 1..{config.block_size}")
    image_size = grid * pipe.vqvae.config.downsample_factor
    crops = center_crops(load_image_dataset(args).decode(False), args.image_column, image_size, args.label_column)
    images, labels = zip(*[crop for _, crop in zip(range(args.num_images), crops)])
    tokens = pipe.vqvae.encode(to_pixel_values(list(images))).indices.flatten(1)  # [N, T]
    out = gpt(input_ids=tokens[:, :-1], class_labels=torch.tensor(labels), output_attentions=True, logits_to_keep=1)
    prefix = config.cls_token_num
    # query q (predicting token q - prefix + 1) sees keys 0..q: the class token(s), then image tokens 0..q - prefix
    rows = torch.arange(config.block_size) // grid
    cols = torch.arange(config.block_size) % grid
    near = torch.maximum((rows[:, None] - rows[None, :]).abs(), (cols[:, None] - cols[None, :]).abs()) <= args.radius
    queries = torch.arange(prefix, prefix + config.block_size - 1)  # queries that see at least one image token
    summary = {"class_token": [], "neighbours": [], "rest": []}
    maps = []
    for attention in out.attentions:  # [N, heads, S, S]
        weights = attention.float().mean(1)  # [N, S, S]
        class_mass = weights[:, queries, :prefix].sum(-1)  # [N, Q]
        image_weights = weights[:, queries, prefix:]  # [N, Q, T-1] keys = image tokens 0..T-2
        # the query at sequence position q predicts token q - prefix + 1, whose grid cell is the reference point
        neighbour = near[queries - prefix + 1][:, : config.block_size - 1]  # [Q, T-1]
        neighbour_mass = (image_weights * neighbour).sum(-1)
        summary["class_token"].append(class_mass.mean().item())
        summary["neighbours"].append(neighbour_mass.mean().item())
        summary["rest"].append((1 - class_mass - neighbour_mass).mean().item())
        query = prefix - 1 + query_step - 1
        panel = torch.zeros(config.block_size)
        panel[: query - prefix + 1] = weights[0, query, prefix : query + 1]
        maps.append((panel.view(grid, grid), weights[0, query, :prefix].sum().item()))

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "receptive_field.json").write_text(json.dumps({"model": args.model, "radius": args.radius,
                                                                 "num_images": len(images), **summary}, indent=2) + "\n")
    plot(maps, summary, output_dir, query_step)
    return summary


def plot(maps, summary, output_dir: Path, query_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(maps), figsize=(2.2 * len(maps), 2.6), squeeze=False)
    for layer, (axis, (panel, class_weight)) in enumerate(zip(axes[0], maps), start=1):
        axis.imshow(panel.numpy(), cmap="viridis")
        axis.set_title(f"layer {layer}\nclass token {class_weight:.2f}", fontsize=8)
        axis.axis("off")
    figure.suptitle(f"attention of the query predicting token {query_step}", fontsize=9)
    figure.tight_layout()
    figure.savefig(output_dir / "attention_maps.png", dpi=120)
    plt.close(figure)

    layers = range(1, len(summary["class_token"]) + 1)
    figure, axis = plt.subplots(figsize=(5, 3.2))
    bottom = torch.zeros(len(layers))
    for name, values in summary.items():
        axis.bar(layers, values, bottom=bottom.tolist(), label=name.replace("_", " "))
        bottom += torch.tensor(values)
    axis.set_xlabel("layer")
    axis.set_ylabel("attention mass")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output_dir / "receptive_field.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    run_script(main, AttentionArguments)
