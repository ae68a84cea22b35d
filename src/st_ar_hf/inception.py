"""The Inception-v3 of the ADM evaluator, in PyTorch.

OpenAI's evaluator (guided-diffusion `evaluations/evaluator.py`), which LlamaGen and ST-AR report, runs TensorFlow's
2015-12-05 ImageNet graph `classify_image_graph_def.pb` on uint8 images fed as float32 and reads:
- `pool_3`: the 2048-d average of the last 8x8 map (FID, precision, recall);
- `mixed_6/conv`: the 1x1 branch (after BN and ReLU) of the fourth 17x17 block, Mixed_6d here; the evaluator keeps its
  first 7 channels, flattened in TF's [H, W, C] order: 17 * 17 * 7 = 2023-d (sFID);
- `softmax/logits/MatMul`: pool_3 times the 2048x1008 softmax weights, without the bias (Inception Score).
Inside the graph the images are resized to 299x299 by TF1's bilinear resize (no half-pixel centres) and mapped to
(x - 128) / 128. The graph differs from torchvision's Inception-v3 in its average pools (padding not counted) and in the
last block, which pools with max.

The weights are the graph's, converted to PyTorch by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`) and
torch-fidelity (`weights-inception-2015-12-05-6726825d.pth`); both use the key names of this module. They ship in no
package: `InceptionV3Features.from_file` loads a local copy (with `weights_only=True`, or a safetensors file).
"""

import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_ENV = "ST_AR_INCEPTION_WEIGHTS"


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `ResizeBilinear` with align_corners=False on [N, C, H, W]: output pixel i reads input coordinate
    i * in / out (float32), interpolating along W, then along H."""

    def taps(length: int):
        position = torch.arange(size, dtype=torch.float32, device=images.device) * (length / size)
        low = position.floor().long()
        return low, (low + 1).clamp(max=length - 1), (position - low).to(images.dtype)

    low, high, frac = taps(images.shape[-1])
    images = images[..., low] + (images[..., high] - images[..., low]) * frac
    low, high, frac = taps(images.shape[-2])
    return images[..., low, :] + (images[..., high, :] - images[..., low, :]) * frac[:, None]


class ConvBN(nn.Sequential):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()


def avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF averages over the valid taps only


class BlockA(nn.Module):
    """35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, in_channels: int, pool_channels: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_channels, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool_3x3(x)),
        ], dim=1)


class BlockB(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class BlockC(nn.Module):
    """17x17 with factorised 7x7: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        row, column = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, width, 1)
        self.branch7x7_2 = ConvBN(width, width, **row)
        self.branch7x7_3 = ConvBN(width, 192, **column)
        self.branch7x7dbl_1 = ConvBN(in_channels, width, 1)
        self.branch7x7dbl_2 = ConvBN(width, width, **column)
        self.branch7x7dbl_3 = ConvBN(width, width, **row)
        self.branch7x7dbl_4 = ConvBN(width, width, **column)
        self.branch7x7dbl_5 = ConvBN(width, 192, **row)
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x):
        double = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(double)),
            self.branch_pool(avg_pool_3x3(x)),
        ], dim=1)


class BlockD(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class BlockE(nn.Module):
    """8x8 with split 3x3: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1; the pool is an average
    in the first block and a max in the second (TF's graph)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        row, column = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        self.max_pool = pool == "max"
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **column)
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **column)
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool_3x3(x)),
        ], dim=1)


class InceptionV3Features(nn.Module):
    """uint8 images [N, H, W, 3] -> {"pool": [N, 2048], "spatial": [N, 2023], "logits": [N, 1008]} as the ADM
    evaluator reads them (see the module docstring)."""

    name = "Inception-v3 (ADM evaluator, TF 2015-12-05 weights)"
    reads_adm_statistics = True  # the `mu`/`sigma`/`mu_s`/`sigma_s` stored in ADM reference batches are its statistics
    input_size, spatial_channels = 299, 7

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (BlockC(768, w) for w in (128, 160, 160, 192))
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, "avg"), BlockE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # the softmax layer; the evaluator uses its weight only
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike, argument: str = "--inception-weights") -> "InceptionV3Features":
        """Loads the converted TF weights (`.pth` read with weights_only=True, or `.safetensors`); errors name
        `argument`."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{argument} {path}: no such file (expected one of {', '.join(WEIGHT_FILES)})")
        try:
            if path.suffix == ".safetensors":
                state_dict = load_file(path)
            else:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
        except (pickle.UnpicklingError, RuntimeError, EOFError, SafetensorError) as error:  # pickled objects, corrupt
            raise ValueError(f"{argument} {path}: unreadable as weights ({type(error).__name__}): expected tensors only, "
                             f"saved by torch.save or as .safetensors") from None
        if not isinstance(state_dict, dict):
            raise ValueError(f"{argument} {path}: holds a {type(state_dict).__name__}, expected a state dict")
        network = cls()
        expected = set(network.state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(f"{argument} {path}: not the FID Inception-v3 weights ({len(missing)} keys missing, e.g. "
                             f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
        network.load_state_dict(state_dict)
        return network

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.fc.weight.device).permute(0, 3, 1, 2).float()  # [N, 3, H, W] in [0, 255]
        x = (resize_bilinear_tf1(x, self.input_size) - 128) / 128  # [N, 3, 299, 299]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # [N, 192, 71, 71]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(F.max_pool2d(x, 3, stride=2))))  # [N, 288, 35, 35]
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # [N, 768, 17, 17]
        # mixed_6/conv, recomputed outside the block: [N, 7, 17, 17] -> TF's [N, 17, 17, 7] order
        spatial = self.Mixed_6d.branch1x1(x)[:, : self.spatial_channels].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(x)))  # [N, 1280, 8, 8]
        pool = self.Mixed_7c(self.Mixed_7b(x)).mean(dim=(2, 3))  # [N, 2048]
        return {"pool": pool, "spatial": spatial, "logits": pool @ self.fc.weight.T}


def find_weights() -> Path | None:
    """The Inception weights from the user's environment: $ST_AR_INCEPTION_WEIGHTS, else the file pytorch-fid or
    torch-fidelity left in torch's hub cache ($TORCH_HOME/hub/checkpoints)."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return next((cache / name for name in WEIGHT_FILES if (cache / name).is_file()), None)
