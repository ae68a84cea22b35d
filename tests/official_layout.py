"""State dicts with the key names and shapes of LlamaGen's official checkpoints, written from the published
architecture facts (no original code). Their key counts are checked against the originals' (88 for GPT-B, 344 for
VQ-16 including `quantize.codebook_used`)."""

import torch


def llamagen_gpt_shapes(num_layers, hidden, heads, vocab=16384, num_classes=1000, ffn=None, kv_heads=None):
    kv_heads = kv_heads or heads
    head_dim = hidden // heads
    ffn = ffn or -(-int(8 * hidden / 3) // 256) * 256
    shapes = {"cls_embedding.embedding_table.weight": (num_classes + 1, hidden), "tok_embeddings.weight": (vocab, hidden)}
    for i in range(num_layers):
        shapes |= {
            f"layers.{i}.attention.wqkv.weight": ((heads + 2 * kv_heads) * head_dim, hidden),
            f"layers.{i}.attention.wo.weight": (hidden, hidden),
            f"layers.{i}.feed_forward.w1.weight": (ffn, hidden),
            f"layers.{i}.feed_forward.w3.weight": (ffn, hidden),
            f"layers.{i}.feed_forward.w2.weight": (hidden, ffn),
            f"layers.{i}.attention_norm.weight": (hidden,),
            f"layers.{i}.ffn_norm.weight": (hidden,),
        }
    return shapes | {"norm.weight": (hidden,), "output.weight": (vocab, hidden)}


def _resnet(prefix, cin, cout):
    shapes = {
        f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
        f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
        f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
        f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,),
    }
    if cin != cout:
        shapes |= {f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)}
    return shapes


def _attn(prefix, c):
    shapes = {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        shapes |= {f"{prefix}.{name}.weight": (c, c, 1, 1), f"{prefix}.{name}.bias": (c,)}
    return shapes


def _conv(prefix, cout, cin, k):
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _mid(prefix, c):
    return _resnet(f"{prefix}.mid.0", c, c) | _attn(f"{prefix}.mid.1", c) | _resnet(f"{prefix}.mid.2", c, c)


def llamagen_vq_shapes(ch_mult=(1, 1, 2, 2, 4), ch=128, num_res_blocks=2, z=256, codebook=(16384, 8)):
    levels = len(ch_mult)
    shapes = _conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, mult in enumerate(ch_mult):  # encoder, highest resolution first
        cout = ch * mult
        for j in range(num_res_blocks):
            shapes |= _resnet(f"encoder.conv_blocks.{i}.res.{j}", cin, cout)
            cin = cout
            if i == levels - 1:
                shapes |= _attn(f"encoder.conv_blocks.{i}.attn.{j}", cout)
        if i != levels - 1:
            shapes |= _conv(f"encoder.conv_blocks.{i}.downsample.conv", cout, cout, 3)
    shapes |= _mid("encoder", cin) | {"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,)}
    shapes |= _conv("encoder.conv_out", z, cin, 3)
    shapes |= _conv("decoder.conv_in", cin, z, 3) | _mid("decoder", cin)
    for i, mult in enumerate(reversed(ch_mult)):  # decoder, stored lowest resolution first
        cout = ch * mult
        for j in range(num_res_blocks + 1):
            shapes |= _resnet(f"decoder.conv_blocks.{i}.res.{j}", cin, cout)
            cin = cout
            if i == 0:
                shapes |= _attn(f"decoder.conv_blocks.{i}.attn.{j}", cout)
        if i != levels - 1:
            shapes |= _conv(f"decoder.conv_blocks.{i}.upsample.conv", cout, cout, 3)
    shapes |= {"decoder.norm_out.weight": (cin,), "decoder.norm_out.bias": (cin,)} | _conv("decoder.conv_out", 3, cin, 3)
    shapes |= _conv("quant_conv", codebook[1], z, 1) | _conv("post_quant_conv", z, codebook[1], 1)
    return shapes | {"quantize.embedding.weight": codebook, "quantize.codebook_used": (65536,)}


def random_state_dict(shapes, seed=0, std=0.02):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_out.weight")):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("codebook_used"):
            state[key] = torch.zeros(shape)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            scale = std if key.endswith(("embedding_table.weight", "tok_embeddings.weight", "embedding.weight")) else fan_in**-0.5
            state[key] = scale * torch.randn(shape, generator=generator)
    return state
