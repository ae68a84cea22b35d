"""Class-conditional decoding for LlamaGen-style models, in gpt-fast's ladder: sample, prefill, decode_one_token,
generate. One static KV cache per call, the [cond; null] classifier-free-guidance batch built once, sampling noise
drawn from the caller's generators (never the global RNG) and no host sync inside the loop.

CFG follows LlamaGen: `uncond + (cond - uncond) * guidance_scale` on raw logits, then temperature, top-k (0 = off),
top-p (1.0 = off), then a categorical draw.
"""

import torch
from transformers import StaticCache

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


def exponential_noise(generator: Generators, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Exp(1) noise [B, V] on `device`; with a list of generators, row i comes from generator i alone. Noise drawn on
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
) -> torch.LongTensor:
    """Sample `block_size` image tokens per class label: class_labels [B] -> tokens [B, block_size] (row-major grid).

    Args:
        guidance_scale: CFG scale; 1.0 runs the conditional batch alone.
        cfg_interval: LlamaGen's cut-off: guidance applies to image tokens 0 .. cfg_interval + 1, then the
            conditional logits alone are used (the doubled batch still runs); -1 guides every token.
        do_sample: False takes the most likely token at each step (greedy), ignoring temperature, top-k and top-p.
        generator: one generator, or a list with one per label so that row i depends on generator i alone.
        callback: called as `callback(step, tokens)` after each token with tokens [B, step + 1]; it may return a
            replacement [B] for the token just sampled (the earlier ones are already in the KV cache).
        compile: run the per-token step under torch.compile (the first call compiles; same tokens as eager).
    """
    if isinstance(generator, list) and len(generator) != class_labels.shape[0]:
        raise ValueError(f"generator is a list of {len(generator)}, expected one per class label ({class_labels.shape[0]})")
    config, device = model.config, class_labels.device
    batch, vocab = class_labels.shape[0], config.vocab_size
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        class_labels = torch.cat([class_labels, torch.full_like(class_labels, config.null_class_id)])
    cache = StaticCache(config=config, max_cache_len=model.max_sequence_length)
    decode_step = compiled_decode_one_token(device) if compile else decode_one_token

    def next_token(logits, step):
        if use_cfg:
            logits = guide(logits, guidance_scale, apply=cfg_interval < 0 or step <= cfg_interval + 1)
        noise = exponential_noise(generator, (batch, vocab), device) if do_sample else None
        return sample(logits, temperature, top_k, top_p, noise)

    tokens = torch.empty(batch, config.block_size, dtype=torch.long, device=device)
    cache_position = torch.tensor([config.cls_token_num], device=device)
    for step in range(config.block_size):
        if step == 0:
            logits = prefill(model, class_labels, cache)
        else:
            current = tokens[:, step - 1]
            logits = decode_step(model, torch.cat([current, current]) if use_cfg else current, cache, cache_position)
            cache_position += 1
        tokens[:, step] = next_token(logits, step)
        if callback is not None and (replacement := callback(step, tokens[:, : step + 1])) is not None:
            tokens[:, step] = replacement
    return tokens
