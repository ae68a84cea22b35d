"""Sample accuracy: how often a generated image is recognised, by a classifier trained on real labelled images, as the
class it was sampled for; overall and per class, with the classifier's own held-out accuracy beside it. On small data
sets (the embedded digits) it is the number a person's "can I recognise it" corresponds to, where FID on an ImageNet
network is rough.

    classifier = fit_sample_classifier(train_images, train_labels, test_images, test_labels)
    classifier.save_pretrained("digit-classifier")          # config.json + model.safetensors
    sample_accuracy(load_sample_classifier("digit-classifier"), samples, sample_labels)
"""

import glob
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn

from .evaluation import load_image_batch


class SampleClassifier(nn.Module, PyTorchModelHubMixin):
    """A small CNN on uint8 images [N, S, S, 3]: three 3x3 conv + BatchNorm + ReLU stages (width, 2 width, 4 width
    channels; 2x max-pooling between them), global average pooling and a linear head. Its held-out accuracy is a
    buffer, saved with the weights."""

    def __init__(self, num_classes: int, image_size: int, width: int = 16):
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        channels = [3, width, 2 * width, 4 * width]
        stages = []
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            stages += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            stages += [nn.MaxPool2d(2)] if i < 2 else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(channels[-1], num_classes)
        self.register_buffer("held_out_accuracy", torch.tensor(float("nan")))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [N, 3, S, S] in [-1, 1]
        return self.head(self.features(pixels))  # logits [N, num_classes]

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Class ids [N] of uint8 images [N, S, S, 3] at the classifier's resolution."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"the classifier was trained on {self.image_size}x{self.image_size} images, "
                             f"got {images.shape[1]}x{images.shape[2]}")
        was_training = self.training
        self.eval()
        predictions = [self(torch.from_numpy(batch)).argmax(-1) for batch in np.array_split(images, -(-len(images) // batch_size))]
        self.train(was_training)
        return torch.cat(predictions).numpy()


def random_shifts(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image [N, S, S, 3] translated by its own integer offset in [-max_shift, max_shift]^2, edges replicated."""
    n, size = len(images), images.shape[1]
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (max_shift,) * 4, mode="replicate")  # [N, 3, S + 2m, S + 2m]
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(size))[:, None, :, None]  # [N, 1, S, 1]
    cols = (offsets[:, 1, None] + torch.arange(size))[:, None, None, :]  # [N, 1, 1, S]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols].permute(0, 2, 3, 1)


def fit_sample_classifier(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                          test_labels: np.ndarray, epochs: int = 12, batch_size: int = 64, width: int = 16,
                          max_shift: int = 2, seed: int = 0) -> SampleClassifier:
    """A `SampleClassifier` trained with AdamW (lr 2e-3, cosine to 0) on uint8 images [N, S, S, 3] and int labels [N],
    each batch shifted by up to `max_shift` pixels, its accuracy on the test images stored in `held_out_accuracy`."""
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        if len(images) == 0 or len(images) != len(labels) or images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f"{name} split: expected square uint8 images [N, S, S, 3] and as many labels, got "
                             f"{list(images.shape)} and {len(labels)} labels")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = SampleClassifier(int(max(train_labels.max(), test_labels.max())) + 1, train_images.shape[1], width)
    images, targets = torch.from_numpy(train_images), torch.from_numpy(np.asarray(train_labels)).long()
    steps = epochs * -(-len(images) // batch_size)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    classifier.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = F.cross_entropy(classifier(random_shifts(images[batch], max_shift, generator)), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifier.eval()
    classifier.held_out_accuracy.fill_(float((classifier.predict(test_images) == test_labels).mean()))
    return classifier


def load_sample_classifier(folder: str | Path, argument: str = "--classifier") -> SampleClassifier:
    """A `SampleClassifier` saved by `save_pretrained`, its config.json and model.safetensors checked; errors name
    `argument`."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise ValueError(f"{argument} {folder}: no model.safetensors (save one with --save-classifier)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{argument} {folder}: config.json is missing or not JSON ({error})") from None
    if not isinstance(config, dict) or not all(isinstance(config.get(key), int) and config[key] >= 1
                                               for key in ("num_classes", "image_size")):
        raise ValueError(f"{argument} {folder}: config.json is no SampleClassifier config (expected an object with "
                         f"num_classes and image_size >= 1), got {str(config)[:80]}")
    try:
        return SampleClassifier.from_pretrained(folder)
    except (TypeError, RuntimeError, SafetensorError) as error:  # unknown settings, other shapes, a corrupt file
        raise ValueError(f"{argument} {folder}: its files do not make a SampleClassifier ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]})") from None


def check_labels_are_classes(labels: np.ndarray, num_classes: int, argument: str = "labels") -> None:
    """Refuses labels that are no class id of a `num_classes`-class classifier (they would score 0, not fail)."""
    unknown = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if len(unknown):
        raise ValueError(f"{argument}: labels {unknown.tolist()[:10]} are not among the classifier's {num_classes} "
                         f"classes (0..{num_classes - 1})")


def sample_accuracy(classifier: SampleClassifier, images: np.ndarray, labels: np.ndarray) -> dict:
    """{"sample_accuracy": share of images [N, S, S, 3] classified as their label [N], "per_class": {label: share},
    "classifier_held_out_accuracy": the classifier's accuracy on real held-out images}."""
    check_labels_are_classes(labels, classifier.num_classes)
    correct = classifier.predict(images) == labels
    return {
        "sample_accuracy": float(correct.mean()),
        "per_class": {int(label): float(correct[labels == label].mean()) for label in np.unique(labels)},
        "classifier_held_out_accuracy": float(classifier.held_out_accuracy),
    }


def load_labels(path: str | Path, num_images: int, argument: str = "--samples") -> np.ndarray:
    """The int labels `arr_1` [N] of an ADM-format `.npz` whose `arr_0` holds `num_images` images."""
    with np.load(path, allow_pickle=False) as data:
        if "arr_1" not in data.files:
            raise ValueError(f"{argument} {path}: sample accuracy needs the class of each image under 'arr_1' "
                             "(sample_ddp.py writes it)")
        labels = data["arr_1"]
    if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(f"{argument} {path}: 'arr_1' must hold {num_images} class ids >= 0, got {labels.dtype} "
                         f"{list(labels.shape)}")
    return labels


def load_labelled_images(source: str, image_size: int, argument: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, S, S, 3] and int labels [N] from an ADM-format `.npz` (arr_0, arr_1) at resolution S, or
    from data files (a glob or a folder of parquet shards with `image` and `label` columns, such as the embedded
    digits' train-*.parquet), centre-cropped to S as the training data is."""
    if source.endswith(".npz"):
        images = load_image_batch(source, argument)
        if images.shape[1:3] != (image_size, image_size):
            raise ValueError(f"{argument} {source}: {images.shape[1]}x{images.shape[2]} images, the samples are "
                             f"{image_size}x{image_size}")
        return images, load_labels(source, len(images), argument)
    from .training.data import center_crops, load_stream

    files = str(Path(source) / "*.parquet") if Path(source).is_dir() else source
    if not glob.glob(files, recursive=True):
        raise ValueError(f"{argument} {source}: expected an .npz or parquet shards, matches no file")
    stream = load_stream(data_files=files).decode(False)
    if not {"image", "label"} <= set(stream.features or next(iter(stream))):
        raise ValueError(f"{argument} {source}: expected 'image' and 'label' columns")
    crops = list(center_crops(stream, "image", image_size, "label"))
    if not crops:
        raise ValueError(f"{argument} {source}: no decodable image")
    return np.stack([np.asarray(image.convert("RGB")) for image, _ in crops]), np.array([label for _, label in crops])
