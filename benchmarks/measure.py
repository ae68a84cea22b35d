"""Timing and machine limits shared by the benchmarks: best-of-n wall time, matmul peak, read bandwidth, the matmul
FLOPs of a LlamaGen forward and the floor of a cached decoding step."""

import time

import torch


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats=3, warmup=1) -> float:
    """Best wall time of `repeats` calls after `warmup` calls, with device syncs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best(rows, repeats: int, warmed_up: set) -> dict[str, float]:
    """Best wall time of each (label, fn) row over `repeats` rounds, the rows interleaved so that a slow phase of a
    shared machine hits them all; a row's first call in the run (labels kept in `warmed_up`) warms it up (the
    allocator, and compilation where asked)."""
    for label, run in rows:
        if label not in warmed_up:
            run()
            warmed_up.add(label)
    best = {label: float("inf") for label, _ in rows}
    for _ in range(repeats):
        for label, run in rows:
            best[label] = min(best[label], timed(run, repeats=1, warmup=0))
    return best


def matmul_peak_flops(dtype, device="cpu", n=2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / timed(lambda: a @ b, repeats=5)


def memory_bandwidth(device="cpu", num_bytes=1 << 30) -> float:
    """Bytes per second of one read-only pass (a sum) over `num_bytes`. The steps these benchmarks bound read their
    weights and caches and write next to nothing, so a read, not a copy, is the rate their floor is held to (on the
    2-core CPU a copy counted as read + write measures 12-18% less)."""
    source = torch.ones(num_bytes // 4, device=device)
    return num_bytes / timed(lambda: source.sum(), repeats=5)


def decoding_step_floor(model, rows: int, keys: float, peak: float, bandwidth: float) -> float:
    """Seconds of one cached step of a token-wise model over `rows` sequences with `keys` filled cache slots:
    max(bytes read / bandwidth, matmul FLOPs / peak). The bytes are every weight but the embedding tables (a step
    reads one row of each) and the keys and values of the filled slots of every layer."""
    config = model.config
    embedding_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                          if isinstance(m, torch.nn.Embedding))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - embedding_bytes
    element_size = next(model.parameters()).element_size()
    cache_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element_size
    step_bytes = weight_bytes + rows * keys * cache_bytes
    return max(step_bytes / bandwidth, rows * forward_flops_per_token(config, keys) / peak)


def forward_flops_per_token(config, context: float) -> float:
    """Matmul FLOPs per token: projections, MLP, head, and attention scores/values over `context` keys."""
    hidden, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    per_layer = 2 * hidden * (hidden + 2 * kv) + 2 * hidden * hidden + 3 * 2 * hidden * config.intermediate_size
    per_layer += 2 * 2 * context * hidden
    return config.num_hidden_layers * per_layer + 2 * hidden * config.vocab_size
