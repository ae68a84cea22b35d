"""Configurations of the scale-wise family: VAR's multi-scale residual VQVAE and the transformers of VAR
(arXiv 2404.02905) and FlexVAR (arXiv 2502.20313).

A scale schedule (`patch_nums`, VAR's name) lists the side of each token map, coarse to fine: (1, 2, 3, 4, 5, 6, 8,
10, 13, 16) is 680 tokens in 10 steps for a 16x16 latent (256 px with a 16x downsampling tokenizer). All configs hold
architecture only; training settings live in the training arguments.
"""

import math

from transformers import PreTrainedConfig

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # 256 px
VAR_PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)  # 512 px (VAR-d36)

# name -> (depth, shared AdaLN, patch_nums); width 64 * depth, heads = depth, vocabulary 4096, 1000 classes. Parameter
# counts equal the original code's (VAR's README: 310M, 600M, 1.0B, 2.0B, 2.3B); the tokenizer has 108,948,355.
VAR_PRESETS = {
    "d16": (16, False, VAR_PATCH_NUMS),  # 310,283,520
    "d20": (20, False, VAR_PATCH_NUMS),  # 600,917,136
    "d24": (24, False, VAR_PATCH_NUMS),  # 1,033,399,360
    "d30": (30, False, VAR_PATCH_NUMS),  # 2,010,020,356
    "d36": (36, True, VAR_PATCH_NUMS_512),  # 2,353,893,904 (shared AdaLN, 512 px)
}
# name -> depth; vocabulary 8912 (sic, FlexVAR's codebook), trained on VAR's 256 px schedule; parameter counts equal the
# original code's. Its tokenizer is LlamaGen's VQ-16 with 8912 32-d codes (72,049,827 parameters).
FLEXVAR_PRESETS = {
    "d16": 16,  # 315,561,936
    "d20": 20,  # 607,513,952
    "d24": 24,  # 1,041,314,576
}


def check_scale_schedule(scales, name: str) -> tuple[int, ...]:
    """`scales` as a tuple of ints, or a ValueError naming `name`: at least two strictly increasing positive sides,
    starting at 1."""
    scales = tuple(scales)
    if len(scales) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"{name} must be a list of at least two positive ints, got {list(scales)}")
    if scales[0] != 1:
        raise ValueError(f"{name} must start at 1 (the class token's 1x1 map), got {list(scales)}")
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {list(scales)}")
    return scales


