"""Image reconstruction metrics on [B, 3, H, W] tensors in [0, 1]."""

import torch
import torch.nn.functional as F


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image [B] (peak 1)."""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(images: torch.Tensor, references: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image [B] (Wang et al. 2004): Gaussian window, C1 = 0.01^2, C2 = 0.03^2, valid
    positions only, averaged over channels (as skimage's `gaussian_weights=True, use_sample_covariance=False`)."""
    x, y = images.float(), references.float()
    channels = x.shape[1]
    coords = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2).expand(channels, 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)
