"""Convert the official scale-wise checkpoints: VAR's `vae_ch160v4096z32.pth` and `var_d{16,20,24,30,36}.pth`
(FoundationVision/VAR), FlexVAR's `FlexVARd{16,20,24}-epo*.pth` (jiaosiyu1999/FlexVAR) and SAR's `SARd{16,20,24}-*.pth`
(GengzeZhou/SAR, FlexVAR weights). FlexVAR's tokenizer `FlexVAE.pth` is a LlamaGen VQ and converts with
`convert_llamagen_vq`.

Checkpoints load with `torch.load(weights_only=True)` only. Training files are unwrapped (`trainer.var_wo_ddp`), the
attention mask and level-index buffers are dropped, and every other key is mapped, none left over.
"""

import re


from ..conversion import count_indexed, load_state_dict, load_strict, rename_keys, require, save_converted
from .configuration_var import VAR_PATCH_NUMS, VAR_PATCH_NUMS_512, FlexVARConfig, VARConfig, VARVQVAEConfig
from .modeling_var import FlexVARForImageGeneration, VARForImageGeneration
from .modeling_var_vqvae import VARVQVAE

# buffers the originals save that carry no weights: the block-causal mask, level ids, the zero k bias, code usage
_DROPPED_KEYS = ("attn_bias_for_masking", "lvl_1L", "zero_k_bias", "ema_vocab_hit_SV")
_WRAPPERS = (("trainer", "var_wo_ddp"), ("model",))  # training checkpoints / DDP-style files

_TRANSFORMER_KEY_MAP = [
    (r"^class_emb\.", "embed_classes."),
    (r"^pos_start$", "start_embedding"),
    (r"^word_embed\.", "embed_codes."),
    (r"^lvl_embed\.", "scale_embeddings."),
    (r"^shared_ada_lin\.1\.", "shared_adaln_modulation."),
    (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"layers.\1.self_attn.query_log_scale"),
    (r"^blocks\.(\d+)\.attn\.(q_bias|v_bias)$", r"layers.\1.self_attn.\2"),
    (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"layers.\1.self_attn.qkv_proj."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.self_attn.o_proj."),
    (r"^blocks\.(\d+)\.ffn\.(fc1|fc2)\.", r"layers.\1.mlp.\2."),
    (r"^blocks\.(\d+)\.ada_lin\.1\.", r"layers.\1.adaln_modulation."),
    (r"^blocks\.(\d+)\.ada_gss$", r"layers.\1.adaln_offset"),
    (r"^head_nm\.ada_lin\.1\.", "head_norm.modulation."),
    (r"^head\.", "lm_head."),
]
_VQVAE_KEY_MAP = [
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.block\.", r"decoder.up_blocks.\1.resnets."),  # up block index reversed in _reverse_up
    (r"^decoder\.up\.(\d+)\.attn\.", r"decoder.up_blocks.\1.attentions."),
    (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"\.attentions\.(\d+)\.norm\.", r".attentions.\1.group_norm."),
    (r"\.attentions\.(\d+)\.proj_out\.", r".attentions.\1.to_out.0."),
    (r"^quantize\.quant_resi\.(?:qresi_ls\.)?(\d+)\.", r"quantize.quant_resi.\1."),  # partially shared or per scale
    (r"^quantize\.quant_resi\.qresi\.", "quantize.quant_resi.0."),  # fully shared
    (r"^(encoder|decoder)\.(conv_in|conv_out)\.", r"\1.\2."),
    (r"^(quant_conv|post_quant_conv|quantize\.embedding)\.", r"\1."),
]


def _split_vqvae_attention(state_dict: dict) -> dict:
    """VAR's attention blocks hold one 1x1 conv `qkv` [3C, C, 1, 1] and a conv `proj_out`; diffusers' hold linears
    `to_q`, `to_k`, `to_v`, `to_out.0` [C, C]."""
    converted = {}
    for key, value in state_dict.items():
        if match := re.fullmatch(r"(.*\.attentions\.\d+)\.qkv\.(weight|bias)", key):
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                converted[f"{match.group(1)}.{name}.{match.group(2)}"] = part.flatten(1) if part.ndim == 4 else part
        elif ".attentions." in key and key.endswith(".to_out.0.weight"):
            converted[key] = value.flatten(1)
        else:
            converted[key] = value
    return converted


def convert_var_vqvae(checkpoint, output_dir=None, **overrides) -> VARVQVAE:
    """`vae_ch160v4096z32.pth` (path or state dict) -> `VARVQVAE`, saved to `output_dir` when given.

    `overrides` set config fields that shapes cannot tell: `quant_resi` (0.5), `patch_nums` (VAR's 256 px schedule;
    the 512 px VAR-d36 uses (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)), `commit_loss_beta`.
    """
    state_dict = load_state_dict(checkpoint, "VAR VQVAE", _WRAPPERS, _DROPPED_KEYS)
    if "encoder.conv_blocks.0.res.0.conv1.weight" in state_dict:
        raise ValueError("checkpoint holds a LlamaGen VQ (such as FlexVAR's FlexVAE.pth), not a VAR VQVAE: LlamaGen "
                         "and FlexVAR transformers decode with it, VAR ones with vae_ch160v4096z32.pth")
    require(state_dict, "encoder.down.0.block.0.conv1.weight", "VAR VQVAE")  # taming's layout, not LlamaGen's VQ
    codebook = require(state_dict, "quantize.embedding.weight", "VAR VQVAE")
    base_channels = require(state_dict, "encoder.conv_in.weight", "VAR VQVAE").shape[0]
    num_levels = count_indexed(state_dict, r"encoder\.down\.(\d+)\.")
    ch_mult = [require(state_dict, f"encoder.down.{i}.block.0.conv1.weight", "VAR VQVAE").shape[0] // base_channels
               for i in range(num_levels)]
    num_phi = count_indexed(state_dict, r"quantize\.quant_resi\.(?:qresi_ls\.)?(\d+)\.") or 1
    config = VARVQVAEConfig(**{
        **dict(
            in_channels=state_dict["encoder.conv_in.weight"].shape[1],
            out_channels=require(state_dict, "decoder.conv_out.weight", "VAR VQVAE").shape[0],
            base_channels=base_channels,
            ch_mult=ch_mult,
            num_res_blocks=count_indexed(state_dict, r"encoder\.down\.0\.block\.(\d+)\."),
            codebook_size=codebook.shape[0],
            codebook_embed_dim=codebook.shape[1],
            quant_conv_kernel_size=require(state_dict, "quant_conv.weight", "VAR VQVAE").shape[-1],
            num_quant_resi_convs=num_phi,
        ),
        **overrides,
    })
    renamed = rename_keys(state_dict, _VQVAE_KEY_MAP, "VAR VQVAE")
    # VAR stores the decoder's levels by resolution (up[0] is the finest); diffusers by order of computation
    last = num_levels - 1
    renamed = {re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up_blocks.{last - int(m.group(1))}.", key): value
               for key, value in renamed.items()}
    model = VARVQVAE(config)
    load_strict(model, _split_vqvae_attention(renamed))
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint, "var-vqvae")
    return model.eval()


