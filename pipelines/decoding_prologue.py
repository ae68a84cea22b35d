"""Class-conditional decoding for Prologue models: `[prologue] [EOS] [visual]` token by token, with one static KV cache
per call, the [cond; null] batch for guidance, noise from the caller's generators only, and the model's logit mask
(applied by its forward) restricting each position to its kind of token.

Guidance follows the official sampler: `s * cond + (1 - s) * uncond` (the same as LlamaGen's form; s = 1 is no
guidance), then temperature, the mask, top-k, top-p, and a categorical draw. The scale `s` of step k (k = 0 .. L - 1
over the L = P + 1 + N sequence tokens) comes from `guidance_scale`:
- a number s: constant;
- (s, power): a cosine ramp over all steps, `1 + (s - 1) * (1 - cos(pi * (k / L) ** power)) / 2` (the paper's
  baselines, "oc");
- (s_prologue, s_visual, power): split CFG: s_prologue on the P prologue steps, then the cosine ramp from 1 to
  s_visual over the rest, with t = (k - P) / (L - P) (the paper's "sc"; the EOS step is the ramp's first).
`temperature` is a number or (prologue, visual) temperatures.
"""

import math

import torch
from transformers import StaticCache

from .sampling import DecodingControl, Generators, exponential_noise, guide, late_guidance_error, sample


def guidance_scale_at(guidance_scale, step: int, num_prologue: int, length: int) -> float:
    """The guidance scale of decoding step `step` of `length` (see the module docstring)."""
    if not isinstance(guidance_scale, (tuple, list)):
        return float(guidance_scale)

    def ramp(scale, t, power):
        return 1.0 + (scale - 1.0) * (1 - math.cos(t**power * math.pi)) * 0.5

    if len(guidance_scale) == 2:
        scale, power = guidance_scale
        return ramp(scale, step / length, power)
    prologue_scale, visual_scale, power = guidance_scale
    if step < num_prologue:
        return prologue_scale
    return ramp(visual_scale, (step - num_prologue) / (length - num_prologue), power)


def guidance_scales(guidance_scale, num_prologue: int, length: int) -> list[float]:
    """The guidance scale of each of the `length` decoding steps."""
    return [guidance_scale_at(guidance_scale, step, num_prologue, length) for step in range(length)]