class VARVQVAEConfig(PreTrainedConfig):
    r"""VAR's tokenizer: a VQGAN encoder/decoder (attention at the lowest resolution and in the mid blocks) around a
    multi-scale residual quantiser. Scale k quantises the area-downsampled residual to its nearest code (Euclidean),
    upsamples the code map bicubically to the latent size, passes it through one of `num_quant_resi_convs` 3x3 convs
    phi (blended as `(1 - quant_resi) * h + quant_resi * phi(h)`, chosen by the nearest tick to k / (K - 1)), adds
    it to the reconstruction and subtracts it from the residual.

    Args:
        in_channels / out_channels: image channels.
        base_channels: channels of the first level (VAR: 160).
        ch_mult: channel multiplier of each level (the first must be 1); `len(ch_mult) - 1` downsamplings.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        codebook_size / codebook_embed_dim: number and width of the codes; the latent has `codebook_embed_dim`
            channels (VAR's Cvae).
        quant_conv_kernel_size: kernel of the convs before and after the quantiser.
        quant_resi: blend ratio of the phi convs.
        num_quant_resi_convs: phi convs shared by the scales (VAR: 4; 1 shares one, `len(patch_nums)` gives each scale
            its own).
        patch_nums: the scale schedule; the last side is the latent grid.
        commit_loss_beta: weight of the commitment term in the VQ loss.
        dropout: dropout inside the residual blocks.
    """

    model_type = "var_vqvae"

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 160
    ch_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    codebook_size: int = 4096
    codebook_embed_dim: int = 32
    quant_conv_kernel_size: int = 3
    quant_resi: float = 0.5
    num_quant_resi_convs: int = 4
    patch_nums: list[int] | tuple[int, ...] = VAR_PATCH_NUMS
    commit_loss_beta: float = 0.25
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.ch_mult = [int(m) for m in self.ch_mult]
        self.patch_nums = list(check_scale_schedule(self.patch_nums, "patch_nums"))
        super().__post_init__(**kwargs)
        if not self.ch_mult or min(self.ch_mult) < 1 or self.ch_mult[0] != 1:
            raise ValueError(f"ch_mult must be a list of positive ints starting with 1, got {self.ch_mult}")
        if self.base_channels % 32:
            raise ValueError(f"base_channels must be a multiple of 32 (GroupNorm with 32 groups), got {self.base_channels}")
        for name in ("num_res_blocks", "codebook_size", "codebook_embed_dim", "num_quant_resi_convs", "in_channels",
                     "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.quant_conv_kernel_size < 1 or self.quant_conv_kernel_size % 2 == 0:
            raise ValueError(f"quant_conv_kernel_size must be a positive odd int, got {self.quant_conv_kernel_size}")
        if not 0 < self.quant_resi <= 1:
            raise ValueError(f"quant_resi must be in (0, 1], got {self.quant_resi}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("commit_loss_beta", "initializer_range"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class VARConfig(PreTrainedConfig):
    r"""VAR's class-conditional scale-wise transformer: each step predicts a whole token map from every coarser one
    (a block-causal mask over scales). AdaLN blocks conditioned on the class embedding (the null class `num_classes`
    serves classifier-free guidance), optionally l2-normalised attention with a learnable per-head scale, learnable
    absolute position embeddings per scale plus a level embedding per scale, and an AdaLN before the head.

    Args:
        vocab_size / codebook_embed_dim: codes of the tokenizer and their width (inputs are code vectors).
        hidden_size / num_hidden_layers / num_attention_heads: transformer shape (VAR: 64 * depth, depth, depth).
        intermediate_size: MLP width; `None` gives `round(mlp_ratio * hidden_size)`.
        mlp_ratio: MLP width over hidden size, used when `intermediate_size` is None.
        num_classes: classes of the class embedding; row `num_classes` is the null class.
        patch_nums: the trained scale schedule; the last side is the latent grid.
        attn_l2_norm: l2-normalise q and k and scale q by a learnable per-head factor (init 4, at most 100); without
            it attention uses VAR's fixed scale 0.25 / sqrt(head_dim).
        shared_adaln: one AdaLN projection shared by all blocks plus a learned per-block offset (VAR-d36).
        class_dropout_prob: probability, in training, of replacing the label by the null class.
        drop_path_rate: stochastic depth of the last block (linearly increasing from 0 over the blocks).
        layer_norm_eps: epsilon of the affine-free LayerNorms.
        initializer_range: std of the truncated-normal init of linear and embedding weights; `None` gives VAR's
            automatic `sqrt(1 / (3 * hidden_size))`.
        init_head / init_adaln / init_adaln_gamma: VAR's init multipliers of the head, of the AdaLN projections and of
            their gamma (residual gate) rows.
    """

    model_type = "var"

    vocab_size: int = 4096
    codebook_embed_dim: int = 32
    hidden_size: int = 1024
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    intermediate_size: int | None = None
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    patch_nums: list[int] | tuple[int, ...] = VAR_PATCH_NUMS
    attn_l2_norm: bool = True
    shared_adaln: bool = False
    class_dropout_prob: float = 0.1
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float | None = None
    init_head: float = 0.02
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5

    def __post_init__(self, **kwargs):
        self.patch_nums = list(check_scale_schedule(self.patch_nums, "patch_nums"))
        if self.intermediate_size is None:
            self.intermediate_size = round(self.hidden_size * self.mlp_ratio)
        if self.initializer_range is None:
            self.initializer_range = (1 / self.hidden_size / 3) ** 0.5
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "codebook_embed_dim", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("class_dropout_prob", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_norm_eps", "initializer_range"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("mlp_ratio", "init_head", "init_adaln", "init_adaln_gamma"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        """Side of the last (finest) token map of the trained schedule."""
        return self.patch_nums[-1]

    @property
    def num_tokens(self) -> int:
        return sum(side * side for side in self.patch_nums)

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "VARConfig":
        """`name` is one of `VAR_PRESETS` ("d16", "d20", "d24", "d30", "d36")."""
        if name not in VAR_PRESETS:
            raise ValueError(f"name must be one of {sorted(VAR_PRESETS)}, got {name!r}")
        depth, shared_adaln, patch_nums = VAR_PRESETS[name]
        return cls(**{**_depth_shape(depth), "shared_adaln": shared_adaln, "patch_nums": patch_nums, **kwargs})


class FlexVARConfig(VARConfig):
    r"""FlexVAR's transformer: VAR's blocks without the level embedding, positions from a learnable 2D grid
    (initialised as sin/cos) area-downsampled to each scale, and inputs that are the bicubic upsampling of the previous
    scale's l2-normalised code vectors. It samples any increasing scale schedule, including more steps than trained
    and a larger final map.

    Args (beyond `VARConfig`'s):
        position_grid_size: side of the learnable position grid (32); larger maps upsample it.
    """

    model_type = "flexvar"

    vocab_size: int = 8912
    position_grid_size: int = 32

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not 1 <= self.patch_nums[-1] <= self.position_grid_size:
            raise ValueError(f"position_grid_size ({self.position_grid_size}) must be at least the last side of "
                             f"patch_nums {self.patch_nums}")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even for the sin/cos position grid, got {self.hidden_size}")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "FlexVARConfig":
        """`name` is one of `FLEXVAR_PRESETS` ("d16", "d20", "d24")."""
        if name not in FLEXVAR_PRESETS:
            raise ValueError(f"name must be one of {sorted(FLEXVAR_PRESETS)}, got {name!r}")
        return cls(**{**_depth_shape(FLEXVAR_PRESETS[name]), **kwargs})


def _depth_shape(depth: int) -> dict:
    """VAR's shape rule: width 64 * depth, one head per 64 channels, stochastic depth 0.1 * depth / 24."""
    return dict(num_hidden_layers=depth, hidden_size=64 * depth, num_attention_heads=depth,
                drop_path_rate=0.1 * depth / 24)


__all__ = ["FLEXVAR_PRESETS", "VAR_PRESETS", "FlexVARConfig", "VARConfig", "VARVQVAEConfig", "check_scale_schedule"]
