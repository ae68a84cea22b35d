"""The adversarial and perceptual parts of the tokenizer objectives: a PatchGAN discriminator with hinge (LlamaGen) or
vanilla (Prologue) losses and Prologue's LeCam and R1 regularisers, and LPIPS-VGG as a pluggable perceptual distance
(its weights ship in no package here; load them from files).

PatchGAN: pix2pix's N-layer discriminator as LlamaGen uses it (4x4 convolutions, BatchNorm, LeakyReLU 0.2,
N(0, 0.02) init). LPIPS: Zhang et al. 2018, VGG16 features at relu1_2 .. relu5_3, unit-normalised over channels,
weighted by learned 1x1 convolutions, averaged over space and summed.
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


class PatchGANDiscriminator(nn.Module):
    """Real/fake logits per patch: [B, 3, H, W] -> [B, 1, h, w]. `num_layers` stride-2 blocks (3 in LlamaGen; an
    image must be at least 2 ** (num_layers + 2) pixels wide)."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for n in range(1, num_layers + 1):
            out_channels = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2)]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean D(fake)."""
    return -fake_logits.mean()


def vanilla_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-D(real)) + mean softplus(D(fake))): the non-saturating GAN's (Prologue's "vanilla")."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def vanilla_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


GAN_LOSSES = {"hinge": (hinge_generator_loss, hinge_discriminator_loss),
              "vanilla": (vanilla_generator_loss, vanilla_discriminator_loss)}


class LeCamRegularizer(nn.Module):
    """LeCam (Tseng et al. 2021) as Prologue's trainer applies it to the discriminator: running means of D(real) and
    D(fake) (from 0, decay 0.999) are first updated with the batch, then the penalty is
    `mean relu(D(real) - mean_fake)^2 + mean relu(mean_real - D(fake))^2`. The means are buffers (checkpointed)."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_mean", torch.zeros(()))
        self.register_buffer("fake_mean", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.real_mean.lerp_(real_logits.float().mean(), 1 - self.decay)
            self.fake_mean.lerp_(fake_logits.float().mean(), 1 - self.decay)
        return F.relu(real_logits - self.fake_mean).pow(2).mean() + F.relu(self.real_mean - fake_logits).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real_pixels: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the mean over images of ||d sum(D(x)) / dx||^2 / 2 at the real images, which must
    have required grad when `real_logits` were computed; differentiable (double backward) for the discriminator."""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_pixels, create_graph=True)
    return grads.pow(2).sum(dim=(1, 2, 3)).mean() / 2


VGG16_CHANNELS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]  # conv blocks


class LPIPS(nn.Module):
    """LPIPS-VGG distance per image: [B, 3, H, W] pairs in [-1, 1] -> [B].

    `from_files(vgg16, lpips_lin)` loads torchvision's VGG16 ImageNet weights (`features.<i>.weight/bias`) and the
    lpips package's `vgg.pth` (`lin<k>.model.1.weight`), both with `torch.load(weights_only=True)` or as
    safetensors; no file is downloaded."""

    def __init__(self):
        super().__init__()
        blocks, in_channels = [], 3
        for i, widths in enumerate(VGG16_CHANNELS):
            layers = [nn.MaxPool2d(2, 2)] if i > 0 else []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
                in_channels = width
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)  # outputs: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        self.lins = nn.ModuleList(nn.Conv2d(widths[-1], 1, 1, bias=False) for widths in VGG16_CHANNELS)
        # the lpips ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised
        self.register_buffer("input_shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg16: str | Path, lpips_lin: str | Path) -> "LPIPS":
        model, vgg, lin = cls(), _load(vgg16), _load(lpips_lin)
        conv_names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("blocks.")]
        vgg_indices = sorted({int(k.split(".")[1]) for k in vgg if k.startswith("features.")})
        if len(vgg_indices) != len(conv_names):
            raise ValueError(f"{vgg16}: expected {len(conv_names)} VGG16 convolutions under features.*, found {len(vgg_indices)}")
        state = {}
        for name, index in zip(conv_names, vgg_indices):
            state[f"{name}.weight"], state[f"{name}.bias"] = vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"]
        for k in range(len(VGG16_CHANNELS)):
            state[f"lins.{k}.weight"] = lin[f"lin{k}.model.1.weight"]
        model.load_state_dict(state)
        return model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = (torch.cat([inputs, targets]) - self.input_shift) / self.input_scale  # [2B, 3, H, W]
        distance = 0.0
        for block, lin in zip(self.blocks, self.lins):
            x = block(x)
            a, b = F.normalize(x, dim=1, eps=1e-10).chunk(2)
            distance = distance + lin((a - b) ** 2).mean(dim=(2, 3))  # [B, 1]
        return distance.flatten()


def _load(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
