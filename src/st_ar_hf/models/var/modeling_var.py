"""VAR's and FlexVAR's class-conditional scale-wise transformers (arXiv 2404.02905, 2502.20313) as transformers models.

Architecture facts from FoundationVision/VAR `models/var.py`, `models/basic_var.py` and jiaosiyu1999/FlexVAR
`models/flexvar.py`; the code is written anew. Sequence layout for a schedule of sides (s_0 = 1, s_1, ..., s_{K-1}):

    position 0                                     the start token: class embedding + start embedding
    positions sum(s_j^2 for j < k) + (0 .. s_k^2)  scale k's map, row-major; its inputs are code vectors of the
                                                   scales before it, brought to s_k x s_k by the tokenizer (VAR) or by
                                                   bicubic upsampling of scale k-1 (FlexVAR)

Every position of scale k attends to all positions of scales 0 .. k (block-causal), and `logits[:, p]` is the
distribution of the code at position p, so the logits of scale k are `logits[:, sum(s_j^2 for j < k):][:, :s_k^2]`.
The two models differ only in their position embeddings (`scale_positions`).
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from .configuration_var import FlexVARConfig, VARConfig, check_scale_schedule

MAX_LOG_QUERY_SCALE = math.log(100.0)  # VAR clamps the learnable attention scale at 100


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zeroes a sample's residual branch with probability `drop_prob`, rescaling the kept ones."""
    if drop_prob == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - drop_prob)
    return x * keep.div_(1 - drop_prob)


class VARAttention(nn.Module):
    """Multi-head attention with q and v biases (none on k); with `attn_l2_norm`, q and k are l2-normalised and q is
    scaled per head by exp(min(log_scale, log 100)), learned from log 4."""

    def __init__(self, config: VARConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.num_key_value_groups = 1
        self.is_causal = False  # block-causal masks come from the model; cached decoding needs none
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.v_bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if config.attn_l2_norm:
            self.query_log_scale = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))
            self.scaling = 1.0
        else:
            self.scaling = 0.25 / math.sqrt(self.head_dim)

    def forward(self, hidden_states, attention_mask, past_key_values: Cache | None = None):
        batch, seq_len, _ = hidden_states.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(hidden_states, self.qkv_proj.weight, bias).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, D] each
        if self.config.attn_l2_norm:
            query = F.normalize(query, dim=-1) * self.query_log_scale.clamp_max(MAX_LOG_QUERY_SCALE).exp()
            key = F.normalize(key, dim=-1)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # [B, H, S, D]

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling
        )  # [B, T, H, D], and [B, H, T, S] from eager attention (None from the others)
        return self.o_proj(attn_output.reshape(batch, seq_len, -1)), attn_weights


