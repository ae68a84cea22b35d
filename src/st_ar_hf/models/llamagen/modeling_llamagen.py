"""LlamaGen's class-conditional GPT (arXiv 2406.06525) as a transformers model.

Architecture facts from LlamaGen `autoregressive/models/gpt.py`; the code is written anew. Sequence layout:

    position  0 .. cls_token_num-1            class token(s) (RoPE rows are zero: their q and k vanish)
    position  cls_token_num + k               image token k = grid cell (k // grid, k % grid)

`logits[:, cls_token_num - 1 + k]` is the distribution of image token k.
"""

from collections.abc import Callable

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

from .configuration_llamagen import LlamaGenConfig


class LlamaGenRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LlamaGen2DRotaryEmbedding(nn.Module):
    """cos/sin tables [cls_token_num + grid^2, head_dim/2] for interleaved-pair RoPE; `forward(positions)` gives the
    rotations of those positions as complex numbers cos + j sin [T, head_dim/2].

    Of the head_dim/2 rotary pairs, the first half rotates with the row of the token's grid cell and the second half
    with its column. Class-token rows are zero (cos = sin = 0), which zeroes their q and k, as in LlamaGen.
    """

    def __init__(self, config: LlamaGenConfig):
        super().__init__()
        self.config = config
        cos, sin = self.compute_tables(config)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def compute_tables(config: LlamaGenConfig) -> tuple[torch.Tensor, torch.Tensor]:
        quarter = config.head_dim // 4
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, 2 * quarter, 2).float() / (2 * quarter)))  # [D/4]
        angles = torch.arange(config.grid_size).float()[:, None] * inv_freq  # [grid, D/4]
        grid = config.grid_size
        grid_angles = torch.cat(
            [angles[:, None, :].expand(grid, grid, quarter), angles[None, :, :].expand(grid, grid, quarter)], dim=-1
        ).flatten(0, 1)  # [grid^2, D/2]: (row angles, column angles)
        prefix = torch.zeros(config.cls_token_num, 2 * quarter)
        return torch.cat([prefix, grid_angles.cos()]), torch.cat([prefix, grid_angles.sin()])

    def forward(self, position_ids: torch.LongTensor) -> torch.Tensor:
        # the tables are in the model's dtype (as LlamaGen's freqs_cis after `.to(dtype)`); the rotation is in fp32
        return torch.complex(self.cos[position_ids].float(), self.sin[position_ids].float())  # [T, D/2], complex64


class LlamaGenLinear(nn.Linear):
    """`nn.Linear` that multiplies weight-major, `(W @ x^T)^T`, for the few rows of a decoding step in fp32 on the CPU.

    For `x @ W^T` with 2 to 64 rows, MKL's fp32 GEMM runs its small-M path at a quarter to a half of the memory
    bandwidth; with the weight as the left operand it streams the weight and runs 1.2-3x faster, the same product up
    to rounding (measured per shape on a 2-core EPYC, torch 2.13; README, Performance). The rows must reach MKL as
    the transpose of a contiguous [rows, in] matrix: the same numbers laid out as a contiguous [in, rows] take a path
    2-3x slower. So the input is made contiguous and the output is returned contiguous (as `F.linear`'s), copies of
    a few rows. bf16 gains nothing and keeps `F.linear`.
    """

    max_weight_major_rows = 64

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or x.dtype != torch.float32 or rows > self.max_weight_major_rows:
            return super().forward(x)
        out = self.weight @ x.reshape(rows, -1).contiguous().T  # [out, rows]
        return out.T.contiguous().view(*x.shape[:-1], -1)


