"""LlamaGen's VQ tokenizer (a taming-style VQGAN with an l2-normalised codebook) as a transformers model.

Architecture facts from LlamaGen `tokenizer/tokenizer_image/vq_model.py`; the code is written anew.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_llamagen import LlamaGenVQVAEConfig


@dataclass
class LlamaGenVQVAEEncoderOutput(ModelOutput):
    """
    indices: code ids [B, h, w], row-major.
    quantized: code vectors [B, codebook_embed_dim, h, w] (straight-through: gradients reach the encoder).
    latents: encoder output after `quant_conv` (l2-normalised when the codebook is) [B, codebook_embed_dim, h, w].
    hidden_states: with `output_hidden_states`, the encoder's feature maps [B, C, H', W']: the input of its first
        level, the output of each level and of its mid block.
    """

    indices: torch.LongTensor | None = None
    quantized: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LlamaGenVQVAEOutput(ModelOutput):
    """
    reconstruction: decoded pixels [B, 3, H, W], nominally in [-1, 1] (not clamped).
    codebook_loss: mean ||q - sg(z)||^2, pulls codes to the latents.
    commitment_loss: commit_loss_beta * mean ||sg(q) - z||^2, pulls latents to their codes.
    entropy_loss: entropy_loss_ratio * (per-sample entropy - batch entropy) of the code assignment, 0 when disabled.
    indices: code ids [B, h, w].
    hidden_states: with `output_hidden_states`, the feature maps [B, C, H', W'] in the order of computation: the
        encoder's (the input of its first level, the output of each level and of its mid block), then the decoder's
        (the output of its mid block, which is the input of its first level, and of each level).
    """

    reconstruction: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class LlamaGenResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class LlamaGenAttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).view(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))  # [B, 1, hw, C]
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, 1, hw, C]
        return x + self.proj_out(attended.transpose(2, 3).reshape(b, c, h, w))


class LlamaGenDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric pad


class LlamaGenUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LlamaGenMidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = LlamaGenResnetBlock(channels, channels, dropout)
        self.attn_1 = LlamaGenAttnBlock(channels)
        self.block_2 = LlamaGenResnetBlock(channels, channels, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class LlamaGenVQLevel(nn.Module):
    """One resolution level: residual blocks, each followed by attention at the lowest resolution, then a resample."""

    def __init__(self, in_channels, out_channels, num_blocks, dropout, with_attention, resample: nn.Module | None):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(LlamaGenResnetBlock(channels[i], out_channels, dropout) for i in range(num_blocks))
        self.attn = nn.ModuleList(LlamaGenAttnBlock(out_channels) for _ in range(num_blocks if with_attention else 0))
        self.resample = resample

    def forward(self, x):
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return x if self.resample is None else self.resample(x)


class LlamaGenVQEncoder(nn.Module):
    def __init__(self, config: LlamaGenVQVAEConfig):
        super().__init__()
        channels = [config.base_channels * m for m in [1, *config.ch_mult]]
        last = len(config.ch_mult) - 1
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList(
            LlamaGenVQLevel(
                channels[i], channels[i + 1], config.num_res_blocks, config.dropout,
                with_attention=i == last, resample=LlamaGenDownsample(channels[i + 1]) if i != last else None,
            )
            for i in range(len(config.ch_mult))
        )
        self.mid = LlamaGenMidBlock(channels[-1], config.dropout)
        self.norm_out = _group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], config.z_channels, 3, padding=1)

    def forward(self, pixel_values, hidden_states: list | None = None):
        """pixels -> z [B, z_channels, h, w]; appends to `hidden_states`, when given, the feature maps that enter the
        first level and leave each level and the mid block."""
        h = self.conv_in(pixel_values)
        if hidden_states is not None:
            hidden_states.append(h)
        for level in self.down:
            h = level(h)
            if hidden_states is not None:
                hidden_states.append(h)
        h = self.mid(h)
        if hidden_states is not None:
            hidden_states.append(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LlamaGenVQDecoder(nn.Module):
    """`up[0]` is the lowest resolution (the order of computation, as in LlamaGen's checkpoints)."""

    def __init__(self, config: LlamaGenVQVAEConfig):
        super().__init__()
        channels = [config.base_channels * m for m in reversed(config.ch_mult)]  # lowest resolution first
        last = len(channels) - 1
        self.conv_in = nn.Conv2d(config.z_channels, channels[0], 3, padding=1)
        self.mid = LlamaGenMidBlock(channels[0], config.dropout)
        self.up = nn.ModuleList(
            LlamaGenVQLevel(
                channels[max(i - 1, 0)], channels[i], config.num_res_blocks + 1, config.dropout,
                with_attention=i == 0, resample=LlamaGenUpsample(channels[i]) if i != last else None,
            )
            for i in range(len(channels))
        )
        self.norm_out = _group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def forward(self, latents, hidden_states: list | None = None):
        """latents -> pixels [B, out_channels, H, W]; appends to `hidden_states`, when given, the feature maps that
        leave the mid block and each level."""
        h = self.mid(self.conv_in(latents))
        if hidden_states is not None:
            hidden_states.append(h)
        for level in self.up:
            h = level(h)
            if hidden_states is not None:
                hidden_states.append(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LlamaGenVectorQuantizer(nn.Module):
    def __init__(self, config: LlamaGenVQVAEConfig):
        super().__init__()
        self.l2_norm = config.codebook_l2_norm
        self.embedding = nn.Embedding(config.codebook_size, config.codebook_embed_dim)

    def codebook(self) -> torch.Tensor:
        """[K, C]; stored rows drift from unit norm in training, so the normalisation is applied on the fly."""
        return F.normalize(self.embedding.weight, dim=-1) if self.l2_norm else self.embedding.weight

    def forward(self, latents):
        """latents [B, C, h, w] -> (z [B, h, w, C], codes [B, h, w, C], indices [B, h, w], distances [B*h*w, K])."""
        z = latents.permute(0, 2, 3, 1)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook()
        flat = z.reshape(-1, z.shape[-1])
        # ||z - e||^2 expanded, as LlamaGen computes it, so that near-ties resolve the same way
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        indices = distances.argmin(dim=1)
        codes = codebook[indices].view(z.shape)
        return z, codes, indices.view(z.shape[:-1]), distances


def _code_entropy_loss(distances: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy of the soft code assignment minus the entropy of its batch average (MaskGIT's form)."""
    logits = -distances / temperature
    probs = logits.softmax(dim=-1)
    sample_entropy = -(probs * F.log_softmax(logits + 1e-5, dim=-1)).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch_entropy = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    return sample_entropy - batch_entropy


class LlamaGenVQVAE(PreTrainedModel):
    r"""LlamaGen's VQ tokenizer. Pixels in [-1, 1] <-> code ids on a `H/f x W/f` grid, `f = config.downsample_factor`.

    Example:
    ```python
    >>> from st_ar_hf import LlamaGenVQVAE, LlamaGenVQVAEConfig
    >>> vq = LlamaGenVQVAE(LlamaGenVQVAEConfig(base_channels=32, ch_mult=[1, 2], z_channels=32, codebook_size=64))
    >>> indices = vq.encode(torch.rand(1, 3, 32, 32) * 2 - 1).indices  # [1, 16, 16]
    >>> pixels = vq.decode(indices)  # [1, 3, 32, 32]
    ```
    """

    config_class = LlamaGenVQVAEConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vqvae"
    _no_split_modules = ["LlamaGenResnetBlock", "LlamaGenAttnBlock"]

    def __init__(self, config: LlamaGenVQVAEConfig):
        super().__init__(config)
        self.encoder = LlamaGenVQEncoder(config)
        self.decoder = LlamaGenVQDecoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.quantize = LlamaGenVectorQuantizer(config)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """PyTorch's default conv init (as LlamaGen trains from) and a unit-norm uniform codebook."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -1.0 / module.num_embeddings, 1.0 / module.num_embeddings)
            if self.config.codebook_l2_norm:
                init.copy_(module.weight, F.normalize(module.weight, dim=-1))

    def _check_pixel_values(self, pixel_values):
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be a float tensor [B, {self.config.in_channels}, H, W] in [-1, 1], got "
                             f"{getattr(pixel_values, 'dtype', type(pixel_values))} of shape {tuple(getattr(pixel_values, 'shape', ()))}")
        f = self.config.downsample_factor
        _, channels, height, width = pixel_values.shape
        if channels != self.config.in_channels or height % f or width % f:
            raise ValueError(f"pixel_values must have {self.config.in_channels} channels and a height and width divisible "
                             f"by the downsample factor {f}, got shape {tuple(pixel_values.shape)}")

    def _quantize(self, pixel_values, hidden_states: list | None):
        """pixels -> (z [B, h, w, C], codes [B, h, w, C], indices [B, h, w], distances [B*h*w, K]); the encoder's
        feature maps are appended to `hidden_states` when given."""
        self._check_pixel_values(pixel_values)
        return self.quantize(self.quant_conv(self.encoder(pixel_values, hidden_states)))

    @apply_forward_hook  # so that diffusers' model CPU offload moves the model in for encode and decode too
    def encode(
        self, pixel_values: torch.FloatTensor, output_hidden_states: bool | None = None, return_dict: bool | None = None
    ) -> LlamaGenVQVAEEncoderOutput:
        """pixel_values [B, 3, H, W] in [-1, 1] -> indices [B, H/f, W/f] and quantized [B, C, H/f, W/f] (and the
        encoder's feature maps with `output_hidden_states`); a tuple when `return_dict` is False. None: the config's."""
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = [] if output_hidden_states else None
        z, codes, indices, _ = self._quantize(pixel_values, hidden_states)
        quantized = z + (codes - z).detach()  # straight-through
        output = LlamaGenVQVAEEncoderOutput(
            indices=indices, quantized=quantized.permute(0, 3, 1, 2), latents=z.permute(0, 3, 1, 2),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def encode_scales(self, pixel_values: torch.FloatTensor, scales: list[int]) -> list[torch.LongTensor]:
        """FlexVAR's multi-scale tokenisation (its tokenizer is this model): the latent, area-downsampled to each side
        of `scales` (increasing, up to the latent grid H / f; FlexVAR's training drops late scales of long random
        schedules), quantised on its own, with no residual between scales -> code ids, a list of [B, s_k, s_k]."""
        self._check_pixel_values(pixel_values)
        height, width = (size // self.config.downsample_factor for size in pixel_values.shape[-2:])
        sides = list(scales) if isinstance(scales, (list, tuple)) else None
        if (height != width or not sides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides)
                or any(b <= a for a, b in zip(sides, sides[1:])) or sides[-1] > height):
            raise ValueError(f"scales must be increasing positive ints up to the side of the (square) latent grid "
                             f"{height}x{width}, got {scales!r}")
        latents = self.quant_conv(self.encoder(pixel_values))  # [B, C, h, w]
        return [self.quantize(F.interpolate(latents, size=(side, side), mode="area"))[2] for side in sides]

    def code_vectors(self, indices: torch.LongTensor) -> torch.FloatTensor:
        """indices [B, h, w] -> code vectors [B, C, h, w] (l2-normalised when the codebook is)."""
        return self.quantize.codebook()[indices].permute(0, 3, 1, 2)

    @apply_forward_hook
    def decode(self, indices: torch.LongTensor) -> torch.FloatTensor:
        """indices [B, h, w] or [B, h*w] (a square grid) -> pixels [B, 3, h*f, w*f] in [-1, 1] (not clamped)."""
        if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int64, torch.int32) or indices.ndim not in (2, 3):
            raise ValueError(f"indices must be an int64/int32 tensor [B, h, w] or [B, h*w], got "
                             f"{getattr(indices, 'dtype', type(indices))} of shape {tuple(getattr(indices, 'shape', ()))}")
        if indices.ndim == 2:
            side = math.isqrt(indices.shape[1])
            if side * side != indices.shape[1]:
                raise ValueError(f"indices [B, h*w] must hold a square grid, got {indices.shape[1]} tokens")
            indices = indices.view(-1, side, side)
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.config.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.config.codebook_size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.decoder(self.post_quant_conv(self.code_vectors(indices)))

    def forward(
        self, pixel_values: torch.FloatTensor, output_hidden_states: bool | None = None, return_dict: bool | None = None
    ) -> LlamaGenVQVAEOutput:
        """Reconstruction and the VQ loss terms (LlamaGen: vq + beta * commitment + entropy), and the encoder's and
        decoder's feature maps with `output_hidden_states`; a tuple when `return_dict` is False. None: the config's."""
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = [] if output_hidden_states else None
        z, codes, indices, distances = self._quantize(pixel_values, hidden_states)
        codebook_loss = F.mse_loss(codes, z.detach())
        commitment_loss = self.config.commit_loss_beta * F.mse_loss(z, codes.detach())
        entropy_loss = (
            self.config.entropy_loss_ratio * _code_entropy_loss(distances)
            if self.config.entropy_loss_ratio > 0 else codebook_loss.new_zeros(())
        )
        quantized = (z + (codes - z).detach()).permute(0, 3, 1, 2)
        reconstruction = self.decoder(self.post_quant_conv(quantized), hidden_states)
        output = LlamaGenVQVAEOutput(
            reconstruction=reconstruction, codebook_loss=codebook_loss, commitment_loss=commitment_loss,
            entropy_loss=entropy_loss, indices=indices,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["LlamaGenVQVAE", "LlamaGenVQVAEEncoderOutput", "LlamaGenVQVAEOutput"]
