"""`training/train.py` end to end through `accelerate launch` on CPU: tiny random models (no pretrained weights
exist offline) on the embedded MNIST digits, read through the real streaming path."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import PIL.ImageStat
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from st_ar_hf import LlamaGenVQVAE, STARPipeline
from st_ar_hf.hub import BackgroundUploader
from st_ar_hf.training.arguments import ARTrainingArguments, parse_arguments
from st_ar_hf.training.checkpointing import list_checkpoints
from st_ar_hf.training.data import write_embedded_dataset

from .conftest import tiny_gpt_config, tiny_vq_config
from .fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_embedded_dataset(root / "mnist")
    torch.manual_seed(0)
    LlamaGenVQVAE(tiny_vq_config(ch_mult=[1, 2, 2])).save_pretrained(root / "vqvae")  # 16 px -> 4x4 codes
    return root


def _config(assets, tmp_path, **overrides) -> Path:
    config = {
        "embedded_dataset_dir": str(assets / "mnist"), "vqvae": str(assets / "vqvae"), "output_dir": str(tmp_path / "run"),
        "image_size": 16, "model": "B", "attn_implementation": "eager",
        "model_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        "train_batch_size": 4, "learning_rate": 1e-3, "max_train_steps": 6, "log_steps": 1, "validation_steps": 0,
        "validation_images_per_class": 1, "validation_max_classes": 2, "checkpointing_steps": 3, "report_to": "none",
        "contrastive_layer": 1, "shuffle_buffer": 50, "shuffle_input_shards": 1, "ema_decay": 0.9,
        **overrides,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(config: Path, *flags: str, processes: int = 1, port: int = 29611, env: dict | None = None,
            script: str = "train.py") -> subprocess.CompletedProcess:
    launcher = [ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(port)] if processes > 1 \
        else ["--num_processes", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, str(ROOT / "training" / script), "--config", str(config), *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kill_during(config: Path, partial: Path, script: str = "train.py") -> None:
    """Launches a run and SIGKILLs it while `partial` (a checkpoint being saved) exists: frozen first with SIGSTOP,
    so the save is caught half-way, then killed with every process of the launch."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(ROOT / "training" / script), "--config", str(config)],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not partial.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    os.killpg(run.pid, signal.SIGSTOP)
    caught = partial.exists() and not partial.with_suffix("").exists()
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert caught, f"the run ended before {partial.name} could be caught"


def test_killed_during_a_checkpoint_save_resumes_with_the_losses_of_an_uninterrupted_run(assets, tmp_path):
    full = _launch(_config(assets, tmp_path / "full", checkpointing_steps=2, sample_accuracy_per_class=2))
    assert full.returncode == 0, full.stderr[-3000:]
    _kill_during(_config(assets, tmp_path / "resumed", checkpointing_steps=2),
                 tmp_path / "resumed" / "run" / "checkpoint-4.partial")
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "run")] == ["checkpoint-2"]
    resumed = _launch(_config(assets, tmp_path / "resumed", checkpointing_steps=2), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _metrics(tmp_path / "full" / "run"), _metrics(tmp_path / "resumed" / "run")
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, got):
        for term in ("loss/ar", "loss/mim", "loss/step", "loss/view", "loss/loss"):
            assert a[term] == pytest.approx(b[term], rel=1e-5), (a["step"], term)
    assert [p.name for p in list_checkpoints(tmp_path / "full" / "run")] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    pipeline_dir = tmp_path / "full" / "run" / "pipeline"
    assert sorted(p.name for p in pipeline_dir.iterdir() if p.suffix != ".py") == [  # and the pipeline's code
        "README.md", "model_index.json", "training_summary.json", "transformer", "vqvae"]  # no teacher, no optimiser
    card = (pipeline_dir / "README.md").read_text()
    assert "ST-AR self-guided training" in card and "mask ratio 0.25" in card and "MNIST" in card
    pipe = STARPipeline.from_pretrained(pipeline_dir)
    assert pipe.id2label[7] == "7, seven" and not pipe.transformer.training
    images = pipe(["seven"], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    grid = PIL.Image.open(tmp_path / "full" / "run" / "samples" / "samples-0000006.png")
    assert grid.height == 2 * (64 + 2) + 2 and grid.width > 64 + 4  # 2 classes x 1 image (x4), a label margin
    assert PIL.ImageStat.Stat(grid.crop((0, 0, grid.width - 68, grid.height)).convert("L")).extrema[0][0] < 128  # text
    accuracy = json.loads((tmp_path / "full" / "run" / "sample_accuracy.json").read_text())
    assert accuracy["samples_per_class"] == 2 and set(accuracy["per_class"]) == {str(c) for c in range(10)}
    assert 0 <= accuracy["sample_accuracy"] <= 1 and accuracy["classifier_held_out_accuracy"] > 0.8
    assert f"sample accuracy {accuracy['sample_accuracy']:.1%} at guidance 2.0, top-p 1.0" in full.stdout


def test_two_processes_see_different_examples_and_keep_identical_weights(assets, tmp_path):
    tokenizer = {"embedded_dataset_dir": str(assets / "mnist"), "image_size": 16, "model": "VQ-16",
                 "model_config": tiny_vq_config(ch_mult=[1, 2, 2]).to_diff_dict() | {"ch_mult": [1, 2, 2]},
                 "train_batch_size": 4, "max_train_steps": 2, "log_steps": 1, "validation_steps": 0,
                 "checkpointing_steps": 2, "report_to": "none", "shuffle_input_shards": 1, "random_flip": False}
    tokenizer["model_config"] = {k: v for k, v in tokenizer["model_config"].items()
                                 if k in ("base_channels", "ch_mult", "num_res_blocks", "z_channels", "codebook_size",
                                          "codebook_embed_dim")}
    tokenizer_config = tmp_path / "tokenizer.yaml"
    tokenizer_config.write_text(yaml.safe_dump(tokenizer))
    # ar_pass unmasked: the masked and plain student passes run as one DDP forward before the backward
    config = _config(assets, tmp_path, vqvae=None, tokenizer_config=str(tokenizer_config), max_train_steps=3,
                     ar_pass="unmasked")
    run = _launch(config, processes=2)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "pipeline" / "training_summary.json").read_text())
    assert summary["images_per_process"] == [12, 12]
    assert summary["data_digest_per_process"][0] != summary["data_digest_per_process"][1]
    assert summary["weights_identical_across_processes"] is True
    assert (tmp_path / "run" / "tokenizer" / "vqvae" / "model.safetensors").is_file()  # trained first, in 2 processes


