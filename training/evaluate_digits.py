#!/usr/bin/env python
"""Generation metrics for models trained on the embedded MNIST-5k digits: FID of `sample_ddp.py` samples against
the test split (the ADM evaluator's arithmetic), on the offline EfficientNet-Lite0 features (not Inception: the
numbers compare runs here, not papers), and the class accuracy of the samples by a digit classifier trained on the
train split.

    python training/evaluate_digits.py --embedded_dataset_dir runs/data/mnist5k --samples a.npz b.npz --out results.json

The classifier is a small MLP on the grey centre crops (its test-split accuracy is reported beside the samples'; a
sample counts as correct when the classifier reads the label it was sampled for, arr_1 of the `.npz`).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from st_ar_hf.evaluation import compute_features, feature_network, load_image_batch
from st_ar_hf.metrics import frechet_distance, gaussian_statistics
from st_ar_hf.training.data import center_crops, load_stream


def load_split(dataset_dir: Path, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, S, S, 3] centre crops and int labels [N] of the embedded digits' train or test shards."""
    if not any(dataset_dir.glob(f"{split}-*.parquet")):
        raise SystemExit(f"error: --embedded_dataset_dir {dataset_dir} holds no {split}-*.parquet shards")
    stream = load_stream(data_files=str(dataset_dir / f"{split}-*.parquet")).decode(False)
    crops = list(center_crops(stream, "image", image_size, "label"))
    return np.stack([np.asarray(image.convert("RGB")) for image, _ in crops]), np.array([label for _, label in crops])


def fit_digit_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = 30, seed: int = 0) -> nn.Module:
    """An MLP (pixels -> 256 -> classes) on grey images [N, S, S, 3], trained with Adam on the full data."""
    torch.manual_seed(seed)
    pixels = to_grey(images)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(pixels[0].numel(), 256), nn.ReLU(), nn.Linear(256, int(labels.max()) + 1))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    targets = torch.from_numpy(labels).long()
    for _ in range(epochs):
        for batch in torch.randperm(len(pixels)).split(128):
            loss = F.cross_entropy(classifier(pixels[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


def to_grey(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().mean(-1).div(255)  # [N, S, S] in [0, 1]


@torch.no_grad()
def class_accuracy(classifier: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return (classifier(to_grey(images)).argmax(-1).numpy() == labels).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded_dataset_dir", type=Path, required=True)
    parser.add_argument("--samples", nargs="+", required=True, help="sample_ddp.py outputs (images arr_0, labels arr_1)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args()
    batches = {path: load_image_batch(path) for path in args.samples}
    sizes = {batch.shape[1] for batch in batches.values()}
    if len(sizes) != 1:
        raise SystemExit(f"error: --samples hold images of different sizes {sorted(sizes)}")
    labels = {path: np.load(path)["arr_1"] for path in args.samples}
    size = sizes.pop()
    train_images, train_labels = load_split(args.embedded_dataset_dir, "train", size)
    test_images, test_labels = load_split(args.embedded_dataset_dir, "test", size)
    classifier = fit_digit_classifier(train_images, train_labels)
    network = feature_network("efficientnet-lite0")
    with torch.no_grad():
        reference = gaussian_statistics(compute_features(network, test_images)["pool"])  # once for every sample set
        results = {"classifier_test_accuracy": class_accuracy(classifier, test_images, test_labels), "samples": {}}
        for path, images in batches.items():
            fid = frechet_distance(*gaussian_statistics(compute_features(network, images)["pool"]), *reference)
            results["samples"][path] = {"fid": fid, "class_accuracy": class_accuracy(classifier, images, labels[path])}
            print(path, json.dumps(results["samples"][path]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"classifier accuracy on the {len(test_labels)} test digits: {results['classifier_test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
