"""training/linear_probe.py: the probe learns what is linearly separable, the script runs end to end on the
embedded digits with a tiny random pipeline (no pretrained weights offline), and bad settings name the flag."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from st_ar_hf import STARPipeline
from st_ar_hf.training.arguments import parse_arguments
from st_ar_hf.training.data import write_embedded_dataset

from .conftest import tiny_gpt_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("linear_probe", ROOT / "training" / "linear_probe.py")
linear_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(linear_probe)


def test_probe_separates_separable_features_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=generator)
    separable = torch.randn(400, 16, generator=generator) * 0.1
    separable[torch.arange(400), labels] += 3.0  # class c lifts feature c
    args = parse_arguments(linear_probe.LinearProbeArguments, ["--embedded_dataset_dir", "x", "--model", "m",
                                                               "--epochs", "20", "--batch_size", "64", "--learning_rate", "0.05"])
    accuracy = linear_probe.train_probe(args, separable[:300], labels[:300], separable[300:], labels[300:], 4, "cpu")
    assert accuracy > 0.95
    noise = torch.randn(400, 16, generator=generator)
    assert linear_probe.train_probe(args, noise[:300], labels[:300], noise[300:], labels[300:], 4, "cpu") < 0.5


def test_bad_layer_and_steps_name_the_flag():
    args = parse_arguments(linear_probe.LinearProbeArguments, ["--embedded_dataset_dir", "x", "--model", "m",
                                                               "--layer", "3", "--steps", "4,17"])
    with pytest.raises(ValueError, match="--layer 3 is outside the model's layers 1..2"):
        args.check_model(tiny_gpt_config())
    args.layer = 2
    with pytest.raises(ValueError, match=r"--steps \[17\] are outside 1..16"):
        args.check_model(tiny_gpt_config())
    with pytest.raises(ValueError, match="--steps must be comma-separated integers"):
        parse_arguments(linear_probe.LinearProbeArguments, ["--embedded_dataset_dir", "x", "--model", "m", "--steps", "a,b"])


def test_linear_probe_script_on_embedded_digits(tmp_path, tiny_gpt, tiny_vq):
    write_embedded_dataset(tmp_path / "mnist")
    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: str(i) for i in range(10)}).save_pretrained(tmp_path / "pipe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "training" / "linear_probe.py"),
         "--embedded_dataset_dir", str(tmp_path / "mnist"), "--model", str(tmp_path / "pipe"), "--layer", "2",
         "--steps", "1,8,16", "--max_train_images", "300", "--max_eval_images", "100", "--epochs", "3",
         "--batch_size", "50", "--output_dir", str(tmp_path / "probe")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert set(results["top1"]) == {"1", "8", "16"} and results["num_train"] == 300 and results["num_eval"] == 100
    assert all(0.0 <= value <= 1.0 for value in results["top1"].values())
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 1000


def test_attention_analysis_masses_sum_to_one_and_maps_are_written(tmp_path, tiny_gpt, tiny_vq):
    spec = importlib.util.spec_from_file_location("attention_maps", ROOT / "training" / "attention_maps.py")
    attention_maps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(attention_maps)
    write_embedded_dataset(tmp_path / "mnist")
    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: str(i) for i in range(10)}).save_pretrained(tmp_path / "pipe")
    flags = ["--embedded_dataset_dir", str(tmp_path / "mnist"), "--model", str(tmp_path / "pipe"), "--num_images", "4",
             "--output_dir", str(tmp_path / "attention")]
    summary = attention_maps.main(parse_arguments(attention_maps.AttentionArguments, flags))
    assert len(summary["class_token"]) == 2  # one entry per layer
    for masses in zip(*summary.values()):
        assert sum(masses) == pytest.approx(1.0, abs=1e-5) and min(masses) >= 0
    assert (tmp_path / "attention" / "attention_maps.png").is_file() and (tmp_path / "attention" / "receptive_field.png").is_file()
    with pytest.raises(ValueError, match="--query_step 17 is outside 1..16"):
        attention_maps.main(parse_arguments(attention_maps.AttentionArguments, [*flags, "--query_step", "17"]))
