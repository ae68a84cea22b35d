"""Sampling helpers every family's decoding uses: top-k / top-p filtering, Exp(1) noise drawn only from the caller's
generators (row i from generator i alone), the exponential race that turns it into a categorical draw without a host
sync, LlamaGen's classifier-free-guidance combination, and what a caller may change between decoding steps."""

from dataclasses import dataclass

import torch

Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class DecodingControl:
    """What the decoding loops read before each step: the guidance scale and whether to stop. STARPipeline passes
    itself instead, so that a `callback_on_step_end` setting `pipe._guidance_scale` or `pipe._interrupt` steers the
    following steps (diffusers' dynamic guidance and interrupt)."""

    guidance_scale: float | tuple = 1.0
    interrupt: bool = False


def late_guidance_error(guidance_scale, unguided: float) -> ValueError:
    """The error for guidance switched on by a callback in a call that started without it (at `unguided`): no
    null-class batch was built, so there is nothing to guide with."""
    return ValueError(f"guidance_scale was set to {guidance_scale!r} during decoding, but the call started without "
                      f"guidance ({unguided}), so it has no unconditional batch: start the call with guidance on")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """[B, V] -> [B, V] with -inf outside the top-k tokens and outside the smallest set whose probability reaches
    top_p (the token crossing the threshold is kept)."""
    if top_k > 0:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative > top_p
        drop_sorted[:, 1:] = drop_sorted[:, :-1].clone()  # shift right: keep the token that crosses top_p
        drop_sorted[:, 0] = False
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return logits


def exponential_noise(generator: Generators, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Exp(1) noise of `shape` [B, ...] on `device`, as -log(U) of uniforms (on the CPU 4-5x faster than
    `exponential_`, whose MKL path costs 3 ms per step of a batch of 8 LlamaGen rows); U = 0 is raised to the smallest
    normal float, so the noise is finite and positive and no token is excluded or forced. With a list of generators,
    row i comes from generator i alone. Noise drawn on the CPU for a GPU goes through pinned memory with a
    non-blocking copy, so the decoding loop never waits on it."""
    generators = generator if isinstance(generator, list) else [generator]
    noise_device = generators[0].device if generators[0] is not None else device
    pin = noise_device.type == "cpu" and device.type == "cuda"
    if isinstance(generator, list):
        uniform = torch.empty(shape, device=noise_device, pin_memory=pin)
        for row, g in zip(uniform, generator):
            row.uniform_(generator=g)
    else:
        uniform = torch.empty(shape, device=noise_device, pin_memory=pin).uniform_(generator=generator)
    noise = uniform.clamp_(min=torch.finfo(uniform.dtype).tiny).log_().neg_()
    return noise.to(device, non_blocking=True)


def refuse_nan(values: torch.Tensor) -> None:
    """Stops sampling from NaN logits or probabilities (broken weights, overflow), which would otherwise pick code 0
    everywhere: a `ValueError` on the CPU, an asynchronous device assert elsewhere (no host sync in the loop)."""
    has_nan = torch.isnan(values).any()
    if values.device.type != "cpu":
        torch._assert_async(~has_nan, "the model produced NaN logits")
    elif has_nan:
        raise ValueError("the model produced NaN logits (broken or overflowing weights?): no token can be sampled")


def race(logits: torch.Tensor, noise: torch.Tensor) -> torch.LongTensor:
    """Filtered logits [N, V] and Exp(1) noise [N, V] -> tokens [N]: argmax(p / noise) is a categorical draw from
    p = softmax(logits) (the exponential race)."""
    probs = logits.softmax(-1)
    refuse_nan(probs)
    return (probs / noise).argmax(-1)


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, noise: torch.Tensor | None = None
) -> torch.LongTensor:
    """logits [B, V] -> tokens [B]: a draw with Exp(1) `noise` (`race`), the most likely token without it."""
    if noise is None:
        refuse_nan(logits)
        return logits.argmax(-1)
    return race(filter_logits(logits / max(temperature, 1e-5), top_k, top_p), noise)


def guide(logits: torch.Tensor, guidance_scale: float, apply: bool = True) -> torch.Tensor:
    """[2B, V] logits of the [cond; uncond] batch -> [B, V]; without `apply`, the conditional half."""
    cond, uncond = logits.chunk(2)
    return uncond + (cond - uncond) * guidance_scale if apply else cond
