"""Streaming data: transforms, per-process split, resumption, corrupt images, the embedded dataset."""

import concurrent.futures
import io
import multiprocessing

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature

from st_ar_hf.training.data import (
    MNIST_NAMES, ExampleStream, center_crop_arr, check_columns, crop_views, class_names, decode_image, load_stream, ten_crop,
    to_pixel_values, write_embedded_dataset,
)


def _png(value: int, size=(12, 10)) -> dict:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture
def shards(tmp_path):
    """4 parquet shards x 6 images whose grey value is the example's id; id 7 is corrupt bytes."""
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    for shard in range(4):
        ids = range(shard * 6, shard * 6 + 6)
        images = [{"bytes": b"not an image", "path": None} if i == 7 else _png(i) for i in ids]
        Dataset.from_dict({"image": images, "label": [i % 3 for i in ids]}, features=features).to_parquet(
            str(tmp_path / f"train-{shard}.parquet"))
    return str(tmp_path / "train-*.parquet")


def _grey_ids(example, rng, counts):
    image = decode_image(example["image"])
    if image is None:
        return None
    return {"id": torch.tensor(image.getpixel((0, 0))[0]), "noise": torch.tensor(rng.random())}


def _stream(files, rank=0, world=1, batch_size=2, shuffle_input_shards=1):
    return ExampleStream(load_stream(data_files=files).decode(False), _grey_ids, batch_size, seed=0,
                         process_index=rank, num_processes=world, shuffle_buffer=8,
                         shuffle_input_shards=shuffle_input_shards)


def test_center_crop_and_ten_crop_follow_torchvision_order():
    image = PIL.Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3) % 251)
    crop = center_crop_arr(image, 20)
    assert crop.size == (20, 20)
    crops = ten_crop(crop.resize((22, 22)), 16)
    assert len(crops) == 10 and all(c.size == (16, 16) for c in crops)
    flipped = crop.resize((22, 22)).transpose(PIL.Image.FLIP_LEFT_RIGHT)
    assert np.array_equal(np.asarray(crops[5]), np.asarray(flipped.crop((0, 0, 16, 16))))  # top-left of the flip
    assert np.array_equal(np.asarray(crops[4]), np.asarray(crop.resize((22, 22)).crop((3, 3, 19, 19))))  # centre
    pixels = to_pixel_values(crops[:2])
    assert pixels.shape == (2, 3, 16, 16) and -1 <= pixels.min() and pixels.max() <= 1
    # without flips (digits): the five crops of the image itself, or its centre crop alone
    unflipped, both = crop_views(image, 16, 22 / 16, flip=False), crop_views(image, 16, 22 / 16)
    assert len(unflipped) == 5 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(unflipped, both))
    assert len(crop_views(image, 16, ten=False, flip=False)) == 1 and len(crop_views(image, 16, ten=False)) == 2


@pytest.mark.parametrize("mode, image_format", [("I;16", "PNG"), ("I;16B", "TIFF")])
def test_16_bit_grey_images_decode_by_their_range_instead_of_clipping_to_white(mode, image_format):
    """A full-range 16-bit ramp written by PIL decodes to the full 8-bit ramp (PIL's convert gave 2 values, 99.6%
    white); float pixels, whose range is unknown, are refused (None: skipped and counted)."""
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))  # [4, 256]
    buffer = io.BytesIO()
    PIL.Image.frombytes(mode, (256, 4), ramp.astype(">u2" if mode == "I;16B" else "<u2").tobytes()).save(
        buffer, format=image_format)
    assert PIL.Image.open(io.BytesIO(buffer.getvalue())).mode == mode
    image = decode_image({"bytes": buffer.getvalue(), "path": None})
    full_ramp = np.tile(np.arange(256, dtype=np.uint8)[:, None], (4, 1, 3))  # [4, 256, 3]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), full_ramp)
    assert decode_image(PIL.Image.fromarray(ramp.astype(np.float32))) is None


def test_stream_skips_and_counts_corrupt_images(shards):
    stream = _stream(shards, batch_size=23)
    batch = next(iter(stream))
    assert sorted(batch["id"].tolist()) == [i for i in range(24) if i != 7]
    assert stream.counts["skipped"] == 1 and stream.counts["examples"] == 23


def _first_epoch_ids(stream) -> list[int]:
    ids = []
    for batch in stream:
        if stream.epoch > 0:
            return ids
        ids += batch["id"].tolist()


def test_two_processes_see_disjoint_halves(shards):
    seen = [_first_epoch_ids(_stream(shards, rank, world=2, batch_size=1)) for rank in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [i for i in range(24) if i != 7]


def test_resumed_stream_continues_exactly_across_epochs(shards):
    reference = [b for _, b in zip(range(30), _stream(shards))]  # 11 batches per epoch: crosses two epochs
    stream = _stream(shards)
    first = [b for _, b in zip(range(13), stream)]
    resumed = _stream(shards)
    resumed.load_state_dict(stream.state_dict())
    rest = [b for _, b in zip(range(17), resumed)]
    for expected, got in zip(reference, first + rest):
        torch.testing.assert_close(expected, got)
    epochs = [torch.cat([b["id"] for b in reference[i * 11 : (i + 1) * 11]]).tolist() for i in range(2)]
    assert epochs[0] != epochs[1] and len(set(epochs[0]) & set(epochs[1])) >= 21  # reshuffled per epoch (22 of 23 used)


def test_missing_column_names_the_flag(shards):
    with pytest.raises(ValueError, match=r"--image_column 'jpg' not found.*\['image', 'label'\]"):
        check_columns(load_stream(data_files=shards), image_column="jpg", label_column="label")
    with pytest.raises(ValueError, match="matches no file"):
        load_stream(data_files=shards.replace("train-", "nothing-"))


def test_embedded_dataset_has_imagenet_schema(tmp_path):
    # two processes racing to create it (two demo runs started side by side) both succeed, with one complete set
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        outs = list(pool.map(write_embedded_dataset, [tmp_path / "mnist"] * 2))
    out = outs[0]
    assert sorted(p.name for p in out.iterdir()) == ["test-00000.parquet"] + [f"train-0000{i}.parquet" for i in range(4)]
    train = load_stream(data_files=str(out / "train-*.parquet"))
    assert train.num_shards == 4 and class_names(train, "label") == MNIST_NAMES
    labels = [example["label"] for example in train]
    assert len(labels) == 4500 and np.bincount(labels).tolist() == [450] * 10
    example = next(iter(train))
    assert example["image"].size == (28, 28) and example["image"].mode == "RGB"
    test = list(load_stream(data_files=str(out / "test-*.parquet")))
    assert len(test) == 500
