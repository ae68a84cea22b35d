"""Conversion of state dicts laid out as LlamaGen's official checkpoints (random weights: the real files are out of
reach here). Parity with the original code on the same weights was measured separately (README)."""

import pickle
import subprocess
import sys

import pytest
import torch

from st_ar_hf import LlamaGenForImageGeneration, LlamaGenVQVAE
from st_ar_hf.models.llamagen.convert_llamagen import convert_llamagen_gpt, convert_llamagen_vq

from .official_layout import llamagen_gpt_shapes, llamagen_vq_shapes, random_state_dict


def test_official_layouts_have_the_originals_key_counts():
    assert len(llamagen_gpt_shapes(12, 768, 12)) == 88  # GPT-B
    assert len(llamagen_vq_shapes()) == 344  # VQ-16, with quantize.codebook_used


def tiny_gpt_state_dict(num_layers=2, hidden=64, heads=4, kv_heads=None):
    return random_state_dict(llamagen_gpt_shapes(num_layers, hidden, heads, vocab=64, num_classes=10, ffn=96, kv_heads=kv_heads))


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_gpt_conversion_loads_every_tensor_in_place(tmp_path, layout):
    state = tiny_gpt_state_dict()
    file = tmp_path / "c2i.pt"
    payload = {"model": state | {"freqs_cis": torch.zeros(17, 8, 2)}} if layout == "ddp" else state
    torch.save(payload, file)
    model = convert_llamagen_gpt(file, num_attention_heads=4, block_size=16)
    assert (model.config.vocab_size, model.config.num_classes, model.config.intermediate_size) == (64, 10, 96)
    assert model.config.num_hidden_layers == 2 and model.config.grid_size == 4
    ours = model.state_dict()
    assert len(ours) == len(state)
    assert torch.equal(ours["layers.1.self_attn.qkv_proj.weight"], state["layers.1.attention.wqkv.weight"])
    assert torch.equal(ours["layers.0.mlp.gate_proj.weight"], state["layers.0.feed_forward.w1.weight"])
    assert torch.equal(ours["layers.0.mlp.up_proj.weight"], state["layers.0.feed_forward.w3.weight"])
    assert torch.equal(ours["embed_classes.weight"], state["cls_embedding.embedding_table.weight"])
    assert torch.equal(ours["lm_head.weight"], state["output.weight"])


def test_gpt_conversion_infers_grouped_query_heads():
    model = convert_llamagen_gpt(tiny_gpt_state_dict(kv_heads=2), num_attention_heads=4, block_size=16)
    assert model.config.num_key_value_heads == 2


def test_gpt_head_count_comes_from_preset_shapes():
    state = random_state_dict(llamagen_gpt_shapes(12, 768, 12))
    model = convert_llamagen_gpt(state)  # GPT-B shapes: 12 heads found without size
    assert model.config.num_attention_heads == 12 and model.num_parameters() == 110_888_448
    with pytest.raises(ValueError, match="size 'L' means 24 layers"):
        convert_llamagen_gpt(state, size="L")


def test_gpt_conversion_errors_name_the_argument():
    with pytest.raises(ValueError, match="pass num_attention_heads"):
        convert_llamagen_gpt(tiny_gpt_state_dict())
    with pytest.raises(ValueError, match="block_size 15"):
        convert_llamagen_gpt(tiny_gpt_state_dict(), num_attention_heads=4, block_size=15)
    with pytest.raises(ValueError, match="not part of a LlamaGen GPT"):
        convert_llamagen_gpt(tiny_gpt_state_dict() | {"extra.weight": torch.zeros(1)}, num_attention_heads=4, block_size=16)
    with pytest.raises(ValueError, match="tok_embeddings"):
        convert_llamagen_gpt(random_state_dict(llamagen_vq_shapes()), num_attention_heads=4)


def test_vq_conversion_infers_architecture_and_keeps_lookup(tmp_path):
    shapes = llamagen_vq_shapes(ch_mult=(1, 2), ch=32, num_res_blocks=1, z=32, codebook=(64, 4))
    state = random_state_dict(shapes)
    torch.save({"model": state}, tmp_path / "vq.pt")
    model = convert_llamagen_vq(tmp_path / "vq.pt")
    config = model.config
    assert (config.ch_mult, config.base_channels, config.num_res_blocks, config.z_channels) == ([1, 2], 32, 1, 32)
    assert (config.codebook_size, config.codebook_embed_dim) == (64, 4)
    assert len(model.state_dict()) == len(state) - 1  # codebook_used is dropped
    assert torch.equal(model.state_dict()["encoder.down.1.block.0.shortcut.weight"],
                       state["encoder.conv_blocks.1.res.0.nin_shortcut.weight"])
    assert torch.equal(model.state_dict()["decoder.up.0.attn.1.proj_out.weight"], state["decoder.conv_blocks.0.attn.1.proj_out.weight"])


def test_vq16_official_layout_converts_to_the_preset():
    model = convert_llamagen_vq(random_state_dict(llamagen_vq_shapes()))
    assert model.config.ch_mult == [1, 1, 2, 2, 4] and model.num_parameters() == 71_883_403


def test_truncated_and_foreign_files_are_refused_without_running_code(tmp_path):
    torch.save({"model": tiny_gpt_state_dict()}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        convert_llamagen_gpt(tmp_path / "truncated.pt", num_attention_heads=4)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        convert_llamagen_gpt(tmp_path / "text.pt", num_attention_heads=4)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Exploit()}))
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_llamagen_vq(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="is not a file"):
        convert_llamagen_vq(tmp_path / "missing.pt")


def test_cli_writes_loadable_directories_with_cards(tmp_path):
    torch.save({"model": tiny_gpt_state_dict()}, tmp_path / "c2i.pt")
    vq_shapes = llamagen_vq_shapes(ch_mult=(1, 2), ch=32, num_res_blocks=1, z=32, codebook=(64, 4))
    torch.save({"model": random_state_dict(vq_shapes)}, tmp_path / "vq.pt")
    from st_ar_hf.cli import main as cli_main

    assert cli_main(["convert", "llamagen-gpt", "--checkpoint", str(tmp_path / "c2i.pt"), "--num-attention-heads", "4",
                     "--block-size", "16", "--output-dir", str(tmp_path / "gpt")]) == 0
    assert cli_main(["convert", "llamagen-vq", "--checkpoint", str(tmp_path / "vq.pt"), "--output-dir", str(tmp_path / "vq")]) == 0
    run = [sys.executable, "-m", "st_ar_hf.cli", "convert"]  # the installed entry point, for the error path
    for name in ("gpt", "vq"):
        assert {p.name for p in (tmp_path / name).iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    card = (tmp_path / "gpt" / "README.md").read_text()
    assert "base_model: FoundationVision/LlamaGen" in card and "c2i.pt" in card and "| `block_size` | `16` |" in card
    assert isinstance(LlamaGenForImageGeneration.from_pretrained(tmp_path / "gpt"), LlamaGenForImageGeneration)
    assert isinstance(LlamaGenVQVAE.from_pretrained(tmp_path / "vq"), LlamaGenVQVAE)
    bad = subprocess.run(run + ["llamagen-gpt", "--checkpoint", str(tmp_path / "c2i.pt"), "--output-dir", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "num_attention_heads" in bad.stderr and "Traceback" not in bad.stderr
