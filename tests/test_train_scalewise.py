"""`training/train_scalewise.py` end to end through `accelerate launch` on CPU: teacher forcing and SAR on tiny random
FlexVAR / VAR models (no pretrained weights exist offline) on the embedded MNIST digits, read through the real
streaming path."""

import json

import pytest
import torch
import yaml

from st_ar_hf import FlexVARForImageGeneration, LlamaGenVQVAE, STARPipeline, VARForImageGeneration, VARVQVAE
from st_ar_hf.training.arguments import ScaleWiseTrainingArguments, parse_arguments
from st_ar_hf.training.checkpointing import list_checkpoints
from st_ar_hf.training.data import write_embedded_dataset

from .conftest import tiny_flexvar_config, tiny_var_config, tiny_var_vqvae_config, tiny_vq_config
from .test_train_script import _kill_during, _launch, _metrics

SCALES = [1, 2, 3, 4, 6]  # 12 px digits, 2x downsampling: 6x6 maps, 66 tokens; FlexVAR's sampler can draw from it


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The digits, and a 'pretrained' tiny FlexVAR pipeline (random weights) to post-train."""
    root = tmp_path_factory.mktemp("scalewise")
    write_embedded_dataset(root / "mnist")
    torch.manual_seed(0)
    vqvae = LlamaGenVQVAE(tiny_vq_config(codebook_embed_dim=8))
    transformer = FlexVARForImageGeneration(tiny_flexvar_config(
        hidden_size=32, num_attention_heads=2, patch_nums=SCALES, class_dropout_prob=0.1))
    STARPipeline(transformer=transformer, vqvae=vqvae, id2label={i: str(i) for i in range(10)}).save_pretrained(root / "flexvar")
    var = VARForImageGeneration(tiny_var_config(hidden_size=32, num_attention_heads=2, patch_nums=SCALES))
    var_vqvae = VARVQVAE(tiny_var_vqvae_config(patch_nums=SCALES))
    STARPipeline(transformer=var, vqvae=var_vqvae, id2label={i: str(i) for i in range(10)}).save_pretrained(root / "var")
    return root


def _config(assets, tmp_path, **overrides):
    config = {
        "embedded_dataset_dir": str(assets / "mnist"), "model": str(assets / "flexvar"), "output_dir": str(tmp_path / "run"),
        "image_size": 12, "attn_implementation": "eager", "train_batch_size": 4, "learning_rate": 1e-3,
        "scale_lr": False, "max_train_steps": 6, "log_steps": 1, "validation_steps": 0, "validation_images_per_class": 1,
        "validation_max_classes": 2, "checkpointing_steps": 3, "report_to": "none", "shuffle_buffer": 50,
        "shuffle_input_shards": 1, "sigma": 0.5, **overrides,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sar_killed_during_a_checkpoint_save_resumes_with_the_losses_of_an_uninterrupted_run(assets, tmp_path):
    overrides = dict(checkpointing_steps=2, rollout_sampling=True, rollout_top_k=8)  # the sampled rollout's RNG too
    full = _launch(_config(assets, tmp_path / "full", **overrides), script="train_scalewise.py")
    assert full.returncode == 0, full.stderr[-3000:]
    config = _config(assets, tmp_path / "resumed", **overrides)
    _kill_during(config, tmp_path / "resumed" / "run" / "checkpoint-4.partial", script="train_scalewise.py")
    resumed = _launch(config, "--resume_from_checkpoint", "latest", script="train_scalewise.py")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _metrics(tmp_path / "full" / "run"), _metrics(tmp_path / "resumed" / "run")
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, got):
        for term in ("loss/tf", "loss/csf", "loss/rollout_agreement", "loss/loss", "lr"):
            assert a[term] == pytest.approx(b[term], rel=1e-5), (a["step"], term)
    assert all(m["loss/loss"] == pytest.approx(m["loss/tf"] + 0.5 * m["loss/csf"], rel=1e-5) for m in expected)

    pipeline_dir = tmp_path / "full" / "run" / "pipeline"
    card = (pipeline_dir / "README.md").read_text()
    assert "train_scalewise.py" in card and "SAR post-training" in card and "0.5 L_CSF" in card and "sampled" in card
    pipe = STARPipeline.from_pretrained(pipeline_dir)
    assert pipe.transformer.config.model_type == "flexvar" and not pipe.transformer.training
    assert pipe(["3"], generator=torch.Generator().manual_seed(0), output_type="np").images.shape == (1, 12, 12, 3)


def test_two_processes_train_sar_all_scales_with_identical_weights(assets, tmp_path):
    run = _launch(_config(assets, tmp_path, rollout_scales="all", max_train_steps=3), processes=2, port=29631,
                  script="train_scalewise.py")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "pipeline" / "training_summary.json").read_text())
    assert summary["images_per_process"] == [12, 12]
    assert summary["data_digest_per_process"][0] != summary["data_digest_per_process"][1]
    assert summary["weights_identical_across_processes"] is True


def test_teacher_forcing_from_scratch_after_training_a_tokenizer(assets, tmp_path):
    tokenizer = {"embedded_dataset_dir": str(assets / "mnist"), "image_size": 12, "model": "VQ-16",
                 "model_config": {"base_channels": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 32,
                                  "codebook_size": 64, "codebook_embed_dim": 8},
                 "train_batch_size": 4, "max_train_steps": 2, "log_steps": 1, "validation_steps": 0,
                 "checkpointing_steps": 2, "report_to": "none", "shuffle_input_shards": 1, "random_flip": False}
    (tmp_path / "tokenizer.yaml").write_text(yaml.safe_dump(tokenizer))
    config = _config(assets, tmp_path, sigma=0.0, model="flexvar-d16", tokenizer_config=str(tmp_path / "tokenizer.yaml"),
                     model_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                   "patch_nums": SCALES, "position_grid_size": 6}, max_train_steps=3)
    run = _launch(config, script="train_scalewise.py")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = _metrics(tmp_path / "run")
    assert "loss/csf" not in metrics[0] and metrics[0]["loss/loss"] == metrics[0]["loss/tf"]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-3"]
    assert "teacher forcing" in (tmp_path / "run" / "pipeline" / "README.md").read_text()


def test_var_post_trains_with_sar_over_all_scales(assets, tmp_path):
    run = _launch(_config(assets, tmp_path, model=str(assets / "var"), rollout_scales="all", max_train_steps=2,
                          checkpointing_steps=2), script="train_scalewise.py")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = _metrics(tmp_path / "run")
    assert all(m["loss/loss"] == pytest.approx(m["loss/tf"] + 0.5 * m["loss/csf"], rel=1e-5) for m in metrics)
    assert STARPipeline.from_pretrained(tmp_path / "run" / "pipeline").transformer.config.model_type == "var"


def _arguments(assets, tmp_path, *flags, **overrides) -> ScaleWiseTrainingArguments:
    return parse_arguments(ScaleWiseTrainingArguments, ["--config", str(_config(assets, tmp_path, **overrides)), *flags])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"sigma": -0.1}, "--sigma must be >= 0"),
    ({"rollout_scales": "first"}, "--rollout_scales must be last or all"),
    ({"rollout_top_k": 900}, r"\['--rollout_top_k'\] set the sampled rollout: add --rollout_sampling"),
    ({"model": "flexvar-d16"}, "SAR .* post-trains a pretrained scale-wise model: give --model a converted or trained"),
    ({"lr_schedule_total": 3}, "--lr_schedule_total 3 is shorter than"),
])
def test_bad_settings_fail_when_parsed(assets, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _arguments(assets, tmp_path, **overrides)


def test_settings_that_depend_on_the_models_fail_before_training(assets, tmp_path):
    args = _arguments(assets, tmp_path)
    flexvar, var = tiny_flexvar_config(patch_nums=SCALES), tiny_var_config(patch_nums=SCALES)
    llamagen_vq, var_vq = tiny_vq_config(codebook_embed_dim=8), tiny_var_vqvae_config(patch_nums=SCALES)
    with pytest.raises(ValueError, match="a flexvar transformer reads llamagen_vqvae codes, got a var_vqvae tokenizer"):
        args.check_model(flexvar, var_vq)
    with pytest.raises(ValueError, match="--vqvae has 64 codes of 4 dims; the transformer expects 64 of 8"):
        args.check_model(flexvar, tiny_vq_config())
    with pytest.raises(ValueError, match=r"--image_size 16: the tokenizer makes 8x8 code maps, but .* end at 6"):
        _arguments(assets, tmp_path, image_size=16).check_model(flexvar, llamagen_vq)
    with pytest.raises(ValueError, match="--random_scales: VAR learns one position embedding per position"):
        _arguments(assets, tmp_path, random_scales=True).check_model(var, var_vq)
    with pytest.raises(ValueError, match="--rollout_scales last is the released FlexVAR pass"):
        args.check_model(var, var_vq)
    with pytest.raises(ValueError, match="random_scales: FlexVAR's schedule sampler needs"):
        _arguments(assets, tmp_path, image_size=8).check_model(tiny_flexvar_config(), llamagen_vq)  # [1, 2, 4]


def test_a_dataset_with_more_classes_than_the_model_fails_before_training(assets, tmp_path):
    transformer = FlexVARForImageGeneration(tiny_flexvar_config(
        hidden_size=32, num_attention_heads=2, patch_nums=SCALES, num_classes=5))
    vqvae = LlamaGenVQVAE.from_pretrained(assets / "flexvar" / "vqvae")
    STARPipeline(transformer=transformer, vqvae=vqvae, id2label={i: str(i) for i in range(5)}).save_pretrained(tmp_path / "five")
    run = _launch(_config(assets, tmp_path, model=str(tmp_path / "five")), script="train_scalewise.py")
    assert run.returncode != 0 and "the dataset has 10 classes but the model --model" in run.stderr
    assert not list_checkpoints(tmp_path / "run")


def test_nonfinite_losses_skip_steps_then_stop_with_the_terms(assets, tmp_path):
    run = _launch(_config(assets, tmp_path, learning_rate=1e30, max_nonfinite_steps=2, max_grad_norm=1e30),
                  script="train_scalewise.py")
    assert run.returncode != 0
    assert "step skipped (1 in a row)" in run.stderr and "2 non-finite losses in a row" in run.stderr
    assert "'csf'" in run.stderr and "'loss'" in run.stderr
