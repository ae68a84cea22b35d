"""The reliability issue's weak cases at the convert and sample entry points: `st-ar convert` writes aside and renames,
and every bad input (a contradicting flag, a corrupt, half-written or pickled file, a device that cannot sample, a
garbage id2label, components of two families) ends in one line naming the flag or the file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch

from .test_reliability import ROOT, Payload, _cli


def _gpt_checkpoint(path: Path, **extra) -> Path:
    from .official_layout import llamagen_gpt_shapes, random_state_dict

    shapes = llamagen_gpt_shapes(2, 64, 4, vocab=64, num_classes=10, ffn=96)
    torch.save({"model": random_state_dict(shapes) | extra}, path)
    return path


def test_convert_writes_aside_and_the_next_run_replaces_a_killed_runs_partial_folder(tmp_path, capsys, monkeypatch):
    from st_ar_hf.models.llamagen import convert_llamagen

    checkpoint = _gpt_checkpoint(tmp_path / "c2i.pt")
    argv = ["convert", "llamagen-gpt", "--checkpoint", str(checkpoint), "--num-attention-heads", "4", "--block-size",
            "16", "--output-dir", str(tmp_path / "gpt")]

    def killed(model, output_dir, source, kind):  # dies with the config written and the weights half-written
        model.config.save_pretrained(output_dir)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(convert_llamagen, "save_converted", killed)
        with pytest.raises(KeyboardInterrupt):
            _cli(*argv)
    assert not (tmp_path / "gpt").exists() and (tmp_path / "gpt.partial" / "config.json").is_file()
    assert _cli(*argv) == 0
    assert not (tmp_path / "gpt.partial").exists() and (tmp_path / "gpt" / "README.md").is_file()
    assert _cli(*argv) == 2 and "already holds a file or a model" in capsys.readouterr().err
    assert _cli(*argv, "--overwrite") == 0 and not (tmp_path / "gpt.partial").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert _cli(*argv[:-1], str(tmp_path / "notes"), "--overwrite") == 2
    assert "holds files but no model" in capsys.readouterr().err and (tmp_path / "notes" / "todo.txt").is_file()


def test_convert_refuses_a_block_size_that_contradicts_the_checkpoints_freqs_cis(tmp_path, capsys):
    from st_ar_hf import LlamaGenConfig

    checkpoint = _gpt_checkpoint(tmp_path / "c2i.pt", freqs_cis=torch.zeros(1 + 16, 8, 2))  # 1 class token + 4x4
    argv = ["convert", "llamagen-gpt", "--checkpoint", str(checkpoint), "--num-attention-heads", "4"]
    assert _cli(*argv, "--block-size", "256", "--output-dir", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert err.startswith("st-ar convert: error: --block-size 256 contradicts the checkpoint's freqs_cis")
    assert "17 positions" in err and "mean block_size 16" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    assert _cli(*argv, "--output-dir", str(tmp_path / "b")) == 0  # default: read off freqs_cis
    assert LlamaGenConfig.from_pretrained(tmp_path / "b").block_size == 16


def test_convert_names_a_half_written_or_pickled_tokenizer_folder_and_a_corrupt_checkpoint(tmp_path, capsys, tiny_vq):
    checkpoint = _gpt_checkpoint(tmp_path / "c2i.pt")
    argv = ["convert", "llamagen-gpt", "--checkpoint", str(checkpoint), "--num-attention-heads", "4", "--block-size",
            "16", "--output-dir", str(tmp_path / "out")]
    tiny_vq.save_pretrained(tmp_path / "vq")
    weights = tmp_path / "vq" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    capsys.readouterr()
    assert _cli(*argv, "--vqvae", str(tmp_path / "vq")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"st-ar convert: error: --vqvae {tmp_path / 'vq'}: unreadable weights") and err.count("\n") == 1
    marker = tmp_path / "pwned"
    weights.unlink()
    torch.save({"weight": Payload(marker)}, tmp_path / "vq" / "pytorch_model.bin")
    assert _cli(*argv, "--vqvae", str(tmp_path / "vq")) == 2
    assert "--vqvae" in capsys.readouterr().err and not marker.exists()
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    (tmp_path / "corrupt.pt").write_bytes(bytes(data))
    assert _cli(*argv[:3], str(tmp_path / "corrupt.pt"), *argv[4:]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "corrupt.pt' is corrupt" in err and "CRC-32" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_tokenizer_folder_of_another_family_before_converting(tmp_path, capsys, tiny_var_vqvae):
    tiny_var_vqvae.save_pretrained(tmp_path / "var-vq")
    argv = ["convert", "llamagen-gpt", "--checkpoint", str(tmp_path / "missing.pt"), "--num-attention-heads", "4",
            "--output-dir", str(tmp_path / "out"), "--vqvae", str(tmp_path / "var-vq")]
    assert _cli(*argv) == 2
    assert "holds a 'var_vqvae' tokenizer, which a llamagen-gpt model does not decode with (it decodes with a " \
           "'llamagen_vqvae' one)" in capsys.readouterr().err


@pytest.fixture
def saved_pipeline(tmp_path, tiny_gpt, tiny_vq) -> Path:
    from st_ar_hf import STARPipeline

    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: f"class {i}" for i in range(10)}).save_pretrained(
        tmp_path / "pipe")
    return tmp_path / "pipe"


def test_a_pickled_component_is_refused_with_the_file_named_and_never_unpickled(saved_pipeline, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (saved_pipeline / "transformer" / "model.safetensors").unlink()
    torch.save({"weight": Payload(marker)}, saved_pipeline / "transformer" / "pytorch_model.bin")
    assert _cli("sample", "--model", str(saved_pipeline), "--labels", "1", "--device", "cpu", "--output-file",
                str(tmp_path / "grid.png")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"st-ar sample: error: {saved_pipeline / 'transformer' / 'pytorch_model.bin'}: pickled weights")
    assert err.count("\n") == 1 and not marker.exists()


@pytest.mark.parametrize(("id2label", "message"), [
    (["cat", "dog"], "id2label must map class ids to names, got a list"),
    ({"cat": "dog"}, "got 1 other entries, e.g. 'cat': 'dog'"),
    ({"1": 5}, "got 1 other entries, e.g. '1': 5"),
    ({"12": "twelve"}, r"id2label names ids \[12\] outside the transformer's classes"),
])
def test_a_garbage_id2label_is_named_with_its_file(saved_pipeline, id2label, message):
    from st_ar_hf.hub import load_star_pipeline

    index = json.loads((saved_pipeline / "model_index.json").read_text())
    (saved_pipeline / "model_index.json").write_text(json.dumps({**index, "id2label": id2label}))
    with pytest.raises(ValueError, match=rf"^{saved_pipeline / 'model_index.json'}: .*{message}"):
        load_star_pipeline(str(saved_pipeline))


def test_a_tokenizer_of_another_family_is_named_as_the_mismatch(saved_pipeline, tiny_var_vqvae):
    import shutil

    from st_ar_hf.hub import load_star_pipeline

    shutil.rmtree(saved_pipeline / "vqvae")
    tiny_var_vqvae.save_pretrained(saved_pipeline / "vqvae")
    with pytest.raises(ValueError, match="vqvae: a llamagen transformer decodes with a llamagen_vqvae tokenizer, got "
                                         "a var_vqvae"):
        load_star_pipeline(str(saved_pipeline))


@pytest.mark.parametrize(("device", "message"), [
    ("meta", "--device meta holds shapes but no data"), ("mps", "--device mps is not usable here"),
])
def test_sample_refuses_devices_that_cannot_sample_before_loading(tmp_path, capsys, device, message):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    assert _cli("sample", "--model", str(tmp_path / "no-model-here"), "--labels", "1", "--device", device,
                "--output-file", str(tmp_path / "grid.png")) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_prologue_samples_in_half_precision_on_cpu(tmp_path, tiny_prologue, tiny_prologue_tokenizer, dtype):
    from st_ar_hf import STARPipeline

    STARPipeline(transformer=tiny_prologue, vqvae=tiny_prologue_tokenizer).save_pretrained(tmp_path / "pipe")
    assert _cli("sample", "--model", str(tmp_path / "pipe"), "--labels", "1", "--device", "cpu", "--dtype", dtype,
                "--output-file", str(tmp_path / "grid.png")) == 0
    assert PIL.Image.open(tmp_path / "grid.png").size == (32, 32)


def test_sample_ddp_ends_bad_inputs_in_one_line_naming_the_flag(tmp_path):
    script = [sys.executable, str(ROOT / "training" / "sample_ddp.py"), "--num_samples", "1"]
    for argv, message in ((["--model", str(tmp_path), "--output_file", str(tmp_path / "s.txt")], "--output_file"),
                          (["--model", str(tmp_path / "none"), "--output_file", str(tmp_path / "s.npz")], "--model")):
        run = subprocess.run(script + argv, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 2 and run.stderr.startswith(f"sample_ddp.py: error: {message} ")
        assert run.stderr.count("\n") == 1 and not (tmp_path / "s.npz").exists()


def test_a_tokenizer_checkpoint_of_another_family_is_named_as_such(tmp_path, capsys):
    from .official_layout import random_state_dict, var_vqvae_shapes

    shapes = var_vqvae_shapes(ch=32, ch_mult=(1, 2), num_res_blocks=1, cvae=8, vocab=64, num_scales=3)
    torch.save(random_state_dict(shapes), tmp_path / "vae_ch160v4096z32.pth")
    (tmp_path / "prologue-b-tokenizer").mkdir()
    argv = ["convert", "llamagen-gpt", "--checkpoint", str(_gpt_checkpoint(tmp_path / "c2i.pt")),
            "--num-attention-heads", "4", "--block-size", "16", "--output-dir", str(tmp_path / "out")]
    for tokenizer, message in ((tmp_path / "vae_ch160v4096z32.pth", "holds a VAR VQVAE (taming's layout), not a LlamaGen VQ"),
                               (tmp_path / "prologue-b-tokenizer", "is a folder, not a LlamaGen VQ file")):
        assert _cli(*argv, "--vqvae-checkpoint", str(tokenizer)) == 2
        err = capsys.readouterr().err
        assert err.startswith("st-ar convert: error: --vqvae-checkpoint: checkpoint") and message in err
    assert not (tmp_path / "out").exists()
