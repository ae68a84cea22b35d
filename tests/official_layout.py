"""State dicts with the key names and shapes of the official checkpoints, written from the published architecture facts
(no original code). Their key counts are checked against the originals' state dicts: 88 for LlamaGen GPT-B, 344 for
VQ-16 including `quantize.codebook_used` (also FlexVAR's FlexVAE.pth), 324 for VAR's vae_ch160v4096z32.pth, 220 for
var_d16.pth and 218 for FlexVARd16 (buffers included); Prologue's key sets equal the originals' (see the functions)."""

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
        elif key.endswith(("codebook_used", "zero_k_bias", "ema_vocab_hit_SV", "attn_bias_for_masking", "pos_select_mask")):
            state[key] = torch.zeros(shape)
        elif key == "uncond_ar_labels":
            state[key] = torch.nn.functional.one_hot(torch.tensor([shape[1] - 1]), shape[1]).float()
        elif key.endswith("lvl_1L"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            scale = std if key.endswith(("embedding_table.weight", "tok_embeddings.weight", "embedding.weight")) else fan_in**-0.5
            state[key] = scale * torch.randn(shape, generator=generator)
    return state


def var_shapes(depth, hidden=None, heads=None, vocab=4096, cvae=32, num_classes=1000, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
               shared_adaln=False, flexvar=False, grid=32, mlp_ratio=4):
    """var_d{depth}.pth (`flexvar`: FlexVARd{depth}-epo*.pth), with the buffers the originals save."""
    hidden, heads = hidden or 64 * depth, heads or depth
    num_tokens = sum(side * side for side in patch_nums)
    shapes = {"pos_start": (1, 1, hidden)}
    shapes |= {"pos_1LC": (1, hidden, grid, grid)} if flexvar else {"pos_1LC": (1, num_tokens, hidden), "lvl_1L": (1, num_tokens)}
    shapes |= {"attn_bias_for_masking": (1, 1, num_tokens, num_tokens), "word_embed.weight": (hidden, cvae),
               "word_embed.bias": (hidden,), "class_emb.weight": (num_classes + 1, hidden)}
    if not flexvar:
        shapes["lvl_embed.weight"] = (len(patch_nums), hidden)
    if shared_adaln:
        shapes |= {"shared_ada_lin.1.weight": (6 * hidden, hidden), "shared_ada_lin.1.bias": (6 * hidden,)}
    for i in range(depth):
        block = f"blocks.{i}"
        if shared_adaln:
            shapes[f"{block}.ada_gss"] = (1, 1, 6, hidden)
        shapes |= {
            f"{block}.attn.scale_mul_1H11": (1, heads, 1, 1), f"{block}.attn.q_bias": (hidden,),
            f"{block}.attn.v_bias": (hidden,), f"{block}.attn.zero_k_bias": (hidden,),
            f"{block}.attn.mat_qkv.weight": (3 * hidden, hidden), f"{block}.attn.proj.weight": (hidden, hidden),
            f"{block}.attn.proj.bias": (hidden,), f"{block}.ffn.fc1.weight": (mlp_ratio * hidden, hidden),
            f"{block}.ffn.fc1.bias": (mlp_ratio * hidden,), f"{block}.ffn.fc2.weight": (hidden, mlp_ratio * hidden),
            f"{block}.ffn.fc2.bias": (hidden,),
        }
        if not shared_adaln:
            shapes |= {f"{block}.ada_lin.1.weight": (6 * hidden, hidden), f"{block}.ada_lin.1.bias": (6 * hidden,)}
    return shapes | {"head_nm.ada_lin.1.weight": (2 * hidden, hidden), "head_nm.ada_lin.1.bias": (2 * hidden,),
                     "head.weight": (vocab, hidden), "head.bias": (vocab,)}


def _var_attn(prefix, c):
    return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,), f"{prefix}.qkv.weight": (3 * c, c, 1, 1),
            f"{prefix}.qkv.bias": (3 * c,), f"{prefix}.proj_out.weight": (c, c, 1, 1), f"{prefix}.proj_out.bias": (c,)}


