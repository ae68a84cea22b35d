"""Prologue's class-conditional AR prior (arXiv 2605.06137) as a transformers model.

Architecture facts from Zyriix/prologue `models.py` (`ARModel`) and `configs/ar/*.yaml`; the code is written anew.
Sequence layout (P = num_prologue_tokens, N = num_visual_tokens):

    position 0              the class embedding (BOS)
    position 1 .. P         prologue tokens, ids visual_vocab_size + code
    position P + 1          EOS (present iff P > 0)
    position P + 2 ..       visual tokens, ids = codes, row-major

`logits[:, t]` is the distribution of sequence token t (t = 0 .. P + N); `logit_mask` allows prologue codes at
t < P, EOS at t = P and visual codes after, and every forward adds it to the returned logits (a masked logit is the
float32 minimum: no sampler can draw it, and no -inf reaches arithmetic on the logits). The loss is the cross-entropy
of the unmasked logits, which is what the official trainers optimise.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_prologue import PrologueConfig
from .modeling_prologue_tokenizer import (
    PrologueBlock, PrologueLinear, PrologueRMSNorm, PrologueRotaryEmbedding, init_block_modules, rope_angles,
)


class PrologueARRotary(PrologueRotaryEmbedding):
    @staticmethod
    def angles(config: PrologueConfig) -> torch.Tensor:
        """1D RoPE over the input positions (BOS and the sequence but its last token) on the first rotary_dim head
        dims; the other dims keep angle 0 (the original's two unused axes)."""
        positions = torch.arange(config.sequence_length)
        position_ids = torch.stack([positions, torch.zeros_like(positions)], dim=1)
        return rope_angles(position_ids, [config.rotary_dim, config.head_dim - config.rotary_dim], config.rope_theta)


def logit_mask(config: PrologueConfig, positions: torch.LongTensor) -> torch.Tensor:
    """Sequence positions [T] -> additive float32 mask [T, vocab_size]: 0 where the position may emit a token, the
    float32 minimum elsewhere (prologue codes before P, EOS at P, visual codes after); added to a logit, it gives the
    minimum itself."""
    prologue, eos = positions < config.num_prologue_tokens, config.has_eos & (positions == config.num_prologue_tokens)
    low = torch.where(prologue, config.prologue_offset, 0)
    high = torch.where(prologue, config.prologue_offset + config.prologue_vocab_size, config.visual_vocab_size)
    if config.has_eos:
        low, high = torch.where(eos, config.eos_token_id, low), torch.where(eos, config.eos_token_id + 1, high)
    vocab = torch.arange(config.vocab_size, device=positions.device)
    allowed = (vocab >= low[:, None]) & (vocab < high[:, None])
    return torch.zeros(allowed.shape, device=positions.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


class PrologueForImageGeneration(PreTrainedModel):
    r"""Prologue's AR prior over `[prologue] [EOS] [visual]` tokens, the class as BOS.

    Example:
    ```python
    >>> model = PrologueForImageGeneration(PrologueConfig.from_preset("B"))
    >>> sequence = torch.cat([16384 + torch.randint(0, 1024, (2, 16)), torch.full((2, 1), 17408),
    ...                       torch.randint(0, 16384, (2, 256))], dim=1)  # [2, 273]
    >>> out = model(input_ids=sequence[:, :-1], class_labels=torch.tensor([207, 360]), labels=sequence)
    >>> out.logits.shape  # [2, 273, 17409], the logit mask applied
    ```
    """

    config_class = PrologueConfig
    base_model_prefix = "prologue"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["PrologueBlock"]
    _supports_sdpa = True

    def __init__(self, config: PrologueConfig):
        super().__init__(config)
        # one row per class plus the null class (id num_classes) for classifier-free guidance
        self.embed_classes = nn.Embedding(config.num_classes + 1, config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(
            PrologueBlock(config, config.hidden_size, config.num_attention_heads, config.intermediate_size, bias=False,
                          is_causal=True, dropout=config.residual_dropout,
                          attention_dropout=config.attention_dropout, layer_idx=i)
            for i in range(config.num_hidden_layers)
        )
        self.norm = PrologueRMSNorm(config.hidden_size)
        self.lm_head = PrologueLinear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary_emb = PrologueARRotary(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # N(0, initializer_range) for linears and embeddings
        init_block_modules(module)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Refuses a new vocabulary size, before any weight changes: the ids are the tokenizer's visual codes, its
        prologue codes and EOS (`PrologueConfig.vocab_size`), which `logit_mask` and the decoding read, so rows added
        after EOS would be ids that no position may emit. Build a model with other `visual_vocab_size` /
        `prologue_vocab_size` instead. The current size (or none) returns the input embeddings, as in transformers."""
        size = self.config.vocab_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size != self.config.vocab_size:
            raise ValueError(f"new_num_tokens: Prologue's vocabulary of {self.config.vocab_size} ids (visual codes, then "
                             f"prologue codes and EOS when num_prologue_tokens > 0) follows visual_vocab_size and "
                             f"prologue_vocab_size and cannot be resized to {size}; build a model with the sizes you "
                             f"need instead")
        return self.get_input_embeddings()

    # The decoding of st_ar_hf's pipeline (`pipelines/decoding_prologue.generate`), set when st_ar_hf is imported: it
    # lives once, beside the other families' decodings, and a saved folder carries no copy of it.
    decoding: Callable | None = None

    def generate(self, class_labels: torch.LongTensor | list[int], guidance_scale: float | tuple = 1.0,
                 **kwargs) -> tuple[torch.LongTensor, torch.LongTensor]:
        r"""Samples `[prologue] [EOS] [visual]` for each class label with the pipeline's decoding: class_labels [B] ->
        (visual codes [B, num_visual_tokens], prologue codes [B, num_prologue_tokens]), which the tokenizer's
        `decode` turns into images. Same tokens as `STARPipeline` for the same arguments and generators.

        Args:
            guidance_scale: a number, (scale, power) or (prologue scale, visual scale, power) (split CFG); 1.0 is off.
                The paper's setting for this model is `config.default_guidance_scale`.
            kwargs: the decoding's `temperature` (a number or a (prologue, visual) pair), `top_k`, `top_p`,
                `do_sample`, `generator` (one, or one per label), `callback` and `prologue_tokens` (prologue codes to
                keep: only the visual tokens are drawn).
        """
        if self.decoding is None:
            raise RuntimeError("generate runs the decoding of the st-ar-hf package (pip install st-ar-hf, then import "
                               "st_ar_hf); without it, sample with the pipeline, e.g. DiffusionPipeline.from_pretrained("
                               "repo_id, trust_remote_code=True)")
        class_labels = torch.as_tensor(class_labels, device=self.device)
        return self.decoding(self, class_labels, guidance_scale=guidance_scale, **kwargs)

    def embed_class_labels(self, class_labels: torch.LongTensor) -> torch.Tensor:
        """[B] -> [B, 1, hidden]; in training a label becomes the null class with class_dropout_prob."""
        if self.training and self.config.class_dropout_prob > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
            class_labels = torch.where(dropped, self.config.null_class_id, class_labels)
        return self.embed_classes(class_labels)[:, None]

    def embed_sequence(self, input_ids: torch.LongTensor, prologue_one_hot: torch.Tensor | None) -> torch.Tensor:
        """Token ids [B, T] -> [B, T, hidden]; with `prologue_one_hot` [B, P, prologue_vocab_size] the first P
        embeddings are `prologue_one_hot @ prologue rows` instead (differentiable in the one-hot)."""
        embeddings = self.embed_tokens(input_ids)
        if prologue_one_hot is None:
            return embeddings
        config = self.config
        rows = self.embed_tokens.weight[config.prologue_offset : config.prologue_offset + config.prologue_vocab_size]
        prologue = prologue_one_hot.to(rows.dtype) @ rows
        return torch.cat([prologue, embeddings[:, config.num_prologue_tokens :]], dim=1)

    def _check_inputs(self, input_ids, class_labels, prologue_one_hot, labels, attention_bias, past_length, seq_len):
        config = self.config
        if input_ids is not None:
            if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"input_ids must be an int64 tensor [B, T], got {input_ids.dtype} {tuple(input_ids.shape)}")
            if input_ids.device.type == "cpu" and input_ids.numel() and (
                input_ids.min() < 0 or input_ids.max() >= config.vocab_size
            ):
                raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size}), got values in "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if class_labels is not None:
            if class_labels.ndim != 1 or class_labels.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"class_labels must be an int64 tensor [B], got {class_labels.dtype} "
                                 f"{tuple(class_labels.shape)}")
            if class_labels.device.type == "cpu" and (class_labels.min() < 0 or class_labels.max() > config.num_classes):
                raise ValueError(f"class_labels must lie in [0, num_classes={config.num_classes}] ({config.num_classes} "
                                 f"is the null class), got values in [{int(class_labels.min())}, {int(class_labels.max())}]")
        if seq_len == 0:
            raise ValueError("pass input_ids, class_labels or both")
        if past_length + seq_len > config.sequence_length:
            raise ValueError(f"the sequence ({past_length} cached + {seq_len} new) exceeds the {config.sequence_length} "
                             f"input positions (BOS and the sequence but its last token)")
        if prologue_one_hot is not None:
            expected = (config.num_prologue_tokens, config.prologue_vocab_size)
            if (input_ids is None or class_labels is None or past_length or prologue_one_hot.ndim != 3
                    or tuple(prologue_one_hot.shape[1:]) != expected or input_ids.shape[1] < expected[0]):
                raise ValueError(f"prologue_one_hot must be [B, {expected[0]}, {expected[1]}] with class_labels and at "
                                 f"least {expected[0]} input_ids from the sequence start, got "
                                 f"{tuple(prologue_one_hot.shape)}")
        if attention_bias is not None and (past_length or not attention_bias.is_floating_point()
                                           or attention_bias.shape[-2:] != (seq_len, seq_len)):
            raise ValueError(f"attention_bias must be an additive float tensor [B, 1, {seq_len}, {seq_len}] over an "
                             f"uncached sequence, got {attention_bias.dtype} {tuple(attention_bias.shape)}")
        if labels is not None and (labels.ndim != 2 or labels.dtype != torch.int64 or input_ids is None
                                   or class_labels is None or labels.shape[1] > input_ids.shape[1] + 1):
            raise ValueError(f"labels must be an int64 tensor [B, L] with class_labels and at least L - 1 input_ids, "
                             f"got {labels.dtype} {tuple(labels.shape)}")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        prologue_one_hot: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        attention_bias: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        cache_position: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        loss_reduction: str = "mean",
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            input_ids: sequence tokens [B, T] (prologue ids offset by visual_vocab_size, EOS, visual codes).
            class_labels: [B] ids in [0, num_classes], `num_classes` being the null class; when given, the BOS is
                prepended. Leave it out to continue a cached sequence.
            prologue_one_hot: [B, P, prologue_vocab_size] one-hots (e.g. the tokenizer's straight-through ones) whose
                products with the prologue embedding rows replace the embeddings of the first P input tokens.
            labels: [B, L] sequence tokens; the cross-entropy of the unmasked `logits[:, :L]`, averaged
                (`loss_reduction="mean"`) or per token [B, L] ("none").
            attention_bias: additive float bias [B, 1, T', T'] over the keys the causal rule allows, in an uncached
                sequence (0 keeps a key, -inf or `torch.finfo(dtype).min` drops it; the mask stays finite). ST-AR's
                masked attention; keep each query's own position open.
            past_key_values / use_cache: a transformers `Cache` to read and extend.
            cache_position: [T'] input positions of the new embeddings; derived from the cache length when omitted.
            output_attentions: also return every layer's attention weights [B, heads, T', S] (S the keys). They
                exist in eager attention only, which this call then runs whatever `config._attn_implementation` is.
            output_hidden_states: also return the embeddings and every layer's output, each [B, T', hidden].
            (`output_attentions`, `output_hidden_states` and `return_dict` default to the config's, as in
            transformers.)
            logits_to_keep: logits of the last `logits_to_keep` positions only (0: all).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_length = past_key_values.get_seq_length() if past_key_values is not None and cache_position is None else 0
        seq_len = (0 if input_ids is None else input_ids.shape[1]) + (0 if class_labels is None else 1)
        self._check_inputs(input_ids, class_labels, prologue_one_hot, labels, attention_bias, past_length, seq_len)
        if loss_reduction not in ("mean", "none"):
            raise ValueError(f"loss_reduction must be 'mean' or 'none', got {loss_reduction!r}")

        embeddings = [] if class_labels is None else [self.embed_class_labels(class_labels)]
        if input_ids is not None:
            embeddings.append(self.embed_sequence(input_ids, prologue_one_hot))
        hidden_states = self.embedding_dropout(torch.cat(embeddings, dim=1))  # [B, T', hidden]
        if cache_position is None:
            cache_position = torch.arange(past_length, past_length + seq_len, device=hidden_states.device)
        rotary = self.rotary_emb(cache_position)
        attention_mask, num_keys = self._attention_mask(
            hidden_states, cache_position, past_key_values, attention_bias, output_attentions
        )
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(
                hidden_states, rotary, past_key_values, attention_mask, num_keys, output_attentions
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(self.norm(hidden_states)).float()  # [B, T' or logits_to_keep, V]

        loss = None
        if labels is not None:
            predicted = logits[:, : labels.shape[1]]
            loss = F.cross_entropy(predicted.transpose(1, 2), labels, reduction=loss_reduction)  # mean or [B, L]
        logits = logits + logit_mask(self.config, cache_position[-logits.shape[1] :])
        output = CausalLMOutputWithPast(loss, logits, past_key_values, all_hidden_states, all_attentions)
        return output if return_dict else output.to_tuple()

    def _attention_mask(self, hidden_states, cache_position, past_key_values, attention_bias, output_attentions):
        """(mask, num_keys) for "query i sees key j iff j <= its position", plus `attention_bias`:

        - no cache and no bias, SDPA without attention weights: (None, None), the kernel's own causal mask;
        - one new token on the CPU over a cache (a decoding step): (None, position + 1), the filled slots only and no
          mask (a static cache returns all its slots). Under torch.compile or on an accelerator, where the position
          must not be read on the host, the masked form below keeps the shapes static;
        - otherwise an additive mask [B or 1, 1, T, S] over the S keys (the T new ones without a cache, the cache's
          slots with one), finite: the dtype's minimum where the causal rule hides a key, else the bias (0 without).
        """
        seq_len, device, dtype = cache_position.shape[0], hidden_states.device, hidden_states.dtype
        if (past_key_values is None and attention_bias is None and not output_attentions
                and self.config._attn_implementation != "eager"):
            return None, None
        if past_key_values is not None and seq_len == 1 and device.type == "cpu" and not torch.compiler.is_compiling():
            return None, int(cache_position[0]) + 1
        if past_key_values is None:
            query_positions, num_keys = torch.arange(seq_len, device=device), seq_len
        else:
            query_positions, num_keys = cache_position, past_key_values.get_mask_sizes(seq_len, 0)[0]
        allowed = torch.arange(num_keys, device=device) <= query_positions[:, None]  # [T, S]
        if attention_bias is None:
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device)[None, None]
        else:  # [B, 1, T, T] in the dtype's finite range (-inf, or float32's min cast to half precision, is not)
            mask = attention_bias.to(dtype).clamp_min(torch.finfo(dtype).min)
        # hidden keys filled, not added: the minimum plus a bias of the minimum would overflow to -inf
        return mask.masked_fill(~allowed, torch.finfo(dtype).min), None


__all__ = ["PrologueForImageGeneration", "logit_mask"]
