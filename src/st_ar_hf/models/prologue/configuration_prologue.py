"""Configurations of Prologue's tokenizer and AR prior ("Autoregressive Visual Generation Needs a Prologue",
arXiv 2605.06137; official code Zyriix/prologue).

An image is `[num_prologue_tokens prologue tokens] [EOS] [grid^2 visual tokens]`: the tokenizer's encoder makes both,
its decoder reads the visual tokens only, and the AR prior models the whole sequence. With `num_prologue_tokens = 0`
the same classes are the paper's plain 2D tokenizer and its AR baseline.
"""

import math

from transformers import PreTrainedConfig

# AR prior size -> (num_hidden_layers, num_attention_heads, hidden_size); "S" is the phase-1 joint prior's shape
# before train.sh cuts it to 7 layers. Parameter counts of our B/L/XL (16384 + 1024 + 1 tokens): README, Prologue.
PROLOGUE_PRESETS = {
    "S": (10, 8, 512),
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "XL": (32, 20, 1280),
}
# tokenizer -> (visual codebook_size, decoder_hidden_size, num_decoder_layers, num_decoder_heads)
PROLOGUE_TOKENIZER_PRESETS = {
    "prologue-b": (16384, 768, 12, 12),
    "prologue-l": (4096, 1024, 24, 16),  # the L series' asymmetric decoder
}
# the paper's sampling settings per (tokenizer, AR) pair (methods.md §B.4): split CFG (prologue scale, visual scale,
# visual ramp power) and the no-CFG temperatures (prologue, visual)
PROLOGUE_SAMPLING = {
    ("prologue-b", "B"): ((0.7, 3.75, 0.2), (0.7, 0.9)),
    ("prologue-b", "L"): ((0.8, 3.0, 0.225), (0.7, 0.9)),
    ("prologue-b", "XL"): ((0.8, 2.75, 0.25), (0.8, 0.9)),
    ("prologue-l", "B"): ((0.65, 2.75, 0.25), (0.8, 0.95)),
    ("prologue-l", "L"): ((0.7, 2.5, 0.25), (0.95, 0.9)),
    ("prologue-l", "XL"): ((0.7, 2.25, 0.225), (1.0, 0.9)),
}


def _check_positive(config, names):
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_non_negative(name, value, meaning):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 ({meaning}), got {value!r}")


def _check_rope_axes(name, axes, head_dim):
    if len(axes) != 3 or any(a < 2 or a % 2 for a in axes) or sum(axes) != head_dim:
        raise ValueError(f"{name} must be 3 even sizes summing to the head dim {head_dim}, got {list(axes)}")