def apply_rotary_emb(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; pair (2i, 2i+1) of each head, read as the complex number x_2i + j x_2i+1, is multiplied by
    rotation [T, D/2] (complex64, cos + j sin of its angle); computed in fp32. One complex product: the same
    x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin as the real form, in fewer kernels."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, T, H, D/2]
    return torch.view_as_real(pairs * rotation[:, None, :]).flatten(-2).type_as(x)


class LlamaGenAttention(nn.Module):
    def __init__(self, config: LlamaGenConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.qkv_proj = LlamaGenLinear(config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim)
        self.o_proj = LlamaGenLinear(config.hidden_size, config.hidden_size)
        self.resid_dropout = nn.Dropout(config.residual_dropout)

    def forward(self, hidden_states, rotation, attention_mask, past_key_values: Cache | None = None, num_keys=None,
                output_attentions=False):
        batch, seq_len, _ = hidden_states.shape
        kv_dim = self.num_key_value_heads * self.head_dim
        qk, v = self.qkv_proj(hidden_states).split([self.config.hidden_size + kv_dim, kv_dim], dim=-1)
        qk = apply_rotary_emb(qk.view(batch, seq_len, -1, self.head_dim), rotation).transpose(1, 2)  # [B, H + Hkv, T, D]
        q, k = qk.split([self.num_heads, self.num_key_value_heads], dim=1)
        v = v.view(batch, seq_len, -1, self.head_dim).transpose(1, 2)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # [B, Hkv, S, D]
        if num_keys is not None:  # a CPU decoding step: its one query over the filled keys, where matmul + softmax
            k, v = k[:, :, :num_keys], v[:, :, :num_keys]  # beats the CPU SDPA kernel
            attention_interface: Callable = eager_attention_forward
        elif output_attentions:  # the weights exist in eager attention only: the other implementations revert to it
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self, q, k, v, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling,
        )  # [B, T, H, D]
        return self.resid_dropout(self.o_proj(attn_output.reshape(batch, seq_len, -1))), attn_weights


class LlamaGenMLP(nn.Module):
    def __init__(self, config: LlamaGenConfig):
        super().__init__()
        self.gate_proj = LlamaGenLinear(config.hidden_size, config.intermediate_size)
        self.up_proj = LlamaGenLinear(config.hidden_size, config.intermediate_size)
        self.down_proj = LlamaGenLinear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.ffn_dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class LlamaGenDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LlamaGenConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaGenAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaGenMLP(config)

    def forward(self, hidden_states, rotation, attention_mask=None, past_key_values=None, num_keys=None,
                output_attentions=False):
        attn_output, attn_weights = self.self_attn(
            self.input_layernorm(hidden_states), rotation, attention_mask, past_key_values, num_keys, output_attentions
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), attn_weights


def _host_checkable(tensor: torch.Tensor) -> bool:
    """Value checks run on CPU tensors only: on an accelerator they would stall the decoding loop once per token
    (there, out-of-range ids still trip the embedding's device-side assert)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


class LlamaGenForImageGeneration(PreTrainedModel):
    r"""LlamaGen's class-conditional GPT over VQ codes.

    Example:
    ```python
    >>> from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration
    >>> model = LlamaGenForImageGeneration(LlamaGenConfig.from_preset("B"))
    >>> codes = torch.randint(0, 16384, (2, 256))
    >>> out = model(input_ids=codes[:, :-1], class_labels=torch.tensor([207, 360]), labels=codes)
    >>> out.logits.shape, out.loss  # [2, 256, 16384], ln(16384) at init
    ```
    """

    config_class = LlamaGenConfig
    base_model_prefix = "llamagen"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaGenDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _input_embed_layer = "embed_tokens"

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        # one row per class plus the null class (id num_classes) for classifier-free guidance
        self.embed_classes = nn.Embedding(config.num_classes + 1, config.cls_token_num * config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.layers = nn.ModuleList(LlamaGenDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaGenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = LlamaGenLinear(config.hidden_size, config.vocab_size)
        self.rotary_emb = LlamaGen2DRotaryEmbedding(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # N(0, initializer_range) for linears and embeddings, ones for norms
        if module is self.lm_head:
            init.zeros_(module.weight)  # LlamaGen: the initial loss is exactly ln(vocab_size)
        elif isinstance(module, LlamaGen2DRotaryEmbedding):
            cos, sin = module.compute_tables(module.config)
            init.copy_(module.cos, cos)
            init.copy_(module.sin, sin)

    # The token-by-token decoding of st_ar_hf's pipeline (`pipelines/decoding_llamagen.generate`), set when st_ar_hf is
    # imported: it lives once, beside the other families' decodings, and a saved folder carries no copy of it.
    decoding: Callable | None = None

    def generate(self, class_labels: torch.LongTensor | list[int], guidance_scale: float = 1.0, **kwargs) -> torch.LongTensor:
        r"""Samples the image tokens of each class label with the pipeline's decoding: class_labels [B] -> tokens
        [B, block_size], the row-major codes of the grid (`vqvae.decode(tokens.view(B, grid_size, grid_size))` draws
        them). Same tokens as `STARPipeline` for the same arguments and generators.

        Args:
            guidance_scale: classifier-free guidance on raw logits against the null class; 1.0 is off.
            kwargs: the decoding's `cfg_interval`, `temperature`, `top_k`, `top_p`, `do_sample`, `generator` (one, or
                one per label), `callback` and `compile`.
        """
        if self.decoding is None:
            raise RuntimeError("generate runs the decoding of the st-ar-hf package (pip install st-ar-hf, then import "
                               "st_ar_hf); without it, sample with the pipeline, e.g. DiffusionPipeline.from_pretrained("
                               "repo_id, trust_remote_code=True)")
        class_labels = torch.as_tensor(class_labels, device=self.device)
        return self.decoding(self, class_labels, guidance_scale=guidance_scale, **kwargs)

    @property
    def max_sequence_length(self) -> int:
        return self.config.cls_token_num + self.config.block_size

    def embed_class_labels(self, class_labels: torch.LongTensor) -> torch.Tensor:
        """[B] -> [B, cls_token_num, hidden]; in training a label becomes the null class with class_dropout_prob."""
        if self.training and self.config.class_dropout_prob > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
            class_labels = torch.where(dropped, self.config.null_class_id, class_labels)
        return self.embed_classes(class_labels).view(class_labels.shape[0], self.config.cls_token_num, -1)

    def _check_inputs(self, input_ids, class_labels, labels, attention_bias, past_length, seq_len):
        cfg = self.config
        if input_ids is not None:
            if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"input_ids must be an int64 tensor [B, T], got {input_ids.dtype} {tuple(input_ids.shape)}")
            if _host_checkable(input_ids) and input_ids.numel() and (
                input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size
            ):
                raise ValueError(f"input_ids must lie in [0, vocab_size={cfg.vocab_size}), got values in "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if class_labels is not None:
            if class_labels.ndim != 1 or class_labels.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"class_labels must be an int64 tensor [B], got {class_labels.dtype} {tuple(class_labels.shape)}")
            if input_ids is not None and class_labels.shape[0] != input_ids.shape[0]:
                raise ValueError(f"class_labels has batch {class_labels.shape[0]} but input_ids has {input_ids.shape[0]}")
            if _host_checkable(class_labels) and (class_labels.min() < 0 or class_labels.max() > cfg.num_classes):
                raise ValueError(f"class_labels must lie in [0, num_classes={cfg.num_classes}] ({cfg.num_classes} is the "
                                 f"null class), got values in [{int(class_labels.min())}, {int(class_labels.max())}]")
        if seq_len == 0:
            raise ValueError("pass input_ids, class_labels or both")
        if past_length + seq_len > self.max_sequence_length:
            raise ValueError(f"the sequence ({past_length} cached + {seq_len} new) exceeds cls_token_num + block_size = "
                             f"{self.max_sequence_length} positions")
        if labels is not None:
            if labels.ndim != 2 or labels.dtype != torch.int64 or input_ids is None:
                raise ValueError(f"labels must be an int64 tensor [B, L] with input_ids given, got {labels.dtype} {tuple(labels.shape)}")
            if class_labels is None or labels.shape[1] > input_ids.shape[1] + 1:
                raise ValueError(f"labels [B, L] needs class_labels and input_ids with at least L - 1 tokens, got "
                                 f"L = {labels.shape[1]} and {input_ids.shape[1]} input_ids")
        if attention_bias is not None and (not attention_bias.is_floating_point() or attention_bias.ndim != 4):
            raise ValueError(f"attention_bias must be an additive float tensor [B, 1, T, S], got "
                             f"{attention_bias.dtype} {tuple(attention_bias.shape)}")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        attention_bias: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        cache_position: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            input_ids: image tokens [B, T], row-major codes of the VQ grid.
            class_labels: [B] ids in [0, num_classes], `num_classes` being the null class; when given, the class
                token(s) are prepended. Leave it out to continue a cached sequence.
            labels: [B, L] image tokens; the mean next-token cross-entropy of `logits[:, cls_token_num - 1:][:, :L]`.
            attention_bias: additive float bias [B, 1, T, S] over the S = cached + T keys where the causal rule
                allows them (0 keeps a key, -inf or `torch.finfo(dtype).min` drops it; the mask stays finite).
                ST-AR's masked-attention objective drops random keys this way; keep each query's own position open
                so no row is empty.
            past_key_values / use_cache: a transformers `Cache` to read and extend (a `DynamicCache` is made when
                `use_cache` is set and none is given).
            cache_position: [T] sequence positions of the new tokens; derived from the cache length when omitted.
            output_hidden_states: also return `hidden_states`: the embeddings and the output of every layer
                (before the final norm), each [B, T, hidden]. None: `config.output_hidden_states`.
            output_attentions: also return `attentions`: the attention weights of every layer, each [B, H, T, S].
                They exist in eager attention only, which this call then runs whatever `config._attn_implementation`
                is. None: `config.output_attentions`.
            return_dict: a `CausalLMOutputWithPast` (True) or its tuple. None: `config.return_dict`.
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0: all), as in transformers;
                a forward that only needs features (the EMA teacher) passes 1.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None and cache_position is None else 0
        seq_len = (0 if input_ids is None else input_ids.shape[1]) + (
            0 if class_labels is None else self.config.cls_token_num
        )
        self._check_inputs(input_ids, class_labels, labels, attention_bias, past_length, seq_len)
        if labels is not None and logits_to_keep:
            raise ValueError(f"labels need the logits of every position: logits_to_keep must be 0, got {logits_to_keep}")

        embeddings = []
        if class_labels is not None:
            embeddings.append(self.embed_class_labels(class_labels))
        if input_ids is not None:
            embeddings.append(self.embed_tokens(input_ids))
        hidden_states = self.token_dropout(torch.cat(embeddings, dim=1))  # [B, T, hidden]

        if cache_position is None:
            cache_position = torch.arange(past_length, past_length + seq_len, device=hidden_states.device)
        rotation = self.rotary_emb(cache_position)
        attention_mask, num_keys = self._attention_mask(
            hidden_states, cache_position, past_key_values, attention_bias, output_attentions
        )

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(
                hidden_states, rotation, attention_mask, past_key_values, num_keys, output_attentions
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        logits = self.lm_head(self.norm(hidden_states[:, -logits_to_keep:])).float()  # [B, T or logits_to_keep, V]

        loss = None
        if labels is not None:
            start = self.config.cls_token_num - 1
            predicted = logits[:, start : start + labels.shape[1]]
            loss = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), labels.reshape(-1))

        # the cache field is positional: transformers renamed it from `past_key_values` to `cache` in 5.2x
        output = CausalLMOutputWithPast(loss, logits, past_key_values, all_hidden_states, all_attentions)
        return output if return_dict else output.to_tuple()

    def _attention_mask(self, hidden_states, cache_position, past_key_values, attention_bias, output_attentions):
        """(mask, num_keys) for the rule "query i sees key j iff j <= cache_position[i]", plus `attention_bias`.

        - no cache and no bias, SDPA without attention weights: (None, None), the kernel's own causal mask;
        - one new token on the CPU (a decoding step), no bias: (None, position + 1), the keys up to the token's
          position and no mask, attended with matmul + softmax whatever the configured implementation. A static
          cache returns all its slots; reading only the filled ones halves the attention's memory traffic over an
          image. Under torch.compile or on an accelerator, where the position must not be read on the host, the
          masked form below keeps the shapes static;
        - otherwise an additive mask [B or 1, 1, T, S] over all S keys the cache returns (unfilled slots masked),
          finite: `torch.finfo(dtype).min` where the causal rule hides a key, else the bias (0 without one).
        """
        if (past_key_values is None and attention_bias is None and not output_attentions
                and self.config._attn_implementation != "eager"):
            return None, None
        if cache_position.shape[0] == 1 and attention_bias is None and _host_checkable(cache_position):
            return None, int(cache_position[0]) + 1
        seq_len = cache_position.shape[0]
        num_keys = seq_len if past_key_values is None else past_key_values.get_mask_sizes(seq_len, 0)[0]
        key_positions = torch.arange(num_keys, device=hidden_states.device)
        allowed = key_positions[None, :] <= cache_position[:, None]  # [T, S]
        if attention_bias is None:
            mask = torch.zeros(allowed.shape, dtype=hidden_states.dtype, device=hidden_states.device)[None, None]
        elif attention_bias.shape[-2:] != allowed.shape:
            raise ValueError(f"attention_bias must end in [T, S] = {list(allowed.shape)}, got {tuple(attention_bias.shape)}")
        else:  # [B, 1, T, S] in the dtype's finite range (-inf, or float32's min cast to half precision, is not)
            mask = attention_bias.to(hidden_states.dtype).clamp_min(torch.finfo(hidden_states.dtype).min)
        # hidden keys filled, not added: finfo.min plus a bias of finfo.min would overflow to -inf
        return mask.masked_fill(~allowed, torch.finfo(hidden_states.dtype).min), None


__all__ = ["LlamaGenForImageGeneration", "apply_rotary_emb"]
