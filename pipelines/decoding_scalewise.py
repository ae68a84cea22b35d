"""Scale-by-scale decoding for VAR and FlexVAR: each step samples a whole token map from one forward of the
[cond; null] classifier-free-guidance batch over the new scale, the earlier scales read from a KV cache. Sampling noise
comes from the caller's generators only (image i from generator i alone).

Classifier-free guidance is VAR's ramp: at scale k the logits are `(1 + t) * cond - t * uncond` (LlamaGen's
`uncond + (cond - uncond) * (1 + t)`) with `t = guidance_scale * k / (K - 1)` for VAR, and
`t = guidance_scale * k / min(K - 1, 9)`, or `guidance_scale` on sides beyond the trained ones, for FlexVAR.
`guidance_scale` is the originals' `cfg`: 0 disables guidance.
"""

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .sampling import DecodingControl, Generators, exponential_noise, filter_logits, late_guidance_error, race

# FlexVAR samples these sides with the caller's top-k and every other side greedily (top-k 1)
FLEXVAR_TOP_K_SIDES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32)


def guidance_ratio(model_type: str, scale_index: int, scales: list[int], trained_side: int) -> float:
    """The fraction of `guidance_scale` applied at scale `scale_index` (VAR's and FlexVAR's ramps)."""
    if model_type == "flexvar":
        if scales[scale_index] > trained_side:
            return 1.0
        return scale_index / min(len(scales) - 1, 9)
    return scale_index / (len(scales) - 1)


def scale_top_k(model_type: str, side: int, top_k: int, trained_side: int) -> int:
    """FlexVAR's rule: sides it was not trained on, or beyond its largest, are taken greedily."""
    if model_type == "flexvar" and (side > trained_side or side not in FLEXVAR_TOP_K_SIDES):
        return 1
    return top_k


