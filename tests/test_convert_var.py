"""Conversion of state dicts laid out as VAR's, FlexVAR's and SAR's official checkpoints (random weights: the real files
are out of reach here). Parity with the original code on the same weights was measured separately (README)."""

import json
import pickle
import re
import subprocess
import sys

import pytest
import torch

from st_ar_hf import FlexVARForImageGeneration, STARPipeline, VARForImageGeneration
from st_ar_hf.cli import main as cli_main
from st_ar_hf.models.var.convert_var import convert_flexvar, convert_var, convert_var_vqvae

from .official_layout import llamagen_vq_shapes, random_state_dict, var_shapes, var_vqvae_shapes

TINY = dict(hidden=64, heads=4, vocab=64, cvae=8, num_classes=10, patch_nums=(1, 2, 4))
DROPPED = ("attn_bias_for_masking", "lvl_1L", "zero_k_bias", "ema_vocab_hit_SV", "codebook_used")


def tiny_var_state(**overrides):
    return random_state_dict(var_shapes(2, **{**TINY, **overrides}))


def tiny_vqvae_state():
    return random_state_dict(var_vqvae_shapes(ch=32, ch_mult=(1, 2), num_res_blocks=1, cvae=8, vocab=64, num_scales=3))


def kept(state):
    return {key: value for key, value in state.items() if not key.endswith(DROPPED)}


def test_official_layouts_have_the_originals_key_counts():
    assert len(var_vqvae_shapes()) == 324  # vae_ch160v4096z32.pth
    assert len(var_shapes(16)) == 220  # var_d16.pth
    assert len(var_shapes(16, vocab=8912, flexvar=True)) == 218  # FlexVARd16-epo179.pth


def test_var_conversion_maps_every_key_and_infers_the_shape():
    state = tiny_var_state()
    with pytest.raises(ValueError, match="21 positions, matching no known schedule"):
        convert_var(state)
    model = convert_var(state, patch_nums=[1, 2, 4])
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (64, 2, 4, 256)
    assert (config.vocab_size, config.codebook_embed_dim, config.num_classes, config.patch_nums) == (64, 8, 10, [1, 2, 4])
    assert config.attn_l2_norm and not config.shared_adaln
    ours = model.state_dict()
    assert len(ours) == len(kept(state))
    assert torch.equal(ours["layers.1.self_attn.qkv_proj.weight"], state["blocks.1.attn.mat_qkv.weight"])
    assert torch.equal(ours["layers.0.self_attn.query_log_scale"], state["blocks.0.attn.scale_mul_1H11"])
    assert torch.equal(ours["layers.0.adaln_modulation.weight"], state["blocks.0.ada_lin.1.weight"])
    assert torch.equal(ours["position_embeddings"], state["pos_1LC"])
    assert torch.equal(ours["scale_embeddings.weight"], state["lvl_embed.weight"])
    assert torch.equal(ours["head_norm.modulation.bias"], state["head_nm.ada_lin.1.bias"])


def test_var_schedule_comes_from_the_position_table():
    assert convert_var(random_state_dict(var_shapes(2, hidden=64, heads=4))).config.patch_nums == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    d36_like = random_state_dict(var_shapes(2, hidden=64, heads=4, shared_adaln=True,
                                            patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32)))
    model = convert_var(d36_like)
    assert model.config.patch_nums == [1, 2, 3, 4, 6, 9, 13, 18, 24, 32] and model.config.shared_adaln
    assert torch.equal(model.state_dict()["layers.1.adaln_offset"], d36_like["blocks.1.ada_gss"])


def test_flexvar_and_sar_training_files_unwrap(tmp_path):
    state = tiny_var_state(flexvar=True, grid=8)
    with pytest.raises(ValueError, match=r"position_grid_size \(8\) must be at least the last side"):
        convert_flexvar(state)  # the default schedule ends at 16
    model = convert_flexvar(state, patch_nums=[1, 2, 4])
    assert isinstance(model, FlexVARForImageGeneration) and model.config.position_grid_size == 8
    assert len(model.state_dict()) == len(kept(state))
    assert torch.equal(model.state_dict()["position_grid"], state["pos_1LC"])
    wrapped = {"epoch": 180, "iter": 0, "trainer": {"var_wo_ddp": {f"module.{k}": v for k, v in state.items()},
                                                    "config": {"patch_nums": [1, 2, 4]}}, "args": {"depth": 2}}
    torch.save(wrapped, tmp_path / "SARd2-epo179.pth")
    again = convert_flexvar(tmp_path / "SARd2-epo179.pth", patch_nums=[1, 2, 4])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_families_are_not_confused():
    with pytest.raises(ValueError, match="holds a FlexVAR transformer"):
        convert_var(tiny_var_state(flexvar=True, grid=8))
    with pytest.raises(ValueError, match="holds a VAR transformer"):
        convert_flexvar(tiny_var_state())
    with pytest.raises(ValueError, match="not part of a VAR transformer"):
        convert_var(tiny_var_state() | {"extra.weight": torch.zeros(1)}, patch_nums=[1, 2, 4])
    with pytest.raises(ValueError, match="'encoder.down.0.block.0.conv1.weight'"):
        convert_var_vqvae(tiny_var_state())


