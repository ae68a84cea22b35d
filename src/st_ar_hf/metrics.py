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


# ------------------------------------------------------------------ generation metrics (the ADM evaluator's protocol)
#
# OpenAI's ADM evaluator (guided-diffusion `evaluations/evaluator.py`), which LlamaGen and ST-AR report, computes on
# Inception-v3 features: FID on the 2048-d pool features, sFID on the first 7 channels of `mixed_6/conv` (a 17x17
# map), the Inception Score over parts of 5000 images (10 for 50k samples), and precision / recall of k = 3
# nearest-neighbour manifolds (squared Euclidean distances, computed in float16 as the evaluator does). The functions
# below are that arithmetic on any feature network; a number is comparable with the published ones only when the
# network is ADM's Inception.


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2)), in float64; the trace of the square root is the sum
    of the square roots of the eigenvalues of s1 s2 (real and >= 0 up to rounding)."""
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, sigma1, mu2, sigma2))
    root_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * root_trace)


def gaussian_statistics(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D, D] (unbiased, as np.cov) of features [N, D], in float64."""
    features = torch.as_tensor(features, dtype=torch.float64)
    return features.mean(0), torch.cov(features.T)


def inception_score(logits, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) || p(y))) in each consecutive part of `split_size` images, averaged (ADM reports the mean)."""
    probabilities = torch.as_tensor(logits, dtype=torch.float64).softmax(dim=1)
    scores = []
    for part in probabilities.split(split_size):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
        scores.append(kl.mean().exp())
    return float(torch.stack(scores).mean())


def squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|u_i - v_j|^2 [N, M] as the ADM evaluator computes them: |u|^2 - 2 u.v + |v|^2 in float16, clamped at 0,
    redone in float32 when float16 overflows."""

    def compute(dtype):
        a, b = u.to(dtype), v.to(dtype)
        return (a.square().sum(1)[:, None] - 2 * a @ b.T + b.square().sum(1)[None, :]).clamp_min(0).float()

    distances = compute(torch.float16)
    return distances if distances.isfinite().all() else compute(torch.float32)


def manifold_radii(features: torch.Tensor, k: int = 3, batch_size: int = 10000) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = [squared_distances(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(batch_size)]
    return torch.cat(radii)


def precision_recall(reference_features, sample_features, k: int = 3, batch_size: int = 10000) -> tuple[float, float]:
    """Precision: share of samples inside the reference manifold (within some reference point's k-NN radius);
    recall: share of reference points inside the sample manifold."""
    reference = torch.as_tensor(reference_features, dtype=torch.float32)
    samples = torch.as_tensor(sample_features, dtype=torch.float32)
    reference_radii, sample_radii = manifold_radii(reference, k, batch_size), manifold_radii(samples, k, batch_size)

    def inside(points, manifold, radii):
        found = [(squared_distances(rows, manifold) <= radii[None, :]).any(dim=1) for rows in points.split(batch_size)]
        return torch.cat(found).double().mean().item()

    return inside(samples, reference, reference_radii), inside(reference, samples, sample_radii)
