"""Configurations of LlamaGen's VQ tokenizer and class-conditional GPT (arXiv 2406.06525).

Both configs hold architecture only; training settings (loss weights, EMA) live in the training arguments.
"""

import math

from transformers import PreTrainedConfig

# name -> (num_hidden_layers, num_attention_heads, hidden_size); parameter counts with 1000 classes, vocab 16384.
LLAMAGEN_PRESETS = {
    "B": (12, 12, 768),  # 110,888,448
    "L": (24, 16, 1024),  # 342,910,976
    "XL": (36, 20, 1280),  # 774,699,520
    "XXL": (48, 24, 1536),  # 1,410,972,672
    "3B": (24, 32, 3200),  # 3,096,659,200
}

# name -> ch_mult; the downsampling factor is 2 ** (len(ch_mult) - 1).
LLAMAGEN_VQ_PRESETS = {
    "VQ-16": (1, 1, 2, 2, 4),  # 71,883,403 parameters
    "VQ-8": (1, 2, 2, 4),  # 70,109,835 parameters
}


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


class LlamaGenVQVAEConfig(PreTrainedConfig):
    r"""VQGAN tokenizer of LlamaGen: conv encoder/decoder (GroupNorm + swish, attention at the lowest resolution and
    in the mid block) around an l2-normalised codebook.

    Args:
        in_channels / out_channels: image channels.
        base_channels: channels of the first level (LlamaGen: 128).
        ch_mult: channel multiplier of each level; `len(ch_mult) - 1` stride-2 downsamplings.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        z_channels: channels of the encoder output before the 1x1 `quant_conv`.
        codebook_size / codebook_embed_dim: number and width of the codes.
        codebook_l2_norm: cosine nearest neighbour (latents and codes l2-normalised).
        commit_loss_beta: weight of the commitment term in `forward`'s loss.
        entropy_loss_ratio: weight of the codebook entropy term (0 disables it).
        dropout: dropout inside the residual blocks.
    """

    model_type = "llamagen_vqvae"

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    ch_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.ch_mult = [int(m) for m in self.ch_mult]
        super().__post_init__(**kwargs)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        for name in ("base_channels", "z_channels"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of 32 (GroupNorm with 32 groups), got {getattr(self, name)}")
        for name in ("num_res_blocks", "codebook_size", "codebook_embed_dim", "in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("commit_loss_beta", "entropy_loss_ratio"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.initializer_range < math.inf:
            raise ValueError(f"initializer_range must be > 0 and finite, got {self.initializer_range}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "LlamaGenVQVAEConfig":
        """`name` is one of `LLAMAGEN_VQ_PRESETS` ("VQ-16", "VQ-8")."""
        if name not in LLAMAGEN_VQ_PRESETS:
            raise ValueError(f"name must be one of {sorted(LLAMAGEN_VQ_PRESETS)}, got {name!r}")
        return cls(ch_mult=LLAMAGEN_VQ_PRESETS[name], **kwargs)


class LlamaGenConfig(PreTrainedConfig):
    r"""LlamaGen's class-conditional GPT: pre-RMSNorm Llama blocks with SwiGLU, fused qkv, 2D RoPE over the token grid
    and `cls_token_num` class-embedding tokens in front of the image tokens.

    Args:
        vocab_size: number of VQ codes.
        hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads: transformer shape.
        intermediate_size: SwiGLU width; `None` derives LlamaGen's `8/3 * hidden_size * ffn_dim_multiplier` rounded
            up to a multiple of `multiple_of`.
        block_size: number of image tokens, a square (256 for a 16x16 grid, 576 for 24x24).
        num_classes: classes of the class embedding; row `num_classes` is the null class used for CFG.
        cls_token_num: tokens the class embedding contributes in front of the image tokens.
        class_dropout_prob: probability, in training, of replacing the label by the null class.
        token_dropout / residual_dropout / ffn_dropout / attention_dropout: LlamaGen's dropouts (0.1, 0.1, 0.1, 0.0).
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        initializer_range: std of the normal init of linear and embedding weights (the output head starts at zero).
    """

    model_type = "llamagen"

    vocab_size: int = 16384
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    block_size: int = 256
    num_classes: int = 1000
    cls_token_num: int = 1
    class_dropout_prob: float = 0.1
    token_dropout: float = 0.1
    residual_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attention_dropout: float = 0.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            hidden = int(2 * 4 * self.hidden_size / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.intermediate_size = _find_multiple(hidden, self.multiple_of)
        super().__post_init__(**kwargs)
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "block_size", "num_classes", "cls_token_num"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be divisible by 4 for 2D RoPE"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        for name in ("class_dropout_prob", "token_dropout", "residual_dropout", "ffn_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square token grid (e.g. 256 = 16x16, 576 = 24x24)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    @classmethod
    def from_preset(cls, size: str, **kwargs) -> "LlamaGenConfig":
        """`size` is one of `LLAMAGEN_PRESETS` ("B", "L", "XL", "XXL", "3B")."""
        if size not in LLAMAGEN_PRESETS:
            raise ValueError(f"size must be one of {sorted(LLAMAGEN_PRESETS)}, got {size!r}")
        layers, heads, hidden = LLAMAGEN_PRESETS[size]
        return cls(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden, **kwargs)


__all__ = ["LLAMAGEN_PRESETS", "LLAMAGEN_VQ_PRESETS", "LlamaGenConfig", "LlamaGenVQVAEConfig"]