def test_nonfinite_losses_skip_steps_then_stop_with_the_step_and_terms(assets, tmp_path):
    run = _launch(_config(assets, tmp_path, learning_rate=1e30, max_nonfinite_steps=2, mim_weight=0.0,
                          step_weight=0.0, view_weight=0.0))
    assert run.returncode != 0
    assert "non-finite ['ar', 'loss'], step skipped (1 in a row)" in run.stderr
    assert "2 non-finite losses in a row (last: ['ar', 'loss'])" in run.stderr


def test_failed_uploads_are_retried_and_never_stop_training(assets, tmp_path, caplog):
    run = _launch(_config(assets, tmp_path, max_train_steps=1, push_to_hub=True, hub_model_id="org/unreachable",
                          upload_retries=1, mim_weight=0.0, step_weight=0.0, view_weight=0.0))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "upload of" in run.stderr and "failed (attempt 1/1)" in run.stderr
    uploader = BackgroundUploader("org/unreachable", retries=3, backoff_s=0.0)
    uploader.upload(tmp_path, "test")
    uploader.wait()
    assert uploader.failures == [str(tmp_path)]
    assert caplog.text.count("failed (attempt") == 3


def test_push_to_hub_uploads_the_pipeline_and_no_training_state(assets, tmp_path):
    """Against tests/fake_hub.py, a loopback stand-in for the Hub's create/preupload/commit/download calls."""
    with FakeHub(tmp_path / "hub") as endpoint:
        run = _launch(_config(assets, tmp_path, max_train_steps=2, checkpointing_steps=1, push_to_hub=True,
                              hub_model_id="org/trained"),
                      env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "fake",
                           "HF_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert {"optimizer.bin", "teacher.safetensors", "training_state.json"} <= {p.name for p in checkpoint.iterdir()}
    repo, pipeline = tmp_path / "hub" / "org" / "trained", tmp_path / "run" / "pipeline"
    files = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert files == {str(p.relative_to(pipeline)) for p in pipeline.rglob("*") if p.is_file()}  # the export, and only it
    card = ModelCard.load(repo / "README.md")
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.datasets == ["ylecun/mnist"]
    assert 'STARPipeline.from_pretrained("org/trained")' in card.content


def test_bad_settings_fail_before_training_with_the_setting_named(assets, tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['mask_ration'\]"):
        parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path, mask_ration=0.3))])
    args = parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path, contrastive_layer=3))])
    with pytest.raises(ValueError, match="--contrastive_layer 3 is outside the model's layers 1..2"):
        args.check_model(tiny_gpt_config(num_hidden_layers=2), tiny_vq_config())
    args = parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path)), "--num_positions", "17"])
    with pytest.raises(ValueError, match="--num_positions 17 exceeds the sequence of 16 tokens"):
        args.check_model(tiny_gpt_config(block_size=16), tiny_vq_config())
    unset = parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path)), "--vqvae", "null",
                                                  "--tokenizer_config", "t.yaml", "--num_classes", "null"])
    assert unset.vqvae is None and unset.num_classes is None  # `null` unsets what the config gave, as in YAML
    with pytest.raises(ValueError, match="--ar_pass must be one of masked, unmasked, split, got 'both'"):
        parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path)), "--ar_pass", "both"])
    with pytest.raises(ValueError, match="--sample_accuracy_per_class 5: expected 0, or N > 0 with --embedded_dataset_dir"):
        parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path, embedded_dataset_dir=None,
                                                                      train_data_files="x/*.parquet")),
                                              "--sample_accuracy_per_class", "5"])
    with pytest.raises(ValueError, match="--num_views must lie in \\[1, 5\\] \\(the 5 crops without flips\\), got 6"):
        parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path)), "--random_flip", "false",
                                              "--num_views", "6"])
    with pytest.raises(ValueError, match="--view_weight > 0 needs --num_views >= 2"):
        parse_arguments(ARTrainingArguments, ["--config", str(_config(assets, tmp_path)), "--num_views", "1"])
    run = _launch(_config(assets, tmp_path, num_classes=5))
    assert run.returncode != 0 and "the dataset has 10 classes but --num_classes is 5" in run.stderr
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def test_extracted_code_shards_train_and_resume_interrupted_extraction(assets, tmp_path):
    extract = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(ROOT / "training" / "extract_codes.py"), "--embedded_dataset_dir",
               str(assets / "mnist"), "--vqvae", str(assets / "vqvae"), "--image_size", "16", "--output_dir",
               str(tmp_path / "codes"), "--shard_size", "8", "--batch_size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.run([*extract, "--max_examples", "16"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    killed = subprocess.Popen([*extract, "--max_examples", "24"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    while not list((tmp_path / "codes").glob("train-00000-00002.parquet*")) and killed.poll() is None:
        time.sleep(0.0005)  # SIGKILL as the third shard is being written
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    second = subprocess.run([*extract, "--max_examples", "24"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "codes").glob("*.parquet"))
    assert shards == ["train-00000-00000.parquet", "train-00000-00001.parquet", "train-00000-00002.parquet"]
    from datasets import load_dataset

    codes = load_dataset("parquet", data_files=str(tmp_path / "codes" / "*.parquet"), split="train")
    assert len(codes) == 24 and codes.features["label"].names[7] == "7, seven"
    assert torch.tensor(codes[0]["codes"]).shape == (10, 16)  # ten crops x 4x4 codes

    # the same images encoded directly: crop 4 is the centre crop of the 17 px centre crop
    from st_ar_hf.training.data import crop_views, decode_image, load_stream, to_pixel_values

    example = next(iter(load_stream(data_files=str(assets / "mnist" / "train-*.parquet")).decode(False)))
    vqvae = LlamaGenVQVAE.from_pretrained(assets / "vqvae")
    direct = vqvae.encode(to_pixel_values(crop_views(decode_image(example["image"]), 16))).indices.flatten(1)
    assert torch.equal(direct, torch.tensor(codes[0]["codes"])) and codes[0]["label"] == example["label"]
    assert "24 images of the embedded MNIST-5k digits" in (tmp_path / "codes" / "README.md").read_text()

    info = json.loads((tmp_path / "codes" / "codes_info.json").read_text())
    assert info["vqvae"] == str((assets / "vqvae").resolve()) and info["grid_size"] == 4 and info["num_crops"] == 10
    run = _launch(_config(assets, tmp_path, embedded_dataset_dir=None, train_codes=str(tmp_path / "codes"),
                          vqvae=None, max_train_steps=2))  # the tokenizer comes from codes_info.json
    assert run.returncode == 0, run.stderr[-3000:]
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "training" / "configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(config):
    """Each config parses into its script's arguments and passes their checks (those made for a dataset given on the
    command line get one)."""
    from st_ar_hf.training.arguments import (
        ARTrainingArguments, ScaleWiseTrainingArguments, TokenizerTrainingArguments, parse_arguments,
    )

    name = config.removesuffix(".yaml")
    cls = (TokenizerTrainingArguments if "tokenizer" in name or name == "vq16" else
           ScaleWiseTrainingArguments if name.startswith(("flexvar", "sar")) else ARTrainingArguments)
    argv = ["--config", str(ROOT / "training" / "configs" / config)]
    try:
        parse_arguments(cls, argv)
    except ValueError as error:
        assert "give exactly one data source" in str(error), error
        images = ["--dataset", "ILSVRC/imagenet-1k"] + (["--vqvae", "converted/vq16"] if cls is ARTrainingArguments else [])
        parse_arguments(cls, argv + images)
