"""Sampling helpers every family's decoding uses: top-k / top-p filtering, Exp(1) noise drawn only from the caller's
generators (row i from generator i alone), the exponential race that turns it into a categorical draw without a host
sync, and LlamaGen's classifier-free-guidance combination."""

import torch

Generators = torch.Generator | list[torch.Generator] | None


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
    """Exp(1) noise of `shape` [B, ...] on `device`; with a list of generators, row i comes from generator i alone. Noise drawn on
    the CPU for a GPU goes through pinned memory with a non-blocking copy, so the decoding loop never waits on it."""
    generators = generator if isinstance(generator, list) else [generator]
    noise_device = generators[0].device if generators[0] is not None else device
    pin = noise_device.type == "cpu" and device.type == "cuda"
    if isinstance(generator, list):
        noise = torch.empty(shape, device=noise_device, pin_memory=pin)
        for row, g in zip(noise, generator):
            row.exponential_(generator=g)
    else:
        noise = torch.empty(shape, device=noise_device, pin_memory=pin).exponential_(generator=generator)
    return noise.to(device, non_blocking=True)


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, noise: torch.Tensor | None = None
) -> torch.LongTensor:
    """logits [B, V] -> tokens [B]. With Exp(1) `noise`, argmax(p / noise) is a categorical draw from p (the
    exponential race); without it, the most likely token."""
    if noise is None:
        return logits.argmax(-1)
    probs = filter_logits(logits / max(temperature, 1e-5), top_k, top_p).softmax(-1)
    return (probs / noise).argmax(-1)


def guide(logits: torch.Tensor, guidance_scale: float, apply: bool = True) -> torch.Tensor:
    """[2B, V] logits of the [cond; uncond] batch -> [B, V]; without `apply`, the conditional half."""
    cond, uncond = logits.chunk(2)
    return uncond + (cond - uncond) * guidance_scale if apply else cond