def var_vqvae_shapes(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, cvae=32, vocab=4096, num_phi=4, num_scales=10):
    """vae_ch160v4096z32.pth: taming's encoder/decoder (`up[i]` indexed by resolution, finest first), 3x3 quant convs,
    the codebook and the partially shared phi convs."""
    levels = len(ch_mult)
    shapes = _conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, mult in enumerate(ch_mult):
        cout = ch * mult
        for j in range(num_res_blocks):
            shapes |= _resnet(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
            if i == levels - 1:
                shapes |= _var_attn(f"encoder.down.{i}.attn.{j}", cout)
        if i != levels - 1:
            shapes |= _conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    mid = lambda prefix, c: (_resnet(f"{prefix}.mid.block_1", c, c) | _var_attn(f"{prefix}.mid.attn_1", c)  # noqa: E731
                             | _resnet(f"{prefix}.mid.block_2", c, c))
    shapes |= mid("encoder", cin) | {"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,)}
    shapes |= _conv("encoder.conv_out", cvae, cin, 3) | _conv("decoder.conv_in", cin, cvae, 3) | mid("decoder", cin)
    for i in reversed(range(levels)):
        cout = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            shapes |= _resnet(f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
            if i == levels - 1:
                shapes |= _var_attn(f"decoder.up.{i}.attn.{j}", cout)
        if i != 0:
            shapes |= _conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    shapes |= {"decoder.norm_out.weight": (cin,), "decoder.norm_out.bias": (cin,)} | _conv("decoder.conv_out", 3, cin, 3)
    shapes |= {"quantize.ema_vocab_hit_SV": (num_scales, vocab)}
    for k in range(num_phi):
        shapes |= _conv(f"quantize.quant_resi.qresi_ls.{k}", cvae, cvae, 3)
    shapes |= {"quantize.embedding.weight": (vocab, cvae)}
    return shapes | _conv("quant_conv", cvae, cvae, 3) | _conv("post_quant_conv", cvae, cvae, 3)


def _prologue_stack(prefix, layers, dim, head_dim, ffn, bias, cond_dim=32, num_classes=1001):
    """One official Prologue `Transformer`: class-conditioned norms and gates (`cond_proj` of a one-hot), QK-norm,
    fused k/v, GEGLU `fc1` of twice the width."""
    shapes = {f"{prefix}.cond_proj.0.weight": (cond_dim, num_classes), f"{prefix}.cond_proj.0.bias": (cond_dim,),
              f"{prefix}.cond_proj.1.weight": (cond_dim,)}
    for i in range(layers):
        p = f"{prefix}.layers.{i}"
        shapes |= {
            f"{p}.adaln_1.affine.weight": (dim, cond_dim), f"{p}.adaln_1.affine.bias": (dim,),
            f"{p}.attn1.q_norm.weight": (head_dim,), f"{p}.attn1.k_norm.weight": (head_dim,),
            f"{p}.attn1.to_q.weight": (dim, dim), f"{p}.attn1.to_kv.weight": (2 * dim, dim),
            f"{p}.attn1.proj.weight": (dim, dim), f"{p}.gate1.weight": (dim, cond_dim),
            f"{p}.adaln_mlp.affine.weight": (dim, cond_dim), f"{p}.adaln_mlp.affine.bias": (dim,),
            f"{p}.ffn.fc1.weight": (2 * ffn, dim), f"{p}.ffn.fc2.weight": (dim, ffn), f"{p}.gate_mlp.weight": (dim, cond_dim),
        }
        if bias:
            shapes |= {f"{p}.attn1.proj.bias": (dim,), f"{p}.gate1.bias": (dim,), f"{p}.ffn.fc1.bias": (2 * ffn,),
                       f"{p}.ffn.fc2.bias": (dim,), f"{p}.gate_mlp.bias": (dim,)}
    return shapes


def prologue_tokenizer_shapes(dim=768, layers=12, dec_dim=768, dec_layers=12, head_dim=64, patch_dim=768,
                              num_patches=256, z_len=16, codebook=16384, prologue_codebook=1024, z_dim=14, post_dim=0,
                              post_layers=10):
    """(encoder state dict `model.safetensors`, decoder `model_1.safetensors`) of the official Prologue tokenizer;
    z_len 0 is the 2D tokenizer, post_dim > 0 Prologue-Post (a `semantic_enc` of post_layers x post_dim over the 2D
    encoder). Key sets checked equal to the original's state dicts for Prologue-B, Prologue-L and the 2D tokenizer:
    230 / 225 encoder keys (Prologue / 2D) and 225 (12 layers) or 441 (24) decoder keys; Prologue-Post's layout from
    the original's `Encoder` built with configs/tokenizer/prologue_post.yaml (a tiny one)."""
    encoder = _prologue_stack("enc", layers, dim, head_dim, round(dim * 8 / 3), bias=True)
    encoder |= {"enc.input_layer.weight": (dim, patch_dim), "enc.input_layer.bias": (dim,)}
    prologue_width, query_encoder = (post_dim, "semantic_enc") if post_dim else (dim, "enc")
    if post_dim:
        encoder |= _prologue_stack("semantic_enc", post_layers, post_dim, head_dim, round(post_dim * 11 / 4), bias=True)
        encoder |= {"semantic_enc.input_layer.weight": (post_dim, dim), "semantic_enc.input_layer.bias": (post_dim,)}
    quantizers = [("quantizer", codebook, num_patches, dim)]
    quantizers += [("semantic_quantizer", prologue_codebook, z_len, prologue_width)] if z_len else []
    for name, size, length, width in quantizers:
        encoder |= {f"{name}.proj_in.weight": (z_dim, width), f"{name}.proj_in.bias": (z_dim,),
                    f"{name}.embedding.weight": (size, z_dim), f"{name}.pos_select_mask": (length, size)}
    if z_len:
        encoder[f"{query_encoder}.learnable_query"] = (1, z_len, prologue_width)
    decoder = _prologue_stack("dec", dec_layers, dec_dim, head_dim, round(dec_dim * 8 / 3), bias=True)
    decoder |= {"dec.input_layer.weight": (dec_dim, z_dim), "dec.input_layer.bias": (dec_dim,),
                "dec.out_norm.affine.weight": (dec_dim, 32), "dec.out_norm.affine.bias": (dec_dim,),
                "dec.out.weight": (patch_dim, dec_dim), "dec.out.bias": (patch_dim,)}
    return encoder, decoder


def prologue_ar_shapes(dim=768, layers=12, head_dim=64, vocab=16384 + 1024 + 1, num_classes=1000):
    """The official Prologue `ARModel` state dict (`model.safetensors` of an AR folder); checked equal to the
    original's for AR-B/L/XL over Prologue-B, AR-B over Prologue-L, the 2D AR-B and the 7-layer joint prior (165, 321,
    425 and 100 keys)."""
    shapes = _prologue_stack("ar_model", layers, dim, head_dim, round(dim * 11 / 4), bias=False)
    return shapes | {"bos_emb.weight": (num_classes + 1, dim), "semantic_emb.weight": (vocab, dim),
                     "ar_model.out_norm.affine.weight": (dim, 32), "ar_model.out_norm.affine.bias": (dim,),
                     "ar_model.out.weight": (vocab, dim), "uncond_ar_labels": (1, num_classes + 1)}
