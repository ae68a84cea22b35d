"""Prologue's ViT tokenizer (arXiv 2605.06137) as a transformers model, and the transformer block the AR prior shares.

Architecture facts from Zyriix/prologue `models.py` and `configs/tokenizer/*.yaml`; the code is written anew. The
original conditions every norm and residual gate on a class embedding; its released models always pass the null
class there (`ae_no_label=True`, and the AR's class enters as BOS), so these conditionings are constants, which the
converter folds into the norm weights and the per-channel gates here.

Token layout of the encoder: `[grid^2 patches (row-major)] [num_prologue_tokens learnable queries]`; its outputs at the
patches are the visual latents, at the queries the prologue latents. Prologue-Post (`prologue_encoder_layers > 0`)
keeps a plain 2D patch encoder and appends the queries in a separate prologue encoder over its output. The decoder
reads the visual codes only.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_prologue import PrologueVQVAEConfig


@dataclass
class PrologueVQVAEEncoderOutput(ModelOutput):
    """
    indices: visual code ids [B, h, w], row-major.
    prologue_indices: prologue code ids [B, num_prologue_tokens] (None for a 2D tokenizer).
    quantized: visual code vectors [B, h * w, codebook_embed_dim], straight-through (gradients reach the encoder).
    prologue_one_hot: [B, num_prologue_tokens, prologue_codebook_size], one-hot in value, with the gradient of
        `softmax(cos / prologue_temperature)`: the path by which an AR prior's cross-entropy trains the encoder.
    latents: l2-normalised visual latents [B, h * w, codebook_embed_dim].
    last_hidden_state: the (patch) encoder's output [B, h * w (+ num_prologue_tokens unless Prologue-Post),
        hidden_size].
    hidden_states: with `output_hidden_states`, the (patch) encoder's input embeddings and the output of each of its
        layers, each shaped as `last_hidden_state`.
    """

    indices: torch.LongTensor | None = None
    prologue_indices: torch.LongTensor | None = None
    quantized: torch.FloatTensor | None = None
    prologue_one_hot: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PrologueVQVAEOutput(ModelOutput):
    """
    reconstruction: decoded pixels [B, 3, H, W], nominally in [-1, 1] (not clamped).
    codebook_loss: mean ||q - sg(z)||^2 of the visual codes; commitment_loss: commit_loss_beta * mean ||sg(q) - z||^2.
    indices / prologue_indices / prologue_one_hot / hidden_states: as in `PrologueVQVAEEncoderOutput`.
    """

    reconstruction: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    prologue_indices: torch.LongTensor | None = None
    prologue_one_hot: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class PrologueRMSNorm(nn.Module):
    """`F.normalize(x) * sqrt(d) * weight` in fp32: RMSNorm with the epsilon on the l2 norm, as the original's."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (F.normalize(x.float(), dim=-1) * self.scale * self.weight.float()).type_as(x)


def rope_angles(position_ids: torch.Tensor, axes_dim: list[int], theta: float) -> torch.Tensor:
    """position_ids [T, A] on A axes -> rotation angles [T, sum(axes_dim) / 2]: axis a turns the next axes_dim[a] / 2
    head-dim pairs at frequencies theta^(-2i / axes_dim[a])."""
    parts = []
    for axis, dim in enumerate(axes_dim):
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        parts.append(position_ids[:, axis, None].float() * inv_freq)
    return torch.cat(parts, dim=-1)