def smooth_code_vectors(logits: torch.Tensor, ratio: float, noise: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """VAR's `more_smooth`: a soft code vector per position from a Gumbel softmax of the sharpened (filtered) logits
    [N, V] with temperature max(0.27 (1 - 0.95 ratio), 0.005); `noise` is Exp(1), so -log(noise) is Gumbel."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    return ((logits * (1 + ratio) - noise.log()) / tau).softmax(-1) @ codebook  # [N, C]


@torch.no_grad()
def generate(
    transformer,
    vqvae,
    class_labels: torch.LongTensor,
    scales: list[int],
    guidance_scale: float = 1.5,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    more_smooth: bool = False,
    generator: Generators = None,
    callback=None,
    control: DecodingControl | None = None,
) -> tuple[list[torch.LongTensor], torch.Tensor | None]:
    """Sample one token map per scale: class_labels [B] -> (maps [B, s_k, s_k] for every side s_k of `scales`, and
    VAR's accumulated latent f_hat [B, C, s, s] to decode, or None for FlexVAR, whose last map decodes on its own).

    Args:
        transformer / vqvae: a `VARForImageGeneration` with its `VARVQVAE`, or a `FlexVARForImageGeneration` with its
            (LlamaGen) VQ tokenizer.
        guidance_scale: the originals' `cfg` (see the module docstring); 0 runs the conditional batch alone.
        temperature, top_k, top_p: applied to the guided logits; top_k 0 and top_p 1.0 are off.
        more_smooth: VAR's Gumbel-softmax smoothing of the code vectors fed forward (for visualisation; VAR only).
        generator: one generator, or a list with one per label so that image i depends on generator i alone.
        callback: called as `callback(scale_index, maps)` after each scale with the maps so far; it may return them
            replaced (the earlier maps are already in the KV cache and VAR's latent: only the last one steers the
            next scales).
        control: read before each scale: its `guidance_scale` replaces `guidance_scale`, and its `interrupt` stops
            decoding, returning the maps so far (and VAR's latent so far).
    """
    config, device = transformer.config, class_labels.device
    model_type, trained_side = config.model_type, config.patch_nums[-1]
    batch, vocab = class_labels.shape[0], config.vocab_size
    control = DecodingControl(guidance_scale) if control is None else control
    use_cfg = guidance_scale != 0
    if use_cfg:
        class_labels = torch.cat([class_labels, torch.full_like(class_labels, config.null_class_id)])
    conditioning = transformer.condition(class_labels)  # the AdaLN modulations, the same at every scale
    cache = DynamicCache()
    maps, f_hat, inputs = [], None, None
    for k, side in enumerate(scales):
        if control.interrupt:
            break
        logits = transformer(class_labels=class_labels, scale_inputs=inputs, scales=scales, past_key_values=cache,
                             conditioning=conditioning).logits  # [B', s^2, V]
        ratio = guidance_ratio(model_type, k, scales, trained_side)
        if use_cfg:
            t = control.guidance_scale * ratio
            cond, uncond = logits.chunk(2)  # [B, s^2, V] each
            logits = (1 + t) * cond - t * uncond  # VAR's arithmetic, kept for token parity
        elif control.guidance_scale != 0:
            raise late_guidance_error(control.guidance_scale, unguided=0)
        logits = filter_logits(logits.flatten(0, 1) / max(temperature, 1e-5),
                               scale_top_k(model_type, side, top_k, trained_side), top_p)  # [B s^2, V]
        noise = exponential_noise(generator, (batch, side * side, vocab), device).flatten(0, 1)
        maps.append(race(logits, noise).view(batch, side, side))
        if callback is not None and (replaced := callback(k, maps)) is not None:
            maps = list(replaced)
        if more_smooth:
            smooth_noise = exponential_noise(generator, (batch, side * side, vocab), device).flatten(0, 1)
            codebook = vqvae.quantize.embedding.weight
            vectors = smooth_code_vectors(logits, ratio, smooth_noise, codebook).view(batch, side, side, -1)
            vectors = vectors.permute(0, 3, 1, 2)
        else:
            vectors = vqvae.code_vectors(maps[-1])  # [B, C, s, s]
        if model_type == "var":
            f_hat, inputs = vqvae.next_scale_input(f_hat, vectors, k, scales)
        elif k + 1 < len(scales):  # FlexVAR: the next scale's input is this map's code vectors, upsampled
            inputs = F.interpolate(vectors, size=(scales[k + 1],) * 2, mode="bicubic").flatten(2).transpose(1, 2)
        if inputs is not None and use_cfg:
            inputs = inputs.repeat(2, 1, 1)
    return maps, f_hat


class ScaleWiseDecoding:
    """What STARPipeline calls to sample a scale-wise (VAR, FlexVAR) model: the same six methods as
    `LlamaGenDecoding`."""

    @staticmethod
    def check_arguments(transformer, vqvae, cfg_interval, compile_decoding, scales, more_smooth) -> dict:
        """Validates the pipeline's family-specific arguments; returns the options for `generate_tokens` (the schedule,
        VAR's smoothing)."""
        config = transformer.config
        if cfg_interval != -1:
            raise ValueError(f"cfg_interval is LlamaGen's option; scale-wise models ramp guidance over the scales, got {cfg_interval!r}")
        if compile_decoding:
            raise ValueError("compile_decoding compiles LlamaGen's per-token step; scale-wise decoding has no such step")
        if more_smooth and config.model_type != "var":
            raise ValueError("more_smooth is an option of VAR's sampler; FlexVAR's has none")
        if scales is None:
            scales = list(config.patch_nums)
        if (not isinstance(scales, (list, tuple)) or len(scales) < 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales)):
            raise ValueError(f"scales must be a list of at least two positive ints (token map sides), got {scales!r}")
        scales = list(scales)
        if scales[0] != 1 or any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must increase strictly from 1, got {scales}")
        if config.model_type == "var" and scales != list(config.patch_nums):
            raise ValueError(f"scales: VAR samples its trained schedule {config.patch_nums} only (its position embeddings "
                             f"are learned per scale), got {scales}; FlexVAR samples any schedule")
        if config.model_type == "flexvar" and scales[-1] > config.position_grid_size:
            raise ValueError(f"scales: FlexVAR's position grid is {config.position_grid_size}x{config.position_grid_size}, "
                             f"so the last side can be at most {config.position_grid_size}, got {scales[-1]}")
        return {"scales": scales, "more_smooth": bool(more_smooth)}

    @staticmethod
    def num_steps(transformer, scales, more_smooth) -> int:
        return len(scales)

    generate_tokens = staticmethod(generate)

    @staticmethod
    def latents(maps: list[torch.LongTensor]) -> torch.LongTensor:
        """The maps as diffusers' `latents` (callback inputs, output_type="latent"): one token sequence
        [B, sum of s_k^2], each map in raster order, coarsest first (the order VAR's transformer reads them in)."""
        return torch.cat([m.flatten(1) for m in maps], dim=1)

    @staticmethod
    def tokens_from_latents(latents: torch.LongTensor, maps: list[torch.LongTensor]) -> list[torch.LongTensor]:
        """A token sequence [B, sum of s_k^2] -> maps of the shapes of `maps`."""
        sizes = [m[0].numel() for m in maps]
        return [part.view(-1, *m.shape[1:]) for part, m in zip(latents.split(sizes, dim=1), maps)]

    @staticmethod
    def decode_tokens(vqvae, maps: list[torch.LongTensor], f_hat: torch.Tensor | None) -> torch.FloatTensor:
        """VAR decodes its accumulated latent; a FlexVAR map decodes on its own, so the last one is the image."""
        return vqvae.decode_latents(f_hat) if f_hat is not None else vqvae.decode(maps[-1])