class VARMLP(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VARDecoderLayer(GradientCheckpointingLayer):
    """AdaLN block: six modulation vectors from the class condition (gamma1, gamma2, scale1, scale2, shift1, shift2)
    gate and modulate an affine-free LayerNorm before attention and before the MLP."""

    def __init__(self, config: VARConfig, layer_idx: int, drop_path_rate: float):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.drop_path_rate = drop_path_rate
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.self_attn = VARAttention(config, layer_idx)
        self.mlp = VARMLP(config)
        if config.shared_adaln:  # the model projects the condition once; each block adds its own offset
            self.adaln_offset = nn.Parameter(torch.zeros(1, 1, 6, config.hidden_size))
        else:
            self.adaln_modulation = nn.Linear(config.hidden_size, 6 * config.hidden_size)

    def modulation(self, condition: torch.Tensor) -> torch.Tensor:
        """condition: SiLU of the class embedding [B, C], or the shared projection [B, 1, 6, C] with shared AdaLN ->
        the block's modulation [B, 1, 6, C]."""
        if hasattr(self, "adaln_offset"):
            return self.adaln_offset + condition
        return self.adaln_modulation(condition).view(-1, 1, 6, self.hidden_size)

    def forward(self, hidden_states, modulation, attention_mask=None, past_key_values=None):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation.unbind(2)  # [B, 1, C] each
        attn_input = self.norm(hidden_states).mul(scale1.add(1)).add_(shift1)
        attn_output, attn_weights = self.self_attn(attn_input, attention_mask, past_key_values)
        hidden_states = hidden_states + drop_path(attn_output.mul_(gamma1), self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.norm(hidden_states).mul(scale2.add(1)).add_(shift2))
        return hidden_states + drop_path(mlp_output.mul(gamma2), self.drop_path_rate, self.training), attn_weights


class VARAdaLNBeforeHead(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.modulation = nn.Linear(config.hidden_size, 2 * config.hidden_size)

    def forward(self, hidden_states, modulation):
        """modulation: `modulation(F.silu(class_embeddings))` viewed [B, 1, 2, C] (scale, shift)."""
        scale, shift = modulation.unbind(2)
        return self.norm(hidden_states).mul(scale.add(1)).add_(shift)


class VARConditioning(NamedTuple):
    """What the class labels contribute to every forward: computed once per sampling call (the condition does not
    change between scales), it spares each scale the AdaLN projections, a third of a block's weights."""

    class_embeddings: torch.Tensor  # [B, C]
    layer_modulations: tuple[torch.Tensor, ...]  # one [B, 1, 6, C] per block
    head_modulation: torch.Tensor  # [B, 1, 2, C]


def var_embedding_std(config: VARConfig) -> float:
    """VAR's std for the embeddings it creates itself (start and positions): sqrt(1 / (3 C))."""
    return (1 / config.hidden_size / 3) ** 0.5


def scale_levels(scales: Sequence[int], device=None) -> torch.LongTensor:
    """[L]: the scale index of every position of the schedule."""
    return torch.cat([torch.full((side * side,), k, device=device) for k, side in enumerate(scales)])


class VARPreTrainedModel(PreTrainedModel):
    """What VAR and FlexVAR share: the AdaLN transformer, its block-causal forward over a scale schedule and VAR's
    initialisation. Subclasses own the position embeddings: `scale_positions(scales)` gives them [1, L, C] for a
    schedule."""

    config_class = VARConfig
    base_model_prefix = "var"
    input_modalities = ("image",)
    main_input_name = "class_labels"
    _input_embed_layer = "embed_classes"  # the main input's embedding (code vectors enter through `embed_codes`)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VARDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: VARConfig):
        super().__init__(config)
        hidden = config.hidden_size
        # one row per class plus the null class (id num_classes) for classifier-free guidance
        self.embed_classes = nn.Embedding(config.num_classes + 1, hidden)
        self.start_embedding = nn.Parameter(torch.zeros(1, 1, hidden))
        self.embed_codes = nn.Linear(config.codebook_embed_dim, hidden)
        if config.shared_adaln:
            self.shared_adaln_modulation = nn.Linear(hidden, 6 * hidden)
        last = max(config.num_hidden_layers - 1, 1)
        rates = [config.drop_path_rate * i / last for i in range(config.num_hidden_layers)]  # 0 .. drop_path_rate
        self.layers = nn.ModuleList(VARDecoderLayer(config, i, rates[i]) for i in range(config.num_hidden_layers))
        self.head_norm = VARAdaLNBeforeHead(config)
        self.lm_head = nn.Linear(hidden, config.vocab_size)

    @torch.no_grad()
    def _init_weights(self, module):
        """VAR's `init_weights`: truncated normals for linears and embeddings; once the model's modules are done (they
        are visited before the model itself), the residual branches' outputs divided by sqrt(2 depth), the AdaLN
        projections scaled by `init_adaln` (their gamma rows by `init_adaln_gamma`) and the head by `init_head`."""
        config = self.config
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.trunc_normal_(module.weight, std=config.initializer_range)
        elif isinstance(module, VARAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            if config.attn_l2_norm:
                init.constant_(module.query_log_scale, math.log(4.0))
        elif module is self:
            self._scale_initial_weights()

    def _scale_initial_weights(self):
        config = self.config
        depth_scale = 1 / math.sqrt(2 * config.num_hidden_layers)
        gains = torch.tensor([config.init_adaln_gamma] * 2 + [config.init_adaln] * 4)  # gamma1, gamma2, scales, shifts
        for layer in self.layers:
            init.copy_(layer.self_attn.o_proj.weight, layer.self_attn.o_proj.weight * depth_scale)
            init.copy_(layer.mlp.fc2.weight, layer.mlp.fc2.weight * depth_scale)
            if config.shared_adaln:
                offset = torch.randn(layer.adaln_offset.shape) / config.hidden_size**0.5
                init.copy_(layer.adaln_offset, offset * gains.view(1, 1, 6, 1))
            else:
                weight = layer.adaln_modulation.weight
                init.copy_(weight, weight * gains.repeat_interleave(config.hidden_size)[:, None])
        init.copy_(self.head_norm.modulation.weight, self.head_norm.modulation.weight * config.init_adaln)
        init.copy_(self.lm_head.weight, self.lm_head.weight * config.init_head)
        init.trunc_normal_(self.start_embedding, std=var_embedding_std(config))

    def embed_class_labels(self, class_labels: torch.LongTensor) -> torch.Tensor:
        """[B] -> [B, C]; in training a label becomes the null class with class_dropout_prob."""
        if self.training and self.config.class_dropout_prob > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
            class_labels = torch.where(dropped, self.config.null_class_id, class_labels)
        return self.embed_classes(class_labels)

    def condition(self, class_labels: torch.LongTensor) -> VARConditioning:
        """class_labels [B] -> the AdaLN modulations of every block and of the head (with class dropout in training)."""
        class_embeddings = self.embed_class_labels(class_labels)  # [B, C]
        condition = activated = F.silu(class_embeddings)
        if self.config.shared_adaln:
            condition = self.shared_adaln_modulation(activated).view(-1, 1, 6, self.config.hidden_size)
        head_modulation = self.head_norm.modulation(activated).view(-1, 1, 2, self.config.hidden_size)
        return VARConditioning(class_embeddings, tuple(layer.modulation(condition) for layer in self.layers),
                               head_modulation)

    def _check_inputs(self, class_labels, scale_inputs, labels, scales, past_length) -> int:
        """Validates the call; returns the number of new positions."""
        config = self.config
        if not isinstance(class_labels, torch.Tensor) or class_labels.ndim != 1 or class_labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"class_labels must be an int64 tensor [B], got {getattr(class_labels, 'dtype', type(class_labels))}")
        if class_labels.device.type == "cpu" and not torch.compiler.is_compiling() and class_labels.numel() and (
            class_labels.min() < 0 or class_labels.max() > config.num_classes
        ):
            raise ValueError(f"class_labels must lie in [0, num_classes={config.num_classes}] ({config.num_classes} is the "
                             f"null class), got values in [{int(class_labels.min())}, {int(class_labels.max())}]")
        new_length = (0 if past_length else 1) + (0 if scale_inputs is None else scale_inputs.shape[1])
        if scale_inputs is not None and (scale_inputs.ndim != 3 or scale_inputs.shape[0] != class_labels.shape[0]
                                         or scale_inputs.shape[2] != config.codebook_embed_dim):
            raise ValueError(f"scale_inputs must be [B={class_labels.shape[0]}, T, {config.codebook_embed_dim}], got "
                             f"{tuple(scale_inputs.shape)}")
        total = sum(side * side for side in scales)
        boundaries = {sum(side * side for side in scales[:k]) for k in range(len(scales) + 1)}
        if past_length not in boundaries or past_length + new_length not in boundaries or new_length == 0:
            raise ValueError(f"the schedule {list(scales)} has {total} positions; {past_length} cached + {new_length} new "
                             "must cover whole scales of it")
        if labels is not None and (past_length or labels.shape != (class_labels.shape[0], new_length)):
            raise ValueError(f"labels must be [B, {new_length}] code ids of every position, without a cache, got "
                             f"{tuple(labels.shape)}")
        return new_length

    def _block_causal_mask(self, scales, first: int, end: int, dtype, device) -> torch.Tensor | None:
        """Additive mask [1, 1, T, S] over the new positions, those of scales[first:end], letting position i see
        position j iff scale(j) <= scale(i); None when they lie in one scale (they see every cached position and each
        other)."""
        if end - first == 1:
            return None
        levels = scale_levels(scales[:end], device)
        queries, keys = levels[sum(side * side for side in scales[:first]) :], levels  # [T], [S]
        allowed = keys[None, :] <= queries[:, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]

    def forward(
        self,
        class_labels: torch.LongTensor,
        scale_inputs: torch.FloatTensor | None = None,
        scales: Sequence[int] | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        conditioning: VARConditioning | None = None,
        with_start_embedding: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            class_labels: [B] ids in [0, num_classes] (`num_classes` is the null class); they condition every block
                and make the start token.
            scale_inputs: code-vector inputs [B, T, codebook_embed_dim] of the positions after the start token:
                without a cache, those of scales 1 .. K-1 (teacher forcing, `L - 1` positions) or None for the start
                token alone; with a cache that holds scales 0 .. k-1, those of scale k (`s_k^2` positions).
            scales: the scale schedule; default `config.patch_nums` (VAR accepts no other).
            labels: [B, L] code ids of all positions: the mean cross-entropy over all tokens of all scales.
            past_key_values / use_cache: a transformers `Cache` to read and extend (a `DynamicCache` is made when
                `use_cache` is set and none is given).
            conditioning: `condition(class_labels)`, computed once by a decoding loop and passed to every scale.
            with_start_embedding: False makes the first position the class embedding alone (plus its position), as in
                SAR's student-forcing pass over a `[1, s]` schedule.
            output_hidden_states: also return the embeddings and the output of every block, each [B, T, C].
            output_attentions: also return the attention weights of every block, each [B, H, T, S] (eager attention
                only; other implementations give None).

        Returns logits [B, T, vocab_size] (float32) for the new positions.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        scales = check_scale_schedule(self.config.patch_nums if scales is None else scales, "scales")
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        new_length = self._check_inputs(class_labels, scale_inputs, labels, scales, past_length)

        if conditioning is None:
            conditioning = self.condition(class_labels)
        start = conditioning.class_embeddings[:, None] + (self.start_embedding if with_start_embedding else 0)
        embeddings = [] if past_length else [start]
        if scale_inputs is not None:
            embeddings.append(self.embed_codes(scale_inputs.to(self.embed_codes.weight.dtype)))
        starts = [sum(side * side for side in scales[:k]) for k in range(len(scales) + 1)]  # first position of scale k
        first, end = starts.index(past_length), starts.index(past_length + new_length)  # the new scales
        hidden_states = torch.cat(embeddings, dim=1) + self.scale_positions(scales, first, end)  # [B, T, C]
        attention_mask = self._block_causal_mask(scales, first, end, hidden_states.dtype, hidden_states.device)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer, modulation in zip(self.layers, conditioning.layer_modulations):
            hidden_states, attn_weights = layer(hidden_states, modulation, attention_mask=attention_mask,
                                                past_key_values=past_key_values)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        logits = self.lm_head(self.head_norm(hidden_states, conditioning.head_modulation)).float()  # [B, T, V]

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        # the cache field is positional: transformers renamed it from `past_key_values` to `cache` in 5.2x
        output = CausalLMOutputWithPast(loss, logits, past_key_values, all_hidden_states, all_attentions)
        return output if return_dict else output.to_tuple()


class VARForImageGeneration(VARPreTrainedModel):
    r"""VAR's transformer: learnable absolute position embeddings for each position of `config.patch_nums` plus a
    level embedding per scale, so it samples its trained schedule only.

    Example:
    ```python
    >>> from st_ar_hf import VARConfig, VARForImageGeneration
    >>> model = VARForImageGeneration(VARConfig.from_preset("d16"))
    >>> inputs = torch.randn(2, 679, 32)  # teacher-forcing inputs of scales 2..10 (VARVQVAE.scale_inputs)
    >>> model(torch.tensor([207, 980]), inputs).logits.shape  # [2, 680, 4096]
    ```
    """

    def __init__(self, config: VARConfig):
        super().__init__(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens, config.hidden_size))
        self.scale_embeddings = nn.Embedding(len(config.patch_nums), config.hidden_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.trunc_normal_(self.position_embeddings, std=var_embedding_std(self.config))

    def scale_positions(self, scales: Sequence[int], start: int = 0, end: int | None = None) -> torch.Tensor:
        """Position embeddings [1, T, C] of the positions of scales[start:end] (all by default)."""
        if list(scales) != self.config.patch_nums:
            raise ValueError(f"scales: VAR learned one position embedding per position of patch_nums="
                             f"{self.config.patch_nums} and samples that schedule only, got {list(scales)} (FlexVAR "
                             "samples any schedule)")
        end = len(scales) if end is None else end
        levels = scale_levels(scales, self.position_embeddings.device)
        first, last = sum(s * s for s in scales[:start]), sum(s * s for s in scales[:end])
        return self.scale_embeddings(levels[first:last])[None] + self.position_embeddings[:, first:last]


def sincos_position_grid(side: int, dim: int) -> torch.Tensor:
    """FlexVAR's initial grid [1, dim, side, side]: channel 2i holds sin(row * w_i), channel 2i+1 cos(column * w_i),
    w_i = 10000^(-2i / dim)."""
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))  # [dim/2]
    coordinates = torch.arange(side, dtype=torch.float32)
    grid = torch.zeros(side, side, dim)
    grid[..., 0::2] = torch.sin(coordinates[:, None, None] * frequencies).expand(side, side, -1)
    grid[..., 1::2] = torch.cos(coordinates[None, :, None] * frequencies).expand(side, side, -1)
    return grid.permute(2, 0, 1)[None]


class FlexVARForImageGeneration(VARPreTrainedModel):
    r"""FlexVAR's transformer: no level embedding; each scale's positions are a learnable 2D grid area-resized to the
    scale's side, so any increasing schedule can be sampled (sides up to `position_grid_size`).

    Example:
    ```python
    >>> from st_ar_hf import FlexVARConfig, FlexVARForImageGeneration
    >>> model = FlexVARForImageGeneration(FlexVARConfig.from_preset("d16"))
    >>> scales = [1, 2, 4, 8, 16]
    >>> inputs = torch.randn(2, 4 + 16 + 64 + 256, 32)  # bicubic upsampled code vectors of scales 1..4
    >>> model(torch.tensor([207, 980]), inputs, scales=scales).logits.shape  # [2, 341, 8912]
    ```
    """

    config_class = FlexVARConfig

    def __init__(self, config: FlexVARConfig):
        super().__init__(config)
        side = config.position_grid_size
        self.position_grid = nn.Parameter(torch.zeros(1, config.hidden_size, side, side))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.copy_(self.position_grid, sincos_position_grid(self.config.position_grid_size, self.config.hidden_size))

    def scale_positions(self, scales: Sequence[int], start: int = 0, end: int | None = None) -> torch.Tensor:
        """Position embeddings [1, T, C] of the positions of scales[start:end] (all by default)."""
        grids = [F.interpolate(self.position_grid, size=(side, side), mode="area") for side in scales[start:end]]
        return torch.cat([grid.flatten(2) for grid in grids], dim=2).transpose(1, 2)


__all__ = ["FlexVARForImageGeneration", "VARConditioning", "VARForImageGeneration", "VARPreTrainedModel"]
