"""VAR's multi-scale residual VQVAE (arXiv 2404.02905) as a transformers model.

Architecture facts from FoundationVision/VAR `models/vqvae.py`, `models/quant.py` and `models/basic_vae.py`; the code is
written anew. The conv encoder and decoder are taming's VQGAN, which diffusers' `Encoder` / `Decoder` build exactly
(attention in the lowest-resolution blocks and in the mid blocks); the quantiser is VAR's own.

For a schedule of sides (s_0, ..., s_{K-1}), s_{K-1} the latent grid, scale k quantises the area-downsampled residual,
and its code map, upsampled and passed through a phi conv, is added to the reconstruction `f_hat` and removed from the
residual. Decoding sums the same terms of all scales.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_var import VARVQVAEConfig, check_scale_schedule


@dataclass
class VARVQVAEOutput(ModelOutput):
    """
    reconstruction: decoded pixels [B, 3, H, W] of the straight-through `f_hat` (not clamped).
    vq_loss: VAR's loss, averaged over scales: mean ||f_hat_k - f||^2 (to the codes) + beta * the same to the encoder.
    indices: code ids of each scale, a list of [B, s_k, s_k].
    hidden_states: with `output_hidden_states`, the encoder's latents f and the reconstruction f_hat after each scale,
        each [B, C, s, s] (C the codebook width, s the latent grid).
    """

    reconstruction: torch.FloatTensor | None = None
    vq_loss: torch.FloatTensor | None = None
    indices: list[torch.LongTensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class VARPhi(nn.Conv2d):
    """3x3 conv blended with its input: `(1 - ratio) * h + ratio * conv(h)`."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h):
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class VARVectorQuantizer(nn.Module):
    """Multi-scale residual quantiser with Euclidean nearest codes and `num_quant_resi_convs` shared phi convs."""

    def __init__(self, config: VARVQVAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.codebook_embed_dim)
        count = config.num_quant_resi_convs
        self.quant_resi = nn.ModuleList(VARPhi(config.codebook_embed_dim, config.quant_resi) for _ in range(count))
        # VAR's ticks: phi i serves the scales whose position k / (K - 1) is nearest to ticks[i]
        margin = 1 / 3 / count if count == 4 else 1 / 2 / count
        self.ticks = np.linspace(margin, 1 - margin, count)

    def phi(self, scale_index: int, num_scales: int) -> VARPhi:
        position = scale_index / (num_scales - 1)
        return self.quant_resi[int(np.argmin(np.abs(self.ticks - position)))]

    def nearest_codes(self, latents: torch.Tensor) -> torch.LongTensor:
        """latents [B, C, h, w] -> indices [B, h, w]: ||z||^2 + ||e||^2 - 2 z.e as VAR computes it (same near-ties)."""
        batch, channels, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, channels)
        codebook = self.embedding.weight
        distances = flat.square().sum(1, keepdim=True) + codebook.square().sum(1)
        distances = torch.addmm(distances, flat, codebook.t(), beta=1, alpha=-2)  # [N, K]
        return distances.argmin(dim=1).view(batch, height, width)

    def upsampled_term(self, code_vectors: torch.Tensor, scale_index: int, num_scales: int, side: int) -> torch.Tensor:
        """Scale k's contribution to f_hat: code vectors [B, C, s_k, s_k] -> [B, C, side, side]."""
        if scale_index != num_scales - 1:
            code_vectors = F.interpolate(code_vectors, size=(side, side), mode="bicubic")
        return self.phi(scale_index, num_scales)(code_vectors)