def test_vqvae_conversion_maps_taming_keys_to_diffusers_blocks():
    state = tiny_vqvae_state()
    model = convert_var_vqvae(state, patch_nums=[1, 2, 4])
    config = model.config
    assert (config.base_channels, config.ch_mult, config.num_res_blocks) == (32, [1, 2], 1)
    assert (config.codebook_size, config.codebook_embed_dim, config.num_quant_resi_convs) == (64, 8, 4)
    ours = model.state_dict()
    # 5 attention blocks (encoder 1 + mid, decoder mid + 2), each with its qkv conv (2 keys) split into q, k, v (6)
    assert len(ours) == len(kept(state)) + 5 * (6 - 2)
    qkv = state["encoder.down.1.attn.0.qkv.weight"].flatten(1)  # [3C, C]
    assert torch.equal(ours["encoder.down_blocks.1.attentions.0.to_k.weight"], qkv[64:128])
    assert torch.equal(ours["decoder.mid_block.attentions.0.to_out.0.weight"],
                       state["decoder.mid.attn_1.proj_out.weight"].flatten(1))
    # VAR indexes the decoder's levels by resolution (up.0 the finest), diffusers by order of computation
    assert torch.equal(ours["decoder.up_blocks.1.resnets.0.conv1.weight"], state["decoder.up.0.block.0.conv1.weight"])
    assert torch.equal(ours["decoder.up_blocks.0.upsamplers.0.conv.weight"], state["decoder.up.1.upsample.conv.weight"])
    assert torch.equal(ours["quantize.quant_resi.3.weight"], state["quantize.quant_resi.qresi_ls.3.weight"])
    assert torch.equal(ours["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"],
                       state["encoder.down.1.block.0.nin_shortcut.weight"])


def test_foreign_and_truncated_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"trainer": {"var_wo_ddp": Exploit()}}))
    for convert in (convert_var, convert_flexvar, convert_var_vqvae):
        with pytest.raises(ValueError, match="weights_only=True"):
            convert(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save(tiny_var_state(), tmp_path / "good.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        convert_var(tmp_path / "truncated.pth")


def convert_cli(*args, capsys=None) -> tuple[int, str, str]:
    """`st-ar convert ...` in this process (the entry point's code; one test below runs it as a real command)."""
    code = cli_main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_pipelines_of_either_family(tmp_path, capsys):
    torch.save(tiny_vqvae_state(), tmp_path / "vae.pth")
    torch.save(tiny_var_state(), tmp_path / "var.pth")
    torch.save(tiny_var_state(flexvar=True, grid=8), tmp_path / "flexvar.pth")
    vq_shapes = llamagen_vq_shapes(ch_mult=(1, 2), ch=32, num_res_blocks=1, z=32, codebook=(64, 8))
    torch.save({"model": random_state_dict(vq_shapes)}, tmp_path / "FlexVAE.pth")

    code, _, err = convert_cli("var-vqvae", "--checkpoint", tmp_path / "vae.pth", "--patch-nums", 1, 2, 4,
                               "--output-dir", tmp_path / "vae", capsys=capsys)
    assert code == 0, err
    assert "base_model: FoundationVision/var" in (tmp_path / "vae" / "README.md").read_text()
    code, out, err = convert_cli("var", "--checkpoint", tmp_path / "var.pth", "--patch-nums", 1, 2, 4, "--vqvae",
                                 tmp_path / "vae", "--output-dir", tmp_path / "var-pipe", capsys=capsys)
    assert code == 0 and "a STARPipeline of VARForImageGeneration" in out, err
    assert "base_model: FoundationVision/var" in (tmp_path / "var-pipe" / "README.md").read_text()
    command = subprocess.run([sys.executable, "-m", "st_ar_hf.cli", "convert", "flexvar", "--checkpoint",
                              str(tmp_path / "flexvar.pth"), "--patch-nums", "1", "2", "4", "--vqvae-checkpoint",
                              str(tmp_path / "FlexVAE.pth"), "--output-dir", str(tmp_path / "flexvar-pipe")],
                             capture_output=True, text=True)
    assert command.returncode == 0, command.stderr
    for name, transformer in (("var-pipe", VARForImageGeneration), ("flexvar-pipe", FlexVARForImageGeneration)):
        index = json.loads((tmp_path / name / "model_index.json").read_text())
        assert index["_class_name"] == ["pipeline_star", "STARPipeline"]  # it carries its code
        pipe = STARPipeline.from_pretrained(tmp_path / name)
        pipe.set_progress_bar_config(disable=True)
        assert isinstance(pipe.transformer, transformer)
        out = pipe([1, 2], output_type="np", generator=torch.Generator().manual_seed(0))
        assert out.images.shape == (2, 8, 8, 3) and [m.shape[-1] for m in out.tokens] == [1, 2, 4]

    # bad input: each names the argument, exits 2 before writing anything
    for args, message in (
        (["flexvar", "--checkpoint", tmp_path / "flexvar.pth", "--patch-nums", 1, 2, 4, "--vqvae", tmp_path / "vae",
          "--output-dir", tmp_path / "x"], "holds a 'var_vqvae' tokenizer, which a flexvar model does not decode with"),
        (["var", "--checkpoint", tmp_path / "flexvar.pth", "--output-dir", tmp_path / "x"],
         "--checkpoint: checkpoint holds a FlexVAR transformer"),
        (["var", "--checkpoint", tmp_path / "var.pth", "--vqvae-checkpoint", tmp_path / "FlexVAE.pth", "--output-dir",
          tmp_path / "x"], "--vqvae-checkpoint: checkpoint holds a LlamaGen VQ .*not a VAR VQVAE"),
        (["var", "--checkpoint", tmp_path / "var.pth", "--vqvae", tmp_path, "--output-dir", tmp_path / "x"],
         "--vqvae .*: no config.json"),
    ):
        code, _, err = convert_cli(*args, capsys=capsys)
        assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "x").exists()
