#!/usr/bin/env python
"""Linear probing of a GPT's features at chosen AR steps (ST-AR's Fig. 1b / Fig. 4 / Table 3), MAE protocol.

    accelerate launch training/linear_probe.py --model org/st-ar-b-256 --dataset ILSVRC/imagenet-1k --layer 6 \
        --steps 32,64,96,128,160,192,224,256

The feature at step t is the output of layer `--layer` at the sequence position that has seen t image tokens minus
one, i.e. the state that predicts token t (t = 1..T), with the null class as the condition so that no label leaks.
Images are centre-cropped (ADM) to the model's resolution and tokenised by the pipeline's VQ. Each process extracts
features for its share of the data; the probe (BatchNorm without affine, then a linear layer, as MAE) is trained on
the main process for `--epochs`, for every step. Writes `probe.json` (top-1 per step) and `probe.png`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from st_ar_hf import STARPipeline
from st_ar_hf.training.arguments import ANY, COUNT, NON_NEGATIVE, POSITIVE, DataArguments, Range, run_script, setting
from st_ar_hf.training.data import (
    center_crops, check_columns, load_image_dataset, load_stream, to_pixel_values,
)
from st_ar_hf.training.tracking import finish_run


@dataclass
class LinearProbeArguments(DataArguments):
    """Linear probing of frozen GPT features per AR step."""

    model: str | None = setting(None, ANY, "STARPipeline folder or Hub repo id (required)")
    layer: int = setting(6, COUNT, "transformer layer whose output is probed (at most num_layers)")
    steps: str = setting("32,64,96,128,160,192,224,256", ANY, "comma-separated AR steps (1..T)")
    eval_split: str = setting("validation", ANY)
    eval_data_files: str | None = setting(None, ANY, "held-out shards; embedded: its test shard")
    max_train_images: int | None = setting(None, COUNT)
    max_eval_images: int | None = setting(None, COUNT)
    epochs: int = setting(90, COUNT)
    batch_size: int = setting(256, COUNT)
    learning_rate: float = setting(1e-3, POSITIVE)
    weight_decay: float = setting(0.0, NON_NEGATIVE)
    seed: int = setting(0, Range(0, 2**32 - 1))
    output_dir: str = setting("runs/probe", ANY)

    def __post_init__(self):
        super().__post_init__()
        if self.model is None:
            raise ValueError("--model is required: the STARPipeline whose GPT is probed")
        try:
            self.step_list = [int(step) for step in self.steps.split(",")]
        except ValueError as error:
            raise ValueError(f"--steps must be comma-separated integers, got {self.steps!r}") from error

    def check_model(self, config) -> None:
        if not 1 <= self.layer <= config.num_hidden_layers:
            raise ValueError(f"--layer {self.layer} is outside the model's layers 1..{config.num_hidden_layers}")
        bad = [step for step in self.step_list if not 1 <= step <= config.block_size]
        if bad:
            raise ValueError(f"--steps {bad} are outside 1..{config.block_size} (the model's image tokens)")


@torch.no_grad()
def extract_features(args, pipe, dataset, limit, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, S, D] features at the requested steps and [N] labels, gathered from every process."""
    gpt, vqvae = pipe.transformer, pipe.vqvae
    image_size = gpt.config.grid_size * vqvae.config.downsample_factor
    positions = torch.tensor([gpt.config.cls_token_num - 1 + step - 1 for step in args.step_list])
    shard = split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)
    features, labels, images, batch_labels = [], [], [], []

    def flush():
        pixels = to_pixel_values(images).to(accelerator.device)
        tokens = vqvae.encode(pixels).indices.flatten(1)  # [B, T]
        null = torch.full((len(tokens),), gpt.config.null_class_id, device=accelerator.device)
        hidden = gpt(input_ids=tokens[:, :-1], class_labels=null, output_hidden_states=True,
                     logits_to_keep=1).hidden_states[args.layer]  # [B, T, D]
        features.append(hidden[:, positions.to(hidden.device)].float().cpu())
        labels.extend(batch_labels)
        images.clear(), batch_labels.clear()

    per_process = None if limit is None else -(-limit // accelerator.num_processes)
    crops = center_crops(shard, args.image_column, image_size, args.label_column)
    for image, label in tqdm(crops, disable=not accelerator.is_local_main_process, desc="features"):
        images.append(image)
        batch_labels.append(label)
        if len(images) == args.batch_size:
            flush()
        if per_process is not None and len(labels) + len(images) >= per_process:
            break
    if images:
        flush()
    gathered = gather_object([(torch.cat(features), torch.tensor(labels))])
    return torch.cat([f for f, _ in gathered]), torch.cat([y for _, y in gathered])


def train_probe(args, train_x, train_y, eval_x, eval_y, num_classes, device) -> float:
    """BatchNorm (no affine) + linear layer on frozen features; top-1 accuracy on the held-out features."""
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes)).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(train_x), generator=generator).split(args.batch_size):
            loss = nn.functional.cross_entropy(probe(train_x[batch].to(device)), train_y[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.eval()
    with torch.no_grad():
        predictions = torch.cat([probe(x.to(device)).argmax(1).cpu() for x in eval_x.split(args.batch_size)])
    return (predictions == eval_y).float().mean().item()


def plot(results: dict[int, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(list(results), [100 * v for v in results.values()], marker="o")
    axis.set_xlabel("AR step (image tokens seen + 1)")
    axis.set_ylabel("linear probe top-1 (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: LinearProbeArguments) -> dict:
    accelerator = Accelerator()
    set_seed(args.seed)
    pipe = STARPipeline.from_pretrained(args.model).to(accelerator.device)
    pipe.transformer.eval()
    args.check_model(pipe.transformer.config)
    train = load_image_dataset(args, accelerator.main_process_first)
    check_columns(train, image_column=args.image_column, label_column=args.label_column)
    if args.eval_data_files or args.embedded_dataset_dir:
        files = args.eval_data_files or str(Path(args.embedded_dataset_dir) / "test-*.parquet")
        held_out = load_stream(data_files=files, data_format=args.data_format)
    else:
        held_out = load_stream(args.dataset, args.train_data_files, args.data_format, args.eval_split, args.dataset_config)
    train_x, train_y = extract_features(args, pipe, train.decode(False), args.max_train_images, accelerator)
    eval_x, eval_y = extract_features(args, pipe, held_out.decode(False), args.max_eval_images, accelerator)

    results = {}
    if accelerator.is_main_process:
        num_classes = pipe.transformer.config.num_classes
        for i, step in enumerate(args.step_list):
            results[step] = train_probe(args, train_x[:, i], train_y, eval_x[:, i], eval_y, num_classes, accelerator.device)
            print(f"step {step}: top-1 {100 * results[step]:.2f}% ({len(train_y)} train / {len(eval_y)} held-out images)")
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "probe.json").write_text(json.dumps({
            "model": args.model, "layer": args.layer, "top1": {str(k): v for k, v in results.items()},
            "num_train": len(train_y), "num_eval": len(eval_y), "epochs": args.epochs}, indent=2) + "\n")
        plot(results, output_dir / "probe.png", f"{Path(args.model).name}, layer {args.layer}")
    finish_run(accelerator)
    return results


if __name__ == "__main__":
    run_script(main, LinearProbeArguments)