@torch.no_grad()
def generate(
    model,
    class_labels: torch.LongTensor,
    guidance_scale: float | tuple = 1.0,
    temperature: float | tuple[float, float] = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    generator: Generators = None,
    callback=None,
    prologue_tokens: torch.LongTensor | None = None,
    control: DecodingControl | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """class_labels [B] -> (visual codes [B, N], prologue codes [B, P]).

    Args:
        do_sample: False takes the most likely allowed token at each step (greedy).
        callback: `callback(step, tokens)` after each decoded sequence token, tokens [B, step + 1] in the model's
            vocabulary; it may return them replaced (the earlier ones are already in the KV cache: only the last one
            steers the next steps).
        prologue_tokens: [B, P] prologue codes to keep: they and the EOS are prefilled in one forward and only the
            visual tokens are sampled (the official demo's "resample the details").
        control: read before each step: its `guidance_scale` (any form above) replaces `guidance_scale`, and its
            `interrupt` stops decoding, returning the visual [B, n] and prologue [B, p] codes so far.
    """
    config, device = model.config, class_labels.device
    batch, length, num_prologue = class_labels.shape[0], config.sequence_length, config.num_prologue_tokens
    control = DecodingControl(guidance_scale) if control is None else control
    temperatures = [temperature[0] if step < num_prologue else temperature[1] for step in range(length)] \
        if isinstance(temperature, (tuple, list)) else [temperature] * length
    use_cfg = any(scale != 1.0 for scale in guidance_scales(guidance_scale, num_prologue, length))
    labels = torch.cat([class_labels, torch.full_like(class_labels, config.null_class_id)]) if use_cfg else class_labels
    cache = StaticCache(config=config, max_cache_len=length)

    tokens = torch.empty(batch, length, dtype=torch.long, device=device)
    start = 0
    if prologue_tokens is not None:
        start = num_prologue + 1
        tokens[:, :num_prologue] = prologue_tokens.to(device) + config.prologue_offset
        tokens[:, num_prologue] = config.eos_token_id
    prefix = tokens[:, :start]
    logits = model(input_ids=torch.cat([prefix, prefix]) if use_cfg else prefix, class_labels=labels,
                   past_key_values=cache, cache_position=torch.arange(start + 1, device=device),
                   logits_to_keep=1).logits[:, -1]
    decoded = length  # sequence tokens decoded: fewer when interrupted
    for step in range(start, length):
        if control.interrupt:
            decoded = step
            break
        if step > start:
            current = tokens[:, step - 1 : step]
            logits = model(input_ids=torch.cat([current, current]) if use_cfg else current, past_key_values=cache,
                           cache_position=torch.tensor([step], device=device)).logits[:, -1]
        if config.has_eos and step == num_prologue:
            tokens[:, step] = config.eos_token_id  # the only token the mask allows here
        else:
            scale = guidance_scale_at(control.guidance_scale, step, num_prologue, length)
            if use_cfg:  # masked entries sit at the float32 minimum in both halves and stay there
                logits = guide(logits, scale)
            elif scale != 1.0:
                raise late_guidance_error(control.guidance_scale, unguided=1.0)
            noise = exponential_noise(generator, (batch, config.vocab_size), device) if do_sample else None
            tokens[:, step] = sample(logits, temperatures[step], top_k, top_p, noise)
        if callback is not None and (replacement := callback(step, tokens[:, : step + 1])) is not None:
            tokens[:, : step + 1] = replacement
    visual = tokens[:, num_prologue + int(config.has_eos) : decoded]
    return visual, tokens[:, : min(num_prologue, decoded)] - config.prologue_offset


class PrologueDecoding:
    """What STARPipeline calls to sample a Prologue model (see `LlamaGenDecoding` for the six methods)."""

    @staticmethod
    def check_arguments(transformer, vqvae, cfg_interval, compile_decoding, scales, more_smooth,
                        guidance_scale=None, temperature=None, prologue_tokens=None, batch_size=None) -> dict:
        """Validates Prologue's arguments: the guidance form, split temperatures and fixed prologue tokens."""
        config = transformer.config
        if scales is not None or more_smooth or cfg_interval != -1 or compile_decoding:
            raise ValueError("scales, more_smooth, cfg_interval and compile_decoding are options of other families; a "
                             "Prologue model takes guidance_scale, temperature and prologue_tokens")
        if isinstance(guidance_scale, (tuple, list)):
            arity = 3 if config.num_prologue_tokens else 2
            if len(guidance_scale) not in (2, arity) or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                for v in guidance_scale):
                raise ValueError(f"guidance_scale must be a number, (scale, power) or (prologue scale, visual scale, "
                                 f"power) of finite numbers, got {guidance_scale!r}")
            if guidance_scale[-1] <= 0 or min(guidance_scale[:-1]) < 0:
                raise ValueError(f"guidance_scale {tuple(guidance_scale)}: scales must be >= 0 and the power > 0")
        if isinstance(temperature, (tuple, list)) and (
                len(temperature) != 2 or not all(isinstance(t, (int, float)) and 0 < t < math.inf for t in temperature)):
            raise ValueError(f"temperature must be > 0 or (prologue, visual) temperatures > 0, got {temperature!r}")
        if prologue_tokens is None:
            return {}
        if not config.num_prologue_tokens:
            raise ValueError("prologue_tokens: this model has no prologue tokens (a 2D baseline)")
        prologue_tokens = torch.as_tensor(prologue_tokens)
        expected = (batch_size, config.num_prologue_tokens)
        if prologue_tokens.dtype not in (torch.int64, torch.int32) or tuple(prologue_tokens.shape) != expected:
            raise ValueError(f"prologue_tokens must be integer codes [{expected[0]} images, {expected[1]}], got "
                             f"{prologue_tokens.dtype} {tuple(prologue_tokens.shape)}")
        if prologue_tokens.min() < 0 or prologue_tokens.max() >= config.prologue_vocab_size:
            raise ValueError(f"prologue_tokens must lie in the prologue codebook [0, {config.prologue_vocab_size}), "
                             f"got values in [{int(prologue_tokens.min())}, {int(prologue_tokens.max())}]")
        return {"prologue_tokens": prologue_tokens.long()}

    @staticmethod
    def num_steps(transformer, prologue_tokens=None) -> int:
        config = transformer.config
        return config.sequence_length - (0 if prologue_tokens is None else config.num_prologue_tokens + 1)

    @staticmethod
    def generate_tokens(transformer, vqvae, class_labels, callback=None, **kwargs):
        """`generate` with the pipeline's conventions: (visual tokens [B, h, w], prologue tokens [B, P]); interrupted,
        the codes [B, n] and [B, p] so far. The callback counts the steps of this call (from the first visual token
        when the prologue is given)."""
        config = transformer.config
        start = 0 if kwargs.get("prologue_tokens") is None else config.num_prologue_tokens + 1

        def on_token(step, tokens):
            return callback(step - start, tokens)

        visual, prologue = generate(transformer, class_labels, callback=on_token if callback is not None else None,
                                    **kwargs)
        if visual.shape[1] == config.num_visual_tokens:
            visual = visual.view(-1, config.grid_size, config.grid_size)
        return visual, prologue

    @staticmethod
    def latents(tokens: torch.LongTensor) -> torch.LongTensor:
        """The tokens as diffusers' `latents` (callback inputs: the sequence tokens so far; output_type="latent": the
        visual tokens): as they are."""
        return tokens

    @staticmethod
    def tokens_from_latents(latents: torch.LongTensor, tokens: torch.LongTensor) -> torch.LongTensor:
        return latents

    @staticmethod
    def decode_tokens(vqvae, tokens: torch.LongTensor, prologue_tokens) -> torch.FloatTensor:
        return vqvae.decode(tokens)