def _transformer_config(state_dict: dict, kind: str, config_class, patch_nums, overrides: dict):
    hidden_size = require(state_dict, "class_emb.weight", kind).shape[1]
    depth = count_indexed(state_dict, r"blocks\.(\d+)\.")
    query_scale = state_dict.get("blocks.0.attn.scale_mul_1H11")
    fields = dict(
        vocab_size=require(state_dict, "head.weight", kind).shape[0],
        codebook_embed_dim=require(state_dict, "word_embed.weight", kind).shape[1],
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=query_scale.shape[1] if query_scale is not None else depth,  # VAR: one head per block
        intermediate_size=require(state_dict, "blocks.0.ffn.fc1.weight", kind).shape[0],
        num_classes=state_dict["class_emb.weight"].shape[0] - 1,
        attn_l2_norm=query_scale is not None,
        shared_adaln="shared_ada_lin.1.weight" in state_dict,
        drop_path_rate=0.1 * depth / 24,  # VAR's training rule for the depth (training only)
    )
    if patch_nums is not None:
        fields["patch_nums"] = patch_nums
    return config_class(**{**fields, **overrides})


def convert_var(checkpoint, patch_nums=None, output_dir=None, **overrides) -> VARForImageGeneration:
    """`var_d{16,20,24,30,36}.pth` (path or state dict) -> `VARForImageGeneration`, saved to `output_dir` when given.

    The schedule comes from the position table's length (680: VAR's 256 px schedule, 2240: the 512 px one); pass
    `patch_nums` for others. `overrides` set other config fields.
    """
    kind = "VAR transformer"
    state_dict = load_state_dict(checkpoint, kind, _WRAPPERS, _DROPPED_KEYS)
    positions = require(state_dict, "pos_1LC", kind)
    if positions.ndim != 3 or "lvl_embed.weight" not in state_dict:
        raise ValueError("checkpoint holds a FlexVAR transformer (a 2D position grid, no level embedding): convert it "
                         "with `st-ar convert flexvar` / `convert_flexvar`")
    if patch_nums is None:
        known = {sum(s * s for s in schedule): schedule for schedule in (VAR_PATCH_NUMS, VAR_PATCH_NUMS_512)}
        if positions.shape[1] not in known:
            raise ValueError(f"checkpoint has {positions.shape[1]} positions, matching no known schedule "
                             f"{[list(s) for s in known.values()]}: pass patch_nums")
        patch_nums = known[positions.shape[1]]
    config = _transformer_config(state_dict, kind, VARConfig, patch_nums, overrides)
    model = VARForImageGeneration(config)
    load_strict(model, rename_keys(state_dict, _TRANSFORMER_KEY_MAP + [(r"^pos_1LC$", "position_embeddings")], kind))
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint, "var")
    return model.eval()


def convert_flexvar(checkpoint, output_dir=None, **overrides) -> FlexVARForImageGeneration:
    """`FlexVARd{16,20,24}-epo*.pth` or SAR's `SARd{16,20,24}-*.pth` (path or state dict; flat, or a training file
    with `trainer.var_wo_ddp`) -> `FlexVARForImageGeneration`, saved to `output_dir` when given. `overrides` set
    config fields, e.g. `patch_nums` (the trained schedule, the default for sampling: VAR's 256 px one)."""
    kind = "FlexVAR transformer"
    state_dict = load_state_dict(checkpoint, kind, _WRAPPERS, _DROPPED_KEYS)
    grid = require(state_dict, "pos_1LC", kind)
    if grid.ndim != 4 or grid.shape[2] != grid.shape[3] or "lvl_embed.weight" in state_dict:
        raise ValueError("checkpoint holds a VAR transformer (a position table and a level embedding): convert it "
                         "with `st-ar convert var` / `convert_var`")
    config = _transformer_config(state_dict, kind, FlexVARConfig, None,
                                 {"position_grid_size": grid.shape[-1], **overrides})
    model = FlexVARForImageGeneration(config)
    load_strict(model, rename_keys(state_dict, _TRANSFORMER_KEY_MAP + [(r"^pos_1LC$", "position_grid")], kind))
    if output_dir is not None:
        save_converted(model, output_dir, checkpoint, "flexvar")
    return model.eval()


__all__ = ["convert_flexvar", "convert_var", "convert_var_vqvae"]
