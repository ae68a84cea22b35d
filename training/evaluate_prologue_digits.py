#!/usr/bin/env python
"""What Prologue claims of its tokenizer, measured on the embedded MNIST-5k digits against the plain 2D tokenizer:
reconstruction (PSNR, SSIM, and rFID on the offline EfficientNet-Lite0 features) of the test split, and a linear probe
of the digit class on the prologue tokens against one on the first as many visual tokens of the 2D tokenizer (the
paper: 35.88% against 23.71% on ImageNet; its protocol is not published, so here: a logistic regression on the
one-hot codes of the train split's centre crops, scored on the test split). With `--pipeline`, also a grid of
prologue-fixed resamples: per row, one sampled digit, then its prologue kept and the visual tokens drawn again.

    python training/evaluate_prologue_digits.py --embedded_dataset_dir runs/data/mnist5k \
        --prologue runs/prologue_embedded/prologue/tokenizer/vqvae --baseline runs/prologue_embedded/baseline_2d/tokenizer/vqvae \
        --pipeline runs/prologue_embedded/prologue/pipeline --output_file runs/prologue_embedded/compare/tokenizers.json
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from evaluate_digits import load_split

from st_ar_hf import PrologueVQVAE, STARPipeline
from st_ar_hf.evaluation import compute_features, feature_network
from st_ar_hf.flags import FlagParser
from st_ar_hf.metrics import frechet_distance, gaussian_statistics, psnr, ssim
from st_ar_hf.training.tracking import make_grid


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [N, 3, S, S] in [-1, 1]


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return pixels.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def encode(tokenizer: PrologueVQVAE, images: np.ndarray, batch_size: int = 250):
    """(visual codes [N, h*w], prologue codes [N, P] or None, reconstructions uint8 [N, S, S, 3])."""
    visual, prologue, reconstructions = [], [], []
    for batch in to_pixels(images).split(batch_size):
        encoded = tokenizer.encode(batch)
        visual.append(encoded.indices.flatten(1))
        prologue.append(encoded.prologue_indices)
        reconstructions.append(to_uint8(tokenizer.decode(encoded.indices)))
    return torch.cat(visual), None if prologue[0] is None else torch.cat(prologue), np.concatenate(reconstructions)


def linear_probe(train_codes, train_labels, test_codes, test_labels, codebook_size: int, epochs: int = 100) -> float:
    """Test accuracy of a logistic regression (Adam, full batch) on the one-hot codes [N, k] -> [N, k * K]."""
    torch.manual_seed(0)
    features = [F.one_hot(codes, codebook_size).flatten(1).float() for codes in (train_codes, test_codes)]
    classifier = torch.nn.Linear(features[0].shape[1], int(train_labels.max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05, weight_decay=1e-4)
    targets = torch.from_numpy(train_labels).long()
    for _ in range(epochs):
        loss = F.cross_entropy(classifier(features[0]), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (classifier(features[1]).argmax(-1).numpy() == test_labels).mean().item()


@torch.no_grad()
def reconstruction_metrics(images: np.ndarray, reconstructions: np.ndarray, network, statistics) -> dict[str, float]:
    """PSNR, SSIM and rFID; `statistics`: the feature mean and covariance of `images`."""
    reference, output = to_pixels(images).add(1).div(2), to_pixels(reconstructions).add(1).div(2)
    rfid = frechet_distance(*gaussian_statistics(compute_features(network, reconstructions)["pool"]), *statistics)
    return {"psnr": psnr(output, reference).mean().item(), "ssim": ssim(output, reference).mean().item(), "rfid": rfid}


def resample_grid(pipeline_dir: str, out: Path, classes=(0, 3, 5, 8), resamples: int = 6) -> None:
    """One row per class: a sample, then `resamples` images with its prologue kept and new visual tokens."""
    pipe = STARPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for row, label in enumerate(classes):
        first = pipe([label], guidance_scale=1.0, generator=[torch.Generator().manual_seed(row)], output_type="np")
        again = pipe([label] * resamples, guidance_scale=1.0, prologue_tokens=first.prologue_tokens.repeat(resamples, 1),
                     generator=[torch.Generator().manual_seed(100 + row * resamples + i) for i in range(resamples)],
                     output_type="np")
        rows.append(np.concatenate([first.images, again.images]))
    make_grid(np.concatenate(rows), columns=resamples + 1, scale=4).save(out)


def main() -> None:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded_dataset_dir", type=Path, required=True)
    parser.add_argument("--prologue", required=True, help="the Prologue tokenizer folder")
    parser.add_argument("--baseline", required=True, help="the 2D tokenizer folder")
    parser.add_argument("--post", help="a Prologue-Post tokenizer folder, measured as well")
    parser.add_argument("--pipeline", help="a Prologue STARPipeline: also write the resample grid beside --output_file")
    parser.add_argument("--output_file", type=Path, required=True, old_names=("--out",), help="JSON results")
    args = parser.parse_args()
    tokenizers = {"prologue": PrologueVQVAE.from_pretrained(args.prologue).eval(),
                  "2d": PrologueVQVAE.from_pretrained(args.baseline).eval()}
    if args.post:
        tokenizers["post"] = PrologueVQVAE.from_pretrained(args.post).eval()
    size = tokenizers["prologue"].config.image_size
    train_images, train_labels = load_split(args.embedded_dataset_dir, "train", size)
    test_images, test_labels = load_split(args.embedded_dataset_dir, "test", size)
    network = feature_network("efficientnet-lite0")
    with torch.no_grad():
        test_statistics = gaussian_statistics(compute_features(network, test_images)["pool"])
    num_probe = tokenizers["prologue"].config.num_prologue_tokens
    results = {}
    for name, tokenizer in tokenizers.items():
        train_visual, train_prologue, _ = encode(tokenizer, train_images)
        test_visual, test_prologue, reconstructions = encode(tokenizer, test_images)
        results[name] = reconstruction_metrics(test_images, reconstructions, network, test_statistics)
        if train_prologue is not None:
            results[name]["probe_prologue_tokens"] = linear_probe(
                train_prologue, train_labels, test_prologue, test_labels, tokenizer.config.prologue_codebook_size)
        results[name][f"probe_first_{num_probe}_visual_tokens"] = linear_probe(
            train_visual[:, :num_probe], train_labels, test_visual[:, :num_probe], test_labels,
            tokenizer.config.codebook_size)
        print(name, json.dumps(results[name]))
    args.output_file.parent.mkdir(parents=True, exist_ok=True)
    args.output_file.write_text(json.dumps(results, indent=2) + "\n")
    if args.pipeline:
        resample_grid(args.pipeline, args.output_file.with_name("prologue_resamples.png"))


if __name__ == "__main__":
    main()
