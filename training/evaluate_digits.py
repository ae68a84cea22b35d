#!/usr/bin/env python
"""Generation metrics for models trained on the embedded MNIST-5k digits, for several sample sets at once: sample
accuracy (`st_ar_hf.sample_accuracy`: the share of samples a CNN trained on the train split reads as the class they
were sampled for, arr_1 of the `.npz`; overall and per class, its test-split accuracy beside it) and FID of
`sample_ddp.py` samples on the offline EfficientNet-Lite0 features (the ADM evaluator's arithmetic; not Inception:
the numbers compare runs here, not papers) against a reference split.

    python training/evaluate_digits.py --embedded_dataset_dir runs/data/mnist5k --samples a.npz b.npz --output_file results.json

FID needs more images than the 1,280 feature dimensions on both sides: the default reference is the 4,500 train
digits; a sample set of 1,280 or fewer gets its FID under "unreliable", with the reason, instead of as a result.
The classifier is trained once per call (about 20 s), or kept in --cache_dir with the reference features.
"""

import json
from pathlib import Path

import numpy as np

from st_ar_hf.evaluation import compute_features, feature_network, load_image_batch, unreliable_reason
from st_ar_hf.flags import FlagParser
from st_ar_hf.metrics import frechet_distance, gaussian_statistics
from st_ar_hf.sample_accuracy import (SampleClassifier, fit_sample_classifier, load_labelled_images, load_labels,
                                      sample_accuracy)


def load_split(dataset_dir: Path, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, S, S, 3] centre crops and int labels [N] of the embedded digits' train or test shards."""
    return load_labelled_images(str(dataset_dir / f"{split}-*.parquet"), image_size, "--embedded_dataset_dir")


def evaluate_digits(dataset_dir: Path, samples: list[str], reference_split: str = "train",
                    cache_dir: Path | None = None) -> dict:
    """{"classifier_held_out_accuracy", "reference", "samples": {path: {"fid" or None, "sample_accuracy",
    "per_class", "unreliable"}}} for sample sets of one resolution. With `cache_dir`, the classifier and the
    reference statistics are read from it, or computed once and written there (atomically)."""
    batches = {path: load_image_batch(path) for path in samples}
    sizes = {batch.shape[1] for batch in batches.values()}
    if len(sizes) != 1:
        raise ValueError(f"--samples hold images of different sizes {sorted(sizes)}")
    size = sizes.pop()
    labels = {path: load_labels(path, len(batch)) for path, batch in batches.items()}
    network = feature_network("efficientnet-lite0")
    classifier = cached(cache_dir, f"classifier-{size}", lambda: fit_sample_classifier(
        *load_split(dataset_dir, "train", size), *load_split(dataset_dir, "test", size)))
    reference = cached(cache_dir, f"reference-{reference_split}-{size}.npz", lambda: compute_features(
        network, load_split(dataset_dir, reference_split, size)[0])["pool"].numpy())
    statistics = gaussian_statistics(reference)
    results = {"classifier_held_out_accuracy": float(classifier.held_out_accuracy),
               "reference": f"{len(reference)} {reference_split} digits", "samples": {}}
    for path, images in batches.items():
        features = compute_features(network, images)["pool"]
        fid = frechet_distance(*gaussian_statistics(features), *statistics)
        reason = unreliable_reason(min(len(images), len(reference)), features.shape[1], "pool")
        accuracy = sample_accuracy(classifier, images, labels[path])
        del accuracy["classifier_held_out_accuracy"]
        results["samples"][path] = {"fid": None if reason else fid, **accuracy,
                                    "unreliable": {"fid": {"value": fid, "reason": reason}} if reason else {}}
        print(path, json.dumps(results["samples"][path]), flush=True)
    return results


def cached(cache_dir: Path | None, name: str, compute):
    """A SampleClassifier folder or an .npz of reference features in `cache_dir`, computed and written when absent."""
    if cache_dir is None:
        return compute()
    path = cache_dir / name
    if path.suffix == ".npz":
        if not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.savez(path.with_suffix(".partial.npz"), features=compute())
            path.with_suffix(".partial.npz").replace(path)
        return np.load(path)["features"]
    if not path.is_dir():
        compute().save_pretrained(path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
    return SampleClassifier.from_pretrained(path)


def main() -> None:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded_dataset_dir", type=Path, required=True)
    parser.add_argument("--samples", nargs="+", required=True, help="sample_ddp.py outputs (images arr_0, labels arr_1)")
    parser.add_argument("--reference_split", choices=["train", "test"], default="train", help="FID reference digits")
    parser.add_argument("--cache_dir", type=Path, help="keep the classifier and reference features here for later calls")
    parser.add_argument("--output_file", type=Path, required=True, old_names=("--out",), help="JSON results")
    args = parser.parse_args()
    try:
        results = evaluate_digits(args.embedded_dataset_dir, args.samples, args.reference_split, args.cache_dir)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    args.output_file.parent.mkdir(parents=True, exist_ok=True)
    args.output_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"classifier accuracy on the test digits: {results['classifier_held_out_accuracy']:.4f}")


if __name__ == "__main__":
    main()
