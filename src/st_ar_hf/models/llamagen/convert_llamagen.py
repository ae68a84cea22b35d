"""Convert LlamaGen's official `.pt` checkpoints into `LlamaGenVQVAE` / `LlamaGenForImageGeneration` directories.

Checkpoints load with `torch.load(weights_only=True)` only: no pickled code ever runs. Both official layouts are
accepted (`{"model": state_dict}` from DDP training and raw FSDP state dicts); everything but the head count and the
token-grid size is read off the tensor shapes.
"""

from ..conversion import count_indexed, load_state_dict, load_strict, rename_keys, require, save_converted
from .configuration_llamagen import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenVQVAEConfig
from .modeling_llamagen import LlamaGenForImageGeneration
from .modeling_llamagen_vq import LlamaGenVQVAE

# keys LlamaGen saves that carry no weights: the RoPE table (checked against block_size, then dropped) and the VQ's
# sliding window of used codes
_DROPPED_KEYS = ("freqs_cis", "quantize.codebook_used")

# (LlamaGen pattern, our name), applied in turn; a key that no pattern matches is an error
_GPT_KEY_MAP = [
    (r"^cls_embedding\.embedding_table\.", "embed_classes."),
    (r"^tok_embeddings\.", "embed_tokens."),
    (r"^layers\.(\d+)\.attention\.wqkv\.", r"layers.\1.self_attn.qkv_proj."),
    (r"^layers\.(\d+)\.attention\.wo\.", r"layers.\1.self_attn.o_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w1\.", r"layers.\1.mlp.gate_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w3\.", r"layers.\1.mlp.up_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w2\.", r"layers.\1.mlp.down_proj."),
    (r"^layers\.(\d+)\.attention_norm\.", r"layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"^norm\.", "norm."),
    (r"^output\.", "lm_head."),
]
_VQ_KEY_MAP = [
    (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block."),
    (r"^encoder\.conv_blocks\.(\d+)\.attn\.", r"encoder.down.\1.attn."),
    (r"^encoder\.conv_blocks\.(\d+)\.downsample\.", r"encoder.down.\1.resample."),
    (r"^decoder\.conv_blocks\.(\d+)\.res\.", r"decoder.up.\1.block."),
    (r"^decoder\.conv_blocks\.(\d+)\.attn\.", r"decoder.up.\1.attn."),
    (r"^decoder\.conv_blocks\.(\d+)\.upsample\.", r"decoder.up.\1.resample."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
    (r"\.nin_shortcut\.", ".shortcut."),
    (r"^(encoder|decoder|quant_conv|post_quant_conv|quantize)\.", r"\1."),
]


def convert_llamagen_vq(checkpoint, output_dir=None, **overrides) -> LlamaGenVQVAE:
    """LlamaGen VQ checkpoint (path or state dict) -> `LlamaGenVQVAE`, saved to `output_dir` when given.

    `overrides` set config fields that shapes cannot tell (e.g. `commit_loss_beta`, `entropy_loss_ratio`).
    """
    state_dict = load_state_dict(checkpoint, "LlamaGen VQ", dropped=_DROPPED_KEYS)
    if "encoder.down.0.block.0.conv1.weight" in state_dict:
        raise ValueError("checkpoint holds a VAR VQVAE (taming's layout), not a LlamaGen VQ: VAR transformers decode "
                         "with it, LlamaGen and FlexVAR ones with a LlamaGen VQ (FlexVAR's FlexVAE.pth)")
    codebook = require(state_dict, "quantize.embedding.weight", "LlamaGen VQ")
    base_channels = require(state_dict, "encoder.conv_in.weight", "LlamaGen VQ").shape[0]
    num_levels = count_indexed(state_dict, r"encoder\.conv_blocks\.(\d+)\.")
    ch_mult = [
        require(state_dict, f"encoder.conv_blocks.{i}.res.0.conv1.weight", "LlamaGen VQ").shape[0] // base_channels
        for i in range(num_levels)
    ]
    config_kwargs = dict(
        in_channels=state_dict["encoder.conv_in.weight"].shape[1],
        out_channels=require(state_dict, "decoder.conv_out.weight", "LlamaGen VQ").shape[0],
        base_channels=base_channels,
        ch_mult=ch_mult,
        num_res_blocks=count_indexed(state_dict, r"encoder\.conv_blocks\.0\.res\.(\d+)\."),
        z_channels=require(state_dict, "quant_conv.weight", "LlamaGen VQ").shape[1],
        codebook_size=codebook.shape[0],
        codebook_embed_dim=codebook.shape[1],
    )
    model = LlamaGenVQVAE(LlamaGenVQVAEConfig(**{**config_kwargs, **overrides}))
    load_strict(model, rename_keys(state_dict, _VQ_KEY_MAP, "LlamaGen VQ"))
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint, "llamagen-vq")
    return model.eval()


def convert_llamagen_gpt(
    checkpoint, size=None, num_attention_heads=None, block_size=None, output_dir=None, **overrides
) -> LlamaGenForImageGeneration:
    """LlamaGen c2i GPT checkpoint (path or state dict) -> `LlamaGenForImageGeneration`, saved to `output_dir` when given.

    Args:
        size: a preset ("B", "L", "XL", "XXL", "3B") giving the head count; must agree with the shapes.
        num_attention_heads: the head count, for checkpoints that match no preset.
        block_size: image tokens per sample, LlamaGen's name: 256 for the 256px checkpoints, 576 for 384px; None
            reads it off the checkpoint's RoPE table `freqs_cis` when it has one, else 256.
        overrides: other config fields (dropouts, `rope_theta`, ...).
    """
    state_dict = load_state_dict(checkpoint, "LlamaGen GPT", dropped=_DROPPED_KEYS[1:])
    freqs_cis = state_dict.pop("freqs_cis", None)  # [cls_token_num + block_size, head_dim / 2, 2]
    vocab_size, hidden_size = require(state_dict, "tok_embeddings.weight", "LlamaGen GPT").shape
    num_layers = count_indexed(state_dict, r"layers\.(\d+)\.")
    class_rows, class_width = require(state_dict, "cls_embedding.embedding_table.weight", "LlamaGen GPT").shape
    qkv_rows = require(state_dict, "layers.0.attention.wqkv.weight", "LlamaGen GPT").shape[0]

    if size is not None:
        if size not in LLAMAGEN_PRESETS:
            raise ValueError(f"size must be one of {sorted(LLAMAGEN_PRESETS)}, got {size!r}")
        preset_layers, preset_heads, preset_hidden = LLAMAGEN_PRESETS[size]
        if (preset_layers, preset_hidden) != (num_layers, hidden_size):
            raise ValueError(f"size {size!r} means {preset_layers} layers of width {preset_hidden}, but the checkpoint "
                             f"has {num_layers} layers of width {hidden_size}")
        if num_attention_heads not in (None, preset_heads):
            raise ValueError(f"num_attention_heads {num_attention_heads} contradicts size {size!r} ({preset_heads} heads)")
        num_attention_heads = preset_heads
    if num_attention_heads is None:
        matches = [name for name, (layers, _, hidden) in LLAMAGEN_PRESETS.items() if (layers, hidden) == (num_layers, hidden_size)]
        if not matches:
            raise ValueError(f"a checkpoint with {num_layers} layers of width {hidden_size} matches no preset "
                             f"{sorted(LLAMAGEN_PRESETS)}: pass num_attention_heads")
        num_attention_heads = LLAMAGEN_PRESETS[matches[0]][1]
    if hidden_size % num_attention_heads:
        raise ValueError(f"num_attention_heads {num_attention_heads} does not divide the width {hidden_size}")
    head_dim = hidden_size // num_attention_heads
    num_kv_heads = (qkv_rows // head_dim - num_attention_heads) // 2
    cls_token_num = class_width // hidden_size
    if freqs_cis is not None:
        table_size = freqs_cis.shape[0] - cls_token_num
        if block_size not in (None, table_size):
            raise ValueError(f"block_size {block_size} contradicts the checkpoint's freqs_cis, whose "
                             f"{freqs_cis.shape[0]} positions ({cls_token_num} class token(s) + image tokens) mean "
                             f"block_size {table_size}")
        block_size = table_size

    config = LlamaGenConfig(**{
        **dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=require(state_dict, "layers.0.feed_forward.w1.weight", "LlamaGen GPT").shape[0],
            num_classes=class_rows - 1,
            cls_token_num=cls_token_num,
            block_size=256 if block_size is None else block_size,
        ),
        **overrides,
    })
    model = LlamaGenForImageGeneration(config)
    load_strict(model, rename_keys(state_dict, _GPT_KEY_MAP, "LlamaGen GPT"))
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint, "llamagen-gpt")
    return model.eval()



__all__ = ["convert_llamagen_gpt", "convert_llamagen_vq"]