class PrologueVQVAEConfig(PreTrainedConfig):
    r"""Prologue's ViT tokenizer: a bidirectional encoder over `patch_size` patches with `num_prologue_tokens` learnable
    queries appended, two cosine-similarity quantisers (visual codes, decoded to pixels; prologue codes, never
    decoded) and a decoder of the visual codes. Blocks: pre-norm (RMS as `F.normalize * sqrt(d)`), QK-norm, GEGLU, a
    learned gate on each residual branch, 3-axis RoPE (height, width, sequence).

    Args:
        image_size / patch_size / in_channels: the image and its patches (`(image_size / patch_size)^2` visual tokens).
        hidden_size / num_encoder_layers / num_encoder_heads: encoder shape.
        decoder_hidden_size / num_decoder_layers / num_decoder_heads: decoder shape.
        mlp_ratio: GEGLU width over hidden size (rounded), 8/3 in both.
        num_prologue_tokens: prologue queries of the encoder (16); 0 is the plain 2D tokenizer.
        codebook_size / prologue_codebook_size / codebook_embed_dim: the two codebooks (l2-normalised rows).
        prologue_temperature: the prologue quantiser's softmax temperature (train.sh: 0.1); its straight-through
            one-hot takes the gradient of `softmax(cos / prologue_temperature)`.
        commit_loss_beta: weight of the commitment term of the visual VQ loss.
        rope_axes_dim: head dims rotated by the (height, width, sequence) axes.
        rope_theta_patches / rope_theta_prologue: RoPE bases of the patch grid (2000) and of the queries (10000).
        prologue_encoder_layers: 0 for Prologue, whose queries join the patch encoder; > 0 for Prologue-Post, whose
            patch encoder is a plain 2D one (trained first, then frozen) and whose queries go through a separate
            prologue encoder of this many layers that reads the patch encoder's output (10 in the paper).
        prologue_encoder_hidden_size / prologue_encoder_heads / prologue_encoder_mlp_ratio: Prologue-Post's prologue
            encoder shape (512, 8, 11/4); its prologue quantiser projects from this width.
    """

    model_type = "prologue_tokenizer"

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    num_encoder_layers: int = 12
    num_encoder_heads: int = 12
    decoder_hidden_size: int = 768
    num_decoder_layers: int = 12
    num_decoder_heads: int = 12
    mlp_ratio: float = 8 / 3
    num_prologue_tokens: int = 16
    codebook_size: int = 16384
    prologue_codebook_size: int = 1024
    codebook_embed_dim: int = 14
    prologue_temperature: float = 0.1
    commit_loss_beta: float = 0.25
    rope_axes_dim: list[int] | tuple[int, ...] = (20, 20, 24)
    rope_theta_patches: float = 2000.0
    rope_theta_prologue: float = 10000.0
    prologue_encoder_layers: int = 0
    prologue_encoder_hidden_size: int = 512
    prologue_encoder_heads: int = 8
    prologue_encoder_mlp_ratio: float = 11 / 4
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.rope_axes_dim = [int(a) for a in self.rope_axes_dim]
        super().__post_init__(**kwargs)
        _check_positive(self, ("image_size", "patch_size", "in_channels", "hidden_size", "num_encoder_layers",
                               "num_encoder_heads", "decoder_hidden_size", "num_decoder_layers", "num_decoder_heads",
                               "codebook_size", "prologue_codebook_size", "codebook_embed_dim",
                               "prologue_encoder_hidden_size", "prologue_encoder_heads"))
        _check_non_negative("num_prologue_tokens", self.num_prologue_tokens, "0: the plain 2D tokenizer")
        _check_non_negative("prologue_encoder_layers", self.prologue_encoder_layers,
                            "0: Prologue's shared encoder, > 0: Prologue-Post")
        if self.prologue_encoder_layers and not self.num_prologue_tokens:
            raise ValueError(f"prologue_encoder_layers {self.prologue_encoder_layers} needs prologue tokens: set "
                             f"num_prologue_tokens > 0 (Prologue-Post) or prologue_encoder_layers 0 (2D tokenizer)")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for width, heads in (("hidden_size", "num_encoder_heads"), ("decoder_hidden_size", "num_decoder_heads"),
                             ("prologue_encoder_hidden_size", "prologue_encoder_heads")):
            if width.startswith("prologue_encoder") and not self.prologue_encoder_layers:
                continue
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width} ({getattr(self, width)}) must be divisible by {heads} ({getattr(self, heads)})")
            _check_rope_axes("rope_axes_dim", self.rope_axes_dim, getattr(self, width) // getattr(self, heads))
        for name in ("mlp_ratio", "prologue_temperature", "rope_theta_patches", "rope_theta_prologue",
                     "prologue_encoder_mlp_ratio", "initializer_range"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)!r}")
        if not 0 <= self.commit_loss_beta < math.inf:
            raise ValueError(f"commit_loss_beta must be >= 0 and finite, got {self.commit_loss_beta!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side, as for the convolutional tokenizers."""
        return self.patch_size

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_channels

    @property
    def is_post(self) -> bool:
        """Prologue-Post: a separate prologue encoder over a 2D patch encoder."""
        return self.prologue_encoder_layers > 0

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "PrologueVQVAEConfig":
        """`name` is one of `PROLOGUE_TOKENIZER_PRESETS` ("prologue-b", "prologue-l")."""
        if name not in PROLOGUE_TOKENIZER_PRESETS:
            raise ValueError(f"name must be one of {sorted(PROLOGUE_TOKENIZER_PRESETS)}, got {name!r}")
        codebook, width, layers, heads = PROLOGUE_TOKENIZER_PRESETS[name]
        return cls(**{"codebook_size": codebook, "decoder_hidden_size": width, "num_decoder_layers": layers,
                      "num_decoder_heads": heads, **kwargs})


class PrologueConfig(PreTrainedConfig):
    r"""Prologue's class-conditional AR prior: the class embedding as BOS, then causal blocks (the tokenizer's block:
    norm as `F.normalize * sqrt(d)`, QK-norm, GEGLU, residual gates) with 1D RoPE on the first `rotary_dim` head
    dims, no biases. Vocabulary: visual codes `[0, visual_vocab_size)`, prologue codes after them, then EOS.

    Args:
        visual_vocab_size / prologue_vocab_size: the tokenizer's two codebook sizes.
        num_prologue_tokens: prologue tokens before the EOS separator (0: the 2D baseline, no EOS either).
        num_visual_tokens: visual tokens, a square grid.
        hidden_size / num_hidden_layers / num_attention_heads: transformer shape.
        intermediate_size: GEGLU width; `None` is `round(11/4 * hidden_size)`.
        num_classes: classes; row `num_classes` of the class embedding is the null class of CFG.
        rotary_dim / rope_theta: the 1D RoPE (the original's axes [24, 20, 20], of which only the first moves).
        class_dropout_prob / embedding_dropout / residual_dropout / attention_dropout: training dropouts (the
            official AR recipe: 0.1, 0.1, 0.1, 0).
        default_guidance_scale: the pipeline's guidance when the call gives none: a float (constant), a pair
            (scale, power) (cosine ramp over all steps, the baselines' "oc") or (prologue scale, visual scale, power)
            (split CFG).
        no_guidance_temperature: (prologue, visual) temperatures the pipeline uses when guidance is off.
    """

    model_type = "prologue"

    visual_vocab_size: int = 16384
    prologue_vocab_size: int = 1024
    num_prologue_tokens: int = 16
    num_visual_tokens: int = 256
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    num_classes: int = 1000
    rotary_dim: int = 24
    rope_theta: float = 10000.0
    class_dropout_prob: float = 0.1
    embedding_dropout: float = 0.1
    residual_dropout: float = 0.1
    attention_dropout: float = 0.0
    default_guidance_scale: float | list[float] = (0.7, 3.75, 0.2)
    no_guidance_temperature: list[float] | tuple[float, float] = (0.7, 0.9)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = round(self.hidden_size * 11 / 4)
        if isinstance(self.default_guidance_scale, (list, tuple)):
            self.default_guidance_scale = [float(v) for v in self.default_guidance_scale]
        self.no_guidance_temperature = [float(t) for t in self.no_guidance_temperature]
        super().__post_init__(**kwargs)
        _check_positive(self, ("visual_vocab_size", "prologue_vocab_size", "num_visual_tokens", "hidden_size",
                               "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_classes",
                               "rotary_dim"))
        _check_non_negative("num_prologue_tokens", self.num_prologue_tokens, "0: the plain 2D tokenizer and its AR")
        if math.isqrt(self.num_visual_tokens) ** 2 != self.num_visual_tokens:
            raise ValueError(f"num_visual_tokens {self.num_visual_tokens} is not a square grid (e.g. 256 = 16x16)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim must be even and at most the head dim {self.head_dim}, got {self.rotary_dim}")
        for name in ("class_dropout_prob", "embedding_dropout", "residual_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("rope_theta", "initializer_range"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)!r}")
        if len(self.no_guidance_temperature) != 2 or not all(0 < t < math.inf for t in self.no_guidance_temperature):
            raise ValueError(f"no_guidance_temperature must be (prologue, visual) temperatures > 0, got "
                             f"{self.no_guidance_temperature}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:  # read by transformers' StaticCache
        return self.num_attention_heads

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_visual_tokens)

    @property
    def cls_token_num(self) -> int:
        """Positions before the first sequence token: the class BOS (the name LlamaGen's config uses)."""
        return 1

    @property
    def has_eos(self) -> bool:
        return self.num_prologue_tokens > 0

    @property
    def prologue_offset(self) -> int:
        """Token id of prologue code 0."""
        return self.visual_vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.visual_vocab_size + self.prologue_vocab_size if self.has_eos else None

    @property
    def vocab_size(self) -> int:
        return self.visual_vocab_size + (self.prologue_vocab_size + 1 if self.has_eos else 0)

    @property
    def sequence_length(self) -> int:
        """Tokens after the class BOS: prologue, EOS, visual."""
        return self.num_prologue_tokens + int(self.has_eos) + self.num_visual_tokens

    @property
    def block_size(self) -> int:
        """The tokens the AR models, `sequence_length` (LlamaGen's name, which the training library reads)."""
        return self.sequence_length

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    @classmethod
    def from_preset(cls, size: str, **kwargs) -> "PrologueConfig":
        """`size` is one of `PROLOGUE_PRESETS` ("S", "B", "L", "XL"); `kwargs` override any field, the shape too."""
        if size not in PROLOGUE_PRESETS:
            raise ValueError(f"size must be one of {sorted(PROLOGUE_PRESETS)}, got {size!r}")
        layers, heads, hidden = PROLOGUE_PRESETS[size]
        return cls(**{"num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": hidden, **kwargs})


__all__ = ["PROLOGUE_PRESETS", "PROLOGUE_SAMPLING", "PROLOGUE_TOKENIZER_PRESETS", "PrologueConfig",
           "PrologueVQVAEConfig"]
