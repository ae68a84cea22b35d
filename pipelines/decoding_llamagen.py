"""Class-conditional decoding for LlamaGen-style models, in gpt-fast's ladder: sample, prefill, decode_one_token,
generate. One static KV cache per call, the [cond; null] classifier-free-guidance batch built once, sampling noise
drawn from the caller's generators (never the global RNG) and no host sync inside the loop.

CFG follows LlamaGen: `uncond + (cond - uncond) * guidance_scale` on raw logits, then temperature, top-k (0 = off),
top-p (1.0 = off), then a categorical draw.
"""

import torch
from transformers import StaticCache

from .sampling import DecodingControl, Generators, exponential_noise, guide, late_guidance_error, sample


def prefill(model, class_labels: torch.LongTensor, cache: StaticCache) -> torch.Tensor:
    """Class token(s) of the (doubled) batch through the model; logits [B', V] of image token 0."""
    cache_position = torch.arange(model.config.cls_token_num, device=class_labels.device)
    return model(class_labels=class_labels, past_key_values=cache, cache_position=cache_position).logits[:, -1]


def decode_one_token(model, tokens: torch.LongTensor, cache: StaticCache, cache_position: torch.LongTensor) -> torch.Tensor:
    """tokens [B'] at sequence position `cache_position` [1] -> logits [B', V] of the next token."""
    return model(input_ids=tokens[:, None], past_key_values=cache, cache_position=cache_position).logits[:, -1]


_compiled_decode_steps = {}


def compiled_decode_one_token(device: torch.device):
    """`decode_one_token` under torch.compile (fullgraph; CUDA graphs on GPU), compiled once per device type."""
    if device.type not in _compiled_decode_steps:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _compiled_decode_steps[device.type] = torch.compile(decode_one_token, mode=mode, fullgraph=True, dynamic=False)
    return _compiled_decode_steps[device.type]


@torch.no_grad()
def generate(
    model,
    class_labels: torch.LongTensor,
    guidance_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    generator: Generators = None,
    callback=None,
    compile: bool = False,
    control: DecodingControl | None = None,
) -> torch.LongTensor:
    """Sample `block_size` image tokens per class label: class_labels [B] -> tokens [B, block_size] (row-major grid).

    Args:
        guidance_scale: CFG scale; 1.0 runs the conditional batch alone.
        cfg_interval: LlamaGen's cut-off: guidance applies to image tokens 0 .. cfg_interval + 1, then the
            conditional logits alone are used (the doubled batch still runs); -1 guides every token.
        do_sample: False takes the most likely token at each step (greedy), ignoring temperature, top-k and top-p.
        generator: one generator, or a list with one per label so that row i depends on generator i alone.
        callback: called as `callback(step, tokens)` after each token with tokens [B, step + 1]; it may return them
            replaced (the earlier tokens are already in the KV cache: only the last one steers the next steps).
        compile: run the per-token step under torch.compile (the first call compiles; same tokens as eager).
        control: read before each step: its `guidance_scale` replaces `guidance_scale` (1.0 then uses the
            conditional logits alone), and its `interrupt` stops decoding, returning the tokens [B, n] so far.
    """
    if isinstance(generator, list) and len(generator) != class_labels.shape[0]:
        raise ValueError(f"generator is a list of {len(generator)}, expected one per class label ({class_labels.shape[0]})")
    config, device = model.config, class_labels.device
    batch, vocab = class_labels.shape[0], config.vocab_size
    control = DecodingControl(guidance_scale) if control is None else control
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        class_labels = torch.cat([class_labels, torch.full_like(class_labels, config.null_class_id)])
    cache = StaticCache(config=config, max_cache_len=model.max_sequence_length)
    decode_step = compiled_decode_one_token(device) if compile else decode_one_token

    def next_token(logits, step):
        scale = control.guidance_scale
        if use_cfg:
            logits = guide(logits, scale, apply=scale != 1.0 and (cfg_interval < 0 or step <= cfg_interval + 1))
        elif scale != 1.0:
            raise late_guidance_error(scale, unguided=1.0)
        noise = exponential_noise(generator, (batch, vocab), device) if do_sample else None
        return sample(logits, temperature, top_k, top_p, noise)

    tokens = torch.empty(batch, config.block_size, dtype=torch.long, device=device)
    cache_position = torch.tensor([config.cls_token_num], device=device)
    for step in range(config.block_size):
        if control.interrupt:
            return tokens[:, :step]
        if step == 0:
            logits = prefill(model, class_labels, cache)
        else:
            current = tokens[:, step - 1]
            logits = decode_step(model, torch.cat([current, current]) if use_cfg else current, cache, cache_position)
            cache_position += 1
        tokens[:, step] = next_token(logits, step)
        if callback is not None and (replacement := callback(step, tokens[:, : step + 1])) is not None:
            tokens[:, : step + 1] = replacement
    return tokens


class LlamaGenDecoding:
    """What STARPipeline calls to sample a token-wise (LlamaGen) model; every family's decoding module has one such
    class with these six methods."""

    @staticmethod
    def check_arguments(transformer, vqvae, cfg_interval, compile_decoding, scales, more_smooth) -> dict:
        """Validates the pipeline's family-specific arguments; returns the options for `generate_tokens`."""
        if scales is not None:
            raise ValueError(f"scales: a LlamaGen model decodes token by token and has no scale schedule, got {scales!r}")
        if more_smooth:
            raise ValueError("more_smooth is an option of VAR's sampler; LlamaGen has none")
        if isinstance(cfg_interval, bool) or not isinstance(cfg_interval, int) or cfg_interval < -1:
            raise ValueError(f"cfg_interval must be an int >= -1 (-1 guides every token), got {cfg_interval!r}")
        return {"cfg_interval": cfg_interval, "compile": bool(compile_decoding)}

    @staticmethod
    def num_steps(transformer, **options) -> int:
        return transformer.config.block_size

    @staticmethod
    def generate_tokens(transformer, vqvae, class_labels, **kwargs) -> tuple[torch.LongTensor, None]:
        """`generate` with the pipeline's conventions: tokens [B, h, w] (interrupted: the tokens [B, n] so far)."""
        config = transformer.config
        tokens = generate(transformer, class_labels, **kwargs)
        return (tokens.view(-1, config.grid_size, config.grid_size) if tokens.shape[1] == config.block_size else tokens,
                None)

    @staticmethod
    def latents(tokens: torch.LongTensor) -> torch.LongTensor:
        """The tokens as diffusers' `latents` (callback inputs, output_type="latent"): as they are."""
        return tokens

    @staticmethod
    def tokens_from_latents(latents: torch.LongTensor, tokens: torch.LongTensor) -> torch.LongTensor:
        return latents

    @staticmethod
    def decode_tokens(vqvae, tokens: torch.LongTensor, latents: None) -> torch.FloatTensor:
        return vqvae.decode(tokens)