def grid_position_ids(grid: int) -> torch.Tensor:
    """(row, column, 0) of the grid^2 cells, row-major: [grid^2, 3]."""
    index = torch.arange(grid * grid)
    return torch.stack([index // grid, index % grid, torch.zeros_like(index)], dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; pairs (2i, 2i+1) rotate by the angle of row t, column i of cos/sin [T, D/2]; in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, H, T, D/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).type_as(x)


class PrologueRotaryEmbedding(nn.Module):
    """cos/sin tables [T, head_dim / 2] of a model's fixed token layout (non-persistent buffers, rebuilt at init);
    subclasses give `angles(config)`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        cos, sin = self.compute_tables(config)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @classmethod
    def compute_tables(cls, config) -> tuple[torch.Tensor, torch.Tensor]:
        angles = cls.angles(config)
        return angles.cos(), angles.sin()

    def forward(self, position_ids: torch.LongTensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids is None:
            return self.cos, self.sin
        return self.cos[position_ids], self.sin[position_ids]


class PrologueGridRotary(PrologueRotaryEmbedding):
    @staticmethod
    def angles(config: PrologueVQVAEConfig) -> torch.Tensor:
        """The patches on (row, column) with base rope_theta_patches."""
        return rope_angles(grid_position_ids(config.grid_size), config.rope_axes_dim, config.rope_theta_patches)


class PrologueGridQueriesRotary(PrologueRotaryEmbedding):
    @staticmethod
    def angles(config: PrologueVQVAEConfig) -> torch.Tensor:
        """The patches as in `PrologueGridRotary`, then the prologue queries on the sequence axis with base
        rope_theta_prologue."""
        queries = torch.arange(config.num_prologue_tokens)
        query_ids = torch.stack([torch.zeros_like(queries), torch.zeros_like(queries), queries], dim=1)
        return torch.cat([PrologueGridRotary.angles(config),
                          rope_angles(query_ids, config.rope_axes_dim, config.rope_theta_prologue)])


class PrologueLinear(nn.Linear):
    """`nn.Linear` that multiplies weight-major, `(W @ x^T)^T`, for the few rows of a decoding step (one position per
    sequence) in fp32 on the CPU, where MKL's small-M GEMM path is 1.2-3x slower (after `LlamaGenLinear`,
    llamagen/modeling_llamagen.py, which measures it and the layouts MKL needs; copied to keep this folder
    self-contained). Other inputs take `F.linear`, so full forwards round as the original's do."""

    max_weight_major_rows = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if (x.device.type != "cpu" or x.dtype != torch.float32 or rows > self.max_weight_major_rows
                or x.ndim < 2 or x.shape[-2] != 1):
            return super().forward(x)
        out = (self.weight @ x.reshape(rows, -1).contiguous().T).T.contiguous()  # contiguous in and out, as there
        return (out if self.bias is None else out + self.bias).view(*x.shape[:-1], -1)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """matmul + softmax attention, transformers' "eager" (as Llama's, without grouped heads): q [B, H, T, D],
    k and v [B, H, S, D], an additive mask [B or 1, 1, T, S] or None -> ([B, T, H, D], weights [B, H, T, S])."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


class PrologueAttention(nn.Module):
    """Multi-head attention with QK-norm (per head) and RoPE, computed by transformers' attention function of
    `config._attn_implementation` ("sdpa" by default), or by eager attention when the weights are asked for (only it
    forms them). `is_causal` is the tokenizer's False or the AR's True; `past_key_values` (a transformers `Cache`)
    extends a causal sequence."""

    def __init__(self, config, hidden_size: int, num_heads: int, out_bias: bool, is_causal: bool, dropout: float = 0.0,
                 attention_dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        self.config, self.is_causal, self.attention_dropout = config, is_causal, attention_dropout
        self.num_heads, self.head_dim, self.layer_idx = num_heads, hidden_size // num_heads, layer_idx
        self.scaling = self.head_dim**-0.5
        self.qkv_proj = PrologueLinear(hidden_size, 3 * hidden_size, bias=False)
        self.q_norm = PrologueRMSNorm(self.head_dim)
        self.k_norm = PrologueRMSNorm(self.head_dim)
        self.o_proj = PrologueLinear(hidden_size, hidden_size, bias=out_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, rotary, past_key_values=None, attention_mask=None, num_keys=None, output_attentions=False):
        """`attention_mask`: an additive float mask [B or 1, 1, T, S], None for the kernel's own (causal or full);
        `num_keys`: attend the first `num_keys` cache slots only (a CPU decoding step)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        q, k = apply_rope(self.q_norm(q), *rotary), apply_rope(self.k_norm(k), *rotary)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # [B, H, S, D], S the cache's slots
        if num_keys is not None:
            k, v = k[:, :, :num_keys], v[:, :, :num_keys]
        if output_attentions:
            attention_interface: Callable = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        out, attn_weights = attention_interface(
            self, q, k, v, attention_mask, dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling
        )  # [B, T, H, D]
        return self.dropout(self.o_proj(out.reshape(batch, length, -1))), attn_weights


class PrologueMLP(nn.Module):
    """GEGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, dropout: float = 0.0):
        super().__init__()
        self.gate_proj = PrologueLinear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = PrologueLinear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = PrologueLinear(intermediate_size, hidden_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)))


class PrologueBlock(nn.Module):
    """Pre-norm block with a learned per-channel gate on each residual branch: x + g_attn * attn(norm(x)), then
    x + g_mlp * mlp(norm(x)). `bias` sets the biases of the MLP and the attention output (the tokenizer's have them,
    the AR's not); `config` is the model's, read for its attention implementation."""

    def __init__(self, config, hidden_size: int, num_heads: int, intermediate_size: int, bias: bool,
                 is_causal: bool = False, dropout: float = 0.0, attention_dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        self.attn_norm = PrologueRMSNorm(hidden_size)
        self.attn = PrologueAttention(config, hidden_size, num_heads, bias, is_causal, dropout, attention_dropout,
                                      layer_idx)
        self.attn_gate = nn.Parameter(torch.ones(hidden_size))
        self.mlp_norm = PrologueRMSNorm(hidden_size)
        self.mlp = PrologueMLP(hidden_size, intermediate_size, bias, dropout)
        self.mlp_gate = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x, rotary, past_key_values=None, attention_mask=None, num_keys=None, output_attentions=False):
        """-> (x [B, T, hidden], attention weights [B, H, T, S] or None)."""
        attn_output, attn_weights = self.attn(self.attn_norm(x), rotary, past_key_values, attention_mask, num_keys,
                                              output_attentions)
        x = x + self.attn_gate * attn_output
        return x + self.mlp_gate * self.mlp(self.mlp_norm(x)), attn_weights


@torch.no_grad()
def init_block_modules(module: nn.Module) -> None:
    """The family's own initialisation of the pieces both models share: residual gates closed (as the original's
    1e-5-scaled gate projections), norm weights one, RoPE tables rebuilt (non-persistent buffers)."""
    if isinstance(module, PrologueBlock):
        init.zeros_(module.attn_gate)
        init.zeros_(module.mlp_gate)
    elif isinstance(module, PrologueRMSNorm):
        init.ones_(module.weight)
    elif isinstance(module, PrologueRotaryEmbedding):
        cos, sin = module.compute_tables(module.config)
        init.copy_(module.cos, cos)
        init.copy_(module.sin, sin)


class PrologueQuantizer(nn.Module):
    """Projection to `embed_dim`, then the cosine-nearest code of an l2-normalised codebook."""

    def __init__(self, hidden_size: int, codebook_size: int, embed_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(hidden_size, embed_dim)
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1)  # [K, E]

    def forward(self, hidden_states) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """hidden [B, L, hidden] -> latents [B, L, E] (l2-normalised), cosine similarities [B, L, K], indices [B, L]."""
        latents = F.normalize(self.proj_in(hidden_states.float()), dim=-1)
        similarity = latents @ self.codebook.T
        return latents, similarity, similarity.argmax(-1)

    def codes(self, indices: torch.LongTensor) -> torch.Tensor:
        return F.normalize(self.embedding(indices).float(), dim=-1)


class PrologueEncoder(nn.Module):
    """Bidirectional blocks over `[input tokens] [prologue queries]`. Prologue's encoder reads the patches and
    appends the queries; Prologue-Post has two: a 2D patch encoder (no queries) and a prologue encoder that reads the
    patch encoder's output and appends the queries."""

    def __init__(self, config: PrologueVQVAEConfig, input_dim: int, hidden_size: int, num_layers: int,
                 num_heads: int, mlp_ratio: float, with_queries: bool):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, hidden_size)
        # [num_prologue_tokens, hidden]
        self.prologue_queries = nn.Parameter(torch.zeros(config.num_prologue_tokens, hidden_size)) if with_queries else None
        self.layers = nn.ModuleList(
            PrologueBlock(config, hidden_size, num_heads, round(hidden_size * mlp_ratio), bias=True)
            for _ in range(num_layers)
        )
        self.rotary_emb = PrologueGridQueriesRotary(config) if with_queries else PrologueGridRotary(config)

    def forward(self, inputs: torch.Tensor, output_hidden_states: bool = False):
        """inputs [B, N, input_dim] -> (hidden [B, N (+ num_prologue_tokens), hidden], with `output_hidden_states`
        the input embeddings and each layer's output, else None)."""
        x = self.input_proj(inputs)
        if self.prologue_queries is not None:
            x = torch.cat([x, self.prologue_queries.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        rotary = self.rotary_emb()
        all_hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x, _ = layer(x, rotary)
            if output_hidden_states:
                all_hidden_states += (x,)
        return x, all_hidden_states


class PrologueDecoder(nn.Module):
    def __init__(self, config: PrologueVQVAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.code_embed = nn.Linear(config.codebook_embed_dim, width)
        self.layers = nn.ModuleList(
            PrologueBlock(config, width, config.num_decoder_heads, round(width * config.mlp_ratio), bias=True)
            for _ in range(config.num_decoder_layers)
        )
        self.norm = PrologueRMSNorm(width)
        self.to_patches = nn.Linear(width, config.patch_dim)
        self.rotary_emb = PrologueGridRotary(config)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """visual code vectors [B, N, E] -> patches [B, N, patch_dim]."""
        x = self.code_embed(codes)
        rotary = self.rotary_emb()
        for layer in self.layers:
            x, _ = layer(x, rotary)
        return self.to_patches(self.norm(x)).float()


class PrologueVQVAE(PreTrainedModel):
    r"""Prologue's tokenizer: `encode` gives visual and prologue codes, `decode` turns visual codes into pixels.

    Example:
    ```python
    >>> tokenizer = PrologueVQVAE(PrologueVQVAEConfig())
    >>> out = tokenizer.encode(torch.rand(2, 3, 256, 256) * 2 - 1)
    >>> out.indices.shape, out.prologue_indices.shape  # [2, 16, 16], [2, 16]
    >>> tokenizer.decode(out.indices).shape  # [2, 3, 256, 256]
    ```
    """

    config_class = PrologueVQVAEConfig
    base_model_prefix = "prologue_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["PrologueBlock"]
    _supports_sdpa = True

    def __init__(self, config: PrologueVQVAEConfig):
        super().__init__(config)
        self.encoder = PrologueEncoder(config, config.patch_dim, config.hidden_size, config.num_encoder_layers,
                                       config.num_encoder_heads, config.mlp_ratio,
                                       with_queries=config.num_prologue_tokens > 0 and not config.is_post)
        self.quantizer = PrologueQuantizer(config.hidden_size, config.codebook_size, config.codebook_embed_dim)
        self.prologue_encoder = self.prologue_quantizer = None
        if config.is_post:
            self.prologue_encoder = PrologueEncoder(
                config, config.hidden_size, config.prologue_encoder_hidden_size, config.prologue_encoder_layers,
                config.prologue_encoder_heads, config.prologue_encoder_mlp_ratio, with_queries=True,
            )
        if config.num_prologue_tokens:
            width = config.prologue_encoder_hidden_size if config.is_post else config.hidden_size
            self.prologue_quantizer = PrologueQuantizer(width, config.prologue_codebook_size, config.codebook_embed_dim)
        self.decoder = PrologueDecoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # N(0, initializer_range) for linears and embeddings
        # leaves are matched by identity: transformers skips modules without parameters of their own (a quantiser)
        std = self.config.initializer_range
        if isinstance(module, PrologueEncoder) and module.prologue_queries is not None:
            init.normal_(module.prologue_queries, std=std)
        elif module is self.quantizer.embedding or module is getattr(self.prologue_quantizer, "embedding", None):
            init.normal_(module.weight, std=self.config.codebook_embed_dim**-0.5)  # SimVQ's init
        elif module is self.decoder.to_patches:
            init.normal_(module.weight, std=std * 1e-5)  # the original's zero-out output layer
        init_block_modules(module)

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], patches row-major, each flattened as (p_row, p_col, channel)."""
        p = self.config.patch_size
        b, c, h, w = pixel_values.shape
        x = pixel_values.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p, grid, c = self.config.patch_size, self.config.grid_size, self.config.in_channels
        x = patches.reshape(patches.shape[0], grid, grid, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], c, grid * p, grid * p)

    def _check_pixels(self, pixel_values):
        size, channels = self.config.image_size, self.config.in_channels
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.shape[1:] != (channels, size, size):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a tensor [B, {channels}, {size}, {size}] in [-1, 1], got {shape}")

    @apply_forward_hook
    def encode(self, pixel_values: torch.FloatTensor, output_hidden_states: bool = False) -> PrologueVQVAEEncoderOutput:
        """pixel_values [B, 3, H, W] in [-1, 1] -> visual and prologue codes (and, with `output_hidden_states`, the
        (patch) encoder's hidden states)."""
        self._check_pixels(pixel_values)
        grid, num_patches = self.config.grid_size, self.config.grid_size**2
        hidden, all_hidden_states = self.encoder(self.patchify(pixel_values), output_hidden_states)
        latents, _, indices = self.quantizer(hidden[:, :num_patches])
        quantized = latents + (self.quantizer.codes(indices) - latents).detach()
        prologue_indices = prologue_one_hot = None
        if self.prologue_quantizer is not None:
            prologue_hidden = (self.prologue_encoder(hidden)[0] if self.prologue_encoder is not None else hidden)[:, num_patches:]
            _, similarity, prologue_indices = self.prologue_quantizer(prologue_hidden)
            probs = (similarity / self.config.prologue_temperature).softmax(-1)
            hard = F.one_hot(prologue_indices, self.config.prologue_codebook_size).to(probs.dtype)
            prologue_one_hot = probs + (hard - probs).detach()
        return PrologueVQVAEEncoderOutput(
            indices=indices.view(-1, grid, grid), prologue_indices=prologue_indices, quantized=quantized,
            prologue_one_hot=prologue_one_hot, latents=latents, last_hidden_state=hidden, hidden_states=all_hidden_states,
        )

    @apply_forward_hook
    def decode(self, indices: torch.LongTensor) -> torch.FloatTensor:
        """visual code ids [B, h, w] (or [B, h * w]) -> pixels [B, 3, H, W], nominally in [-1, 1]."""
        grid, size = self.config.grid_size, self.config.codebook_size
        if indices.dtype not in (torch.int64, torch.int32) or indices[0].numel() != grid * grid:
            raise ValueError(f"indices must be integer visual codes [B, {grid}, {grid}], got {indices.dtype} "
                             f"{tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"indices must lie in [0, codebook_size={size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.decode_codes(self.quantizer.codes(indices.reshape(indices.shape[0], -1)))

    def decode_codes(self, codes: torch.Tensor) -> torch.FloatTensor:
        """visual code vectors [B, h * w, E] -> pixels [B, 3, H, W]."""
        return self.unpatchify(self.decoder(codes.to(self.dtype)))  # the quantiser's code vectors are fp32

    def forward(self, pixel_values: torch.FloatTensor, decode: bool = True, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> PrologueVQVAEOutput | tuple:
        """Reconstruction through the straight-through visual codes, with the visual VQ losses. `decode=False` skips
        the decoder (reconstruction None), for Prologue-Post's prologue stage, whose visual path is frozen.
        `output_hidden_states` / `return_dict` default to the config's, as in transformers."""
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(pixel_values, output_hidden_states)
        codes = self.quantizer.codes(encoded.indices.flatten(1))
        codebook_loss = (codes - encoded.latents.detach()).pow(2).mean()
        commitment_loss = self.config.commit_loss_beta * (codes.detach() - encoded.latents).pow(2).mean()
        output = PrologueVQVAEOutput(
            reconstruction=self.decode_codes(encoded.quantized) if decode else None, codebook_loss=codebook_loss,
            commitment_loss=commitment_loss, indices=encoded.indices, prologue_indices=encoded.prologue_indices,
            prologue_one_hot=encoded.prologue_one_hot, hidden_states=encoded.hidden_states,
        )
        return output if return_dict else output.to_tuple()


def __getattr__(name: str):
    """`PrologueTokenizer`, the old name of `PrologueVQVAE` (transformers takes a class named `*Tokenizer*` for a text
    tokenizer): still resolves, with a warning, for code and the model_index.json of folders saved before the rename."""
    if name == "PrologueTokenizer":
        warnings.warn("PrologueTokenizer is deprecated: use PrologueVQVAE", FutureWarning, stacklevel=2)
        return PrologueVQVAE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PrologueVQVAE"]