class VARVQVAE(PreTrainedModel):
    r"""VAR's tokenizer. Pixels in [-1, 1] <-> one code map per scale of `config.patch_nums` (or any schedule ending at
    the latent grid, `H / config.downsample_factor`).

    Example:
    ```python
    >>> from st_ar_hf import VARVQVAE, VARVQVAEConfig
    >>> vq = VARVQVAE(VARVQVAEConfig(base_channels=32, ch_mult=[1, 2], codebook_size=64, patch_nums=[1, 2, 4]))
    >>> indices = vq.encode(torch.rand(1, 3, 8, 8) * 2 - 1)  # [[1, 1, 1], [1, 2, 2], [1, 4, 4]]
    >>> pixels = vq.decode(indices)  # [1, 3, 8, 8] in [-1, 1]
    ```
    """

    config_class = VARVQVAEConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vqvae"
    _no_split_modules = ["ResnetBlock2D", "Attention"]

    def __init__(self, config: VARVQVAEConfig):
        super().__init__(config)
        widths = [config.base_channels * m for m in config.ch_mult]
        levels = len(widths)
        self.encoder = Encoder(
            in_channels=config.in_channels, out_channels=config.codebook_embed_dim,
            down_block_types=["DownEncoderBlock2D"] * (levels - 1) + ["AttnDownEncoderBlock2D"],
            block_out_channels=widths, layers_per_block=config.num_res_blocks, double_z=False,
        )
        self.decoder = Decoder(
            in_channels=config.codebook_embed_dim, out_channels=config.out_channels,
            up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (levels - 1),
            block_out_channels=widths, layers_per_block=config.num_res_blocks,
        )
        kernel = config.quant_conv_kernel_size
        self.quant_conv = nn.Conv2d(config.codebook_embed_dim, config.codebook_embed_dim, kernel, padding=kernel // 2)
        self.quantize = VARVectorQuantizer(config)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.codebook_embed_dim, kernel, padding=kernel // 2)
        self.post_init()

    def _schedule(self, scales, latent_side: int | None = None) -> tuple[int, ...]:
        scales = check_scale_schedule(self.config.patch_nums if scales is None else scales, "scales")
        if latent_side is not None and scales[-1] != latent_side:
            raise ValueError(f"scales must end at the latent grid ({latent_side}), got {list(scales)}")
        return scales

    def _latents(self, pixel_values) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be a float tensor [B, {self.config.in_channels}, H, W] in [-1, 1], got "
                             f"{getattr(pixel_values, 'dtype', type(pixel_values))} {tuple(getattr(pixel_values, 'shape', ()))}")
        factor = self.config.downsample_factor
        _, channels, height, width = pixel_values.shape
        if channels != self.config.in_channels or height != width or height % factor:
            raise ValueError(f"pixel_values must be square with {self.config.in_channels} channels and a side divisible "
                             f"by the downsample factor {factor}, got shape {tuple(pixel_values.shape)}")
        return self.quant_conv(self.encoder(pixel_values))  # [B, C, H/f, W/f]

    def _quantize_residual(self, latents, scales) -> tuple[list[torch.LongTensor], torch.Tensor, list[torch.Tensor]]:
        """latents f [B, C, s, s] -> (indices per scale [B, s_k, s_k], f_hat, f_hat after each scale); no gradient
        flows through the code choice."""
        side, num_scales = latents.shape[-1], len(scales)
        f_rest, f_hat, f_hats, indices = latents.detach().clone(), torch.zeros_like(latents), [], []
        for k, scale in enumerate(scales):
            residual = F.interpolate(f_rest, size=(scale, scale), mode="area") if k != num_scales - 1 else f_rest
            indices.append(self.quantize.nearest_codes(residual))
            term = self.quantize.upsampled_term(self.code_vectors(indices[-1]), k, num_scales, side)
            f_hat = f_hat + term
            f_rest = f_rest - term
            f_hats.append(f_hat)
        return indices, f_hat, f_hats

    def code_vectors(self, indices: torch.LongTensor) -> torch.Tensor:
        """indices [B, h, w] -> code vectors [B, C, h, w] (the raw codebook rows)."""
        return self.quantize.embedding(indices).permute(0, 3, 1, 2)

    @apply_forward_hook
    def encode(self, pixel_values: torch.FloatTensor, scales: list[int] | None = None) -> list[torch.LongTensor]:
        """pixel_values [B, 3, H, W] -> code ids of each scale, a list of [B, s_k, s_k] (`scales` default
        `config.patch_nums`; it must end at the latent grid H / f)."""
        latents = self._latents(pixel_values)
        return self._quantize_residual(latents, self._schedule(scales, latents.shape[-1]))[0]

    def split_scales(self, indices) -> list[torch.LongTensor]:
        """Per-scale maps [B, s_k, s_k] from a list of them or from the flat [B, L] of `config.patch_nums`."""
        if isinstance(indices, torch.Tensor):
            scales = self.config.patch_nums
            if indices.ndim != 2 or indices.shape[1] != sum(s * s for s in scales):
                raise ValueError(f"indices as one tensor must be [B, {sum(s * s for s in scales)}] (the scales "
                                 f"{scales} flattened), got {tuple(indices.shape)}")
            indices = [part.view(-1, s, s) for part, s in zip(indices.split([s * s for s in scales], dim=1), scales)]
        if not isinstance(indices, (list, tuple)) or not indices or any(
            not isinstance(m, torch.Tensor) or m.ndim != 3 or m.shape[1] != m.shape[2] for m in indices
        ):
            raise ValueError("indices must be a list of square code maps [B, s_k, s_k] or a flat [B, L] tensor")
        check_scale_schedule([m.shape[-1] for m in indices], "indices (their sides)")
        if any(m.numel() and (m.min() < 0 or m.max() >= self.config.codebook_size) for m in indices):
            raise ValueError(f"indices must lie in [0, {self.config.codebook_size})")
        return list(indices)

    def scale_inputs(self, indices) -> torch.Tensor:
        """Teacher-forcing inputs of the transformer: for k = 1 .. K-1, the reconstruction from scales < k
        area-downsampled to s_k, flattened: [B, L - 1, C] (VAR's `idxBl_to_var_input`)."""
        maps = self.split_scales(indices)
        scales, f_hat, inputs = [m.shape[-1] for m in maps], None, []
        for k in range(len(maps) - 1):  # the decoding steps, with the ground-truth codes
            f_hat, next_input = self.next_scale_input(f_hat, self.code_vectors(maps[k]), k, scales)
            inputs.append(next_input)
        return torch.cat(inputs, dim=1)

    def next_scale_input(self, f_hat: torch.Tensor | None, code_vectors: torch.Tensor, scale_index: int,
                         scales: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decoding step: adds scale k's code vectors [B, C, s_k, s_k] to f_hat [B, C, s, s] (None before the
        first scale) and returns (f_hat, the next scale's input [B, s_{k+1}^2, C], or None after the last scale)."""
        term = self.quantize.upsampled_term(code_vectors, scale_index, len(scales), scales[-1])
        f_hat = term if f_hat is None else f_hat + term
        if scale_index == len(scales) - 1:
            return f_hat, None
        return f_hat, F.interpolate(f_hat, size=(scales[scale_index + 1],) * 2, mode="area").flatten(2).transpose(1, 2)

    def decode_latents(self, f_hat: torch.Tensor) -> torch.FloatTensor:
        """f_hat [B, C, s, s] -> pixels [B, 3, s*f, s*f] clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    @apply_forward_hook
    def decode(self, indices) -> torch.FloatTensor:
        """Code maps of all scales (a list of [B, s_k, s_k], or the flat [B, L] of `config.patch_nums`) -> pixels
        [B, 3, s*f, s*f] in [-1, 1]."""
        maps = self.split_scales(indices)
        side, f_hat = maps[-1].shape[-1], None
        for k, codes in enumerate(maps):
            term = self.quantize.upsampled_term(self.code_vectors(codes), k, len(maps), side)
            f_hat = term if f_hat is None else f_hat + term
        return self.decode_latents(f_hat)

    def forward(self, pixel_values: torch.FloatTensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> VARVQVAEOutput:
        """Reconstruction through the straight-through f_hat and VAR's VQ loss (used to train the tokenizer);
        `output_hidden_states` adds the latents and f_hat after each scale."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        latents = self._latents(pixel_values)
        scales = self._schedule(None, latents.shape[-1])
        indices, f_hat, f_hats = self._quantize_residual(latents, scales)
        target = latents.detach()
        # codes pull towards the latents (f_hat carries the codebook's gradient) and the encoder commits to f_hat
        vq_loss = sum(F.mse_loss(f, target) + self.config.commit_loss_beta * F.mse_loss(f.detach(), latents)
                      for f in f_hats) / len(scales)
        quantized = f_hat.detach() - target + latents  # straight-through to the encoder
        output = VARVQVAEOutput(reconstruction=self.decoder(self.post_quant_conv(quantized)), vq_loss=vq_loss,
                                indices=indices, hidden_states=(latents, *f_hats) if output_hidden_states else None)
        return output if return_dict else output.to_tuple()


__all__ = ["VARVQVAE", "VARVQVAEOutput"]
