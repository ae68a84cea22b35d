"""Tokenizer training: the adversarial and perceptual parts, metrics, and `training/train_tokenizer.py` end to end
on the embedded MNIST digits (tiny random tokenizers; no pretrained weights exist offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from st_ar_hf import LlamaGenVQVAE
from st_ar_hf.metrics import psnr, ssim
from st_ar_hf.training.arguments import TokenizerTrainingArguments, parse_arguments
from st_ar_hf.training.data import write_embedded_dataset
from st_ar_hf.training.vq_losses import LPIPS, PatchGANDiscriminator, hinge_discriminator_loss, hinge_generator_loss

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_generator_loss(fake).item() == pytest.approx(1 / 3)


def test_patchgan_gives_one_logit_per_patch():
    torch.manual_seed(0)
    discriminator = PatchGANDiscriminator(base_channels=8, num_layers=3)
    assert discriminator(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert discriminator(torch.randn(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # LlamaGen's 30x30 patches


def test_lpips_loads_from_files_and_is_zero_for_identical_images(tmp_path):
    torch.manual_seed(0)
    reference = LPIPS()
    for module in reference.modules():  # random stand-ins for the VGG16 and lpips weights (none exist offline)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
            if module.bias is not None:
                torch.nn.init.normal_(module.bias, std=0.01)
    convs = [m for block in reference.blocks for m in block if isinstance(m, torch.nn.Conv2d)]
    torchvision_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # VGG16's features.<i> convolutions
    vgg = {f"features.{i}.{p}": getattr(c, p).detach().clone() for i, c in zip(torchvision_indices, convs)
           for p in ("weight", "bias")}
    vgg["classifier.0.weight"] = torch.zeros(1)  # other keys of the torchvision file are ignored
    torch.save(vgg, tmp_path / "vgg16.pth")
    save_file({f"lin{k}.model.1.weight": lin.weight.detach().abs().contiguous() for k, lin in enumerate(reference.lins)},
              tmp_path / "vgg.safetensors")
    lpips = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.safetensors")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    distance = lpips(images, images.flip(0))
    assert distance.shape == (2,) and (distance > 0).all()
    assert lpips(images, images).abs().max() < 1e-6


def test_psnr_by_hand_and_ssim_against_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 32, 32)
    assert psnr(reference + 0.1, reference).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # MSE 0.01
    noisy = (reference + 0.1 * torch.randn_like(reference)).clamp(0, 1)
    ours = ssim(noisy, reference)
    for i in range(2):
        expected = skimage_metrics.structural_similarity(
            noisy[i].permute(1, 2, 0).numpy().astype(np.float64), reference[i].permute(1, 2, 0).numpy().astype(np.float64),
            channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(expected, abs=1e-5)
    assert ssim(reference, reference).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_bad_tokenizer_settings_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="give both --perceptual_vgg16 and --perceptual_lpips"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", perceptual_vgg16="v.pth")
    with pytest.raises(ValueError, match="--image_size 24 is too small for a 3-layer discriminator"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", image_size=24, disc_start=0)
    args = TokenizerTrainingArguments(embedded_dataset_dir="x", image_size=20)
    with pytest.raises(ValueError, match=r"--image_size 20 is not divisible by the downsampling factor 16 of ch_mult \[1, 1, 2, 2, 4\]"):
        args.check_model(LlamaGenVQVAE.config_class())


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return write_embedded_dataset(tmp_path_factory.mktemp("tokenizer") / "mnist")


def _run(mnist, tmp_path, name, **overrides) -> subprocess.CompletedProcess:
    config = {"embedded_dataset_dir": str(mnist), "output_dir": str(tmp_path / "run"), "image_size": 16,
              "model": "VQ-16", "model_config": {"base_channels": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
                                                 "z_channels": 32, "codebook_size": 64, "codebook_embed_dim": 4},
              "train_batch_size": 16, "learning_rate": 2e-3, "max_train_steps": 200, "log_steps": 25,
              "validation_steps": 0, "checkpointing_steps": 100, "report_to": "none", "shuffle_input_shards": 1,
              "random_flip": False, "eval_steps": 200, "eval_images": 64, **overrides}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                           "no", "--dynamo_backend", "no", str(ROOT / "training" / "train_tokenizer.py"), "--config",
                           str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_reconstruction_error_and_uses_the_codebook(mnist, tmp_path):
    run = _run(mnist, tmp_path, "train")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("no perceptual network") == 1  # said once, then trained without it
    metrics = _metrics(tmp_path / "run")
    first, last = metrics[0], metrics[-1]
    assert last["step"] == 200 and last["loss/reconstruction"] < 0.5 * first["loss/reconstruction"]
    assert last["eval/codebook_usage"] > 0.2 and last["eval/psnr"] > 18
    # the exported tokenizer beats the untrained one on held-out digits
    from st_ar_hf.metrics import psnr as psnr_fn
    from st_ar_hf.training.data import center_crop_arr, decode_image, load_stream, to_pixel_values

    images = [center_crop_arr(decode_image(e["image"]), 16) for _, e in
              zip(range(64), load_stream(data_files=str(mnist / "test-*.parquet")).decode(False))]
    pixels = to_pixel_values(images)
    trained = LlamaGenVQVAE.from_pretrained(tmp_path / "run" / "vqvae")
    untrained = LlamaGenVQVAE(trained.config).eval()
    with torch.no_grad():
        scores = [psnr_fn(m(pixels).reconstruction.clamp(-1, 1).add(1).div(2), pixels.add(1).div(2)).mean().item()
                  for m in (trained, untrained)]
    assert scores[0] > scores[1] + 5
    assert "LlamaGen VQ image tokenizer" in (tmp_path / "run" / "vqvae" / "README.md").read_text()


def test_resume_with_discriminator_and_ema_equals_uninterrupted(mnist, tmp_path):
    settings = dict(max_train_steps=6, log_steps=1, checkpointing_steps=3, disc_start=2, disc_layers=2, disc_base_channels=8,
                    ema_decay=0.9, eval_steps=0)
    full = _run(mnist, tmp_path / "full", "full", **settings)
    assert full.returncode == 0, full.stderr[-3000:]
    first = _run(mnist, tmp_path / "resumed", "first", **{**settings, "max_train_steps": 3})
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(mnist, tmp_path / "resumed", "second", **settings, resume_from_checkpoint="latest")
    assert second.returncode == 0, second.stderr[-3000:]
    expected, got = _metrics(tmp_path / "full" / "run"), _metrics(tmp_path / "resumed" / "run")
    assert [m["step"] for m in got] == list(range(1, 7))
    assert "loss/discriminator" in expected[-1] and "loss/generator_adversarial" in expected[-1]
    for a, b in zip(expected, got):
        losses = sorted(name for name in a if name.startswith("loss/"))
        assert losses == sorted(name for name in b if name.startswith("loss/"))
        for name in losses:
            assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
    ema = LlamaGenVQVAE.from_pretrained(tmp_path / "full" / "run" / "vqvae")
    assert ema.config.codebook_size == 64


def test_var_residual_vqvae_trains_and_exports(mnist, tmp_path):
    run = _run(mnist, tmp_path, "var", model="var-vqvae", max_train_steps=60, log_steps=20, eval_steps=60,
               model_config={"base_channels": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "codebook_size": 64,
                             "codebook_embed_dim": 4, "patch_nums": [1, 2, 4]})
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = _metrics(tmp_path / "run")
    assert "loss/vq" in metrics[0] and "loss/codebook" not in metrics[0]
    assert metrics[-1]["loss/reconstruction"] < 0.8 * metrics[0]["loss/reconstruction"]  # 0.43 -> 0.31 here
    from st_ar_hf import VARVQVAE

    vqvae = VARVQVAE.from_pretrained(tmp_path / "run" / "vqvae")
    maps = vqvae.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert [m.shape[-1] for m in maps] == [1, 2, 4]
    card = (tmp_path / "run" / "vqvae" / "README.md").read_text()
    assert "VAR multi-scale residual VQVAE" in card and "from st_ar_hf import VARVQVAE" in card
    with pytest.raises(ValueError, match=r"--image_size 32 gives 8x8 latents, but VAR's patch_nums \[1, 2, 4\] end at 4"):
        parse_arguments(TokenizerTrainingArguments, ["--config", str(tmp_path / "var.yaml"), "--image_size", "32"]
                        ).check_model(vqvae.config)
