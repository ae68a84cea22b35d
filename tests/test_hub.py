"""Publishing: `st-ar push`, the cards it renders, `BackgroundUploader`, and the CLI's errors on bad input.

Push and pull run against `tests/fake_hub.py`, a loopback stand-in that implements the few Hub API calls involved
(create repo, preupload, commit, repo info, file tree, resolve), never the real Hub. Everything that needs it runs in
a subprocess, since huggingface_hub reads HF_ENDPOINT when it is imported."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from st_ar_hf import LlamaGenForImageGeneration, STARPipeline
from st_ar_hf.cli import main
from st_ar_hf.model_cards import code_shards_card, converted_model_card, training_datasets

from .fake_hub import FakeHub
from .test_pipeline_star import ID2LABEL

NETWORK = "EfficientNet-Lite0 (ImageNet; not Inception: not comparable with published FIDs)"
RESULTS = {"fid": 44.8, "sfid": 90.5, "inception_score": 1.56, "precision": 0.06, "recall": 0.23,
           "num_samples": 500, "num_reference": 500, "feature_network": NETWORK}
SUMMARY = {"steps": 6, "images_per_process": [24], "arguments": {
    "embedded_dataset_dir": "runs/data/mnist5k", "model": "B", "ar_weight": 1.0, "mim_weight": 1.0,
    "step_weight": 0.5, "view_weight": 0.5, "mask_ratio": 0.25, "contrastive_layer": 1, "num_positions": 4,
    "num_views": 2, "temperature": 1.0, "ema_decay": 0.9, "image_size": 8}}


@pytest.fixture
def run_dir(tiny_gpt, tiny_vq, tmp_path) -> Path:
    """A training output dir as train.py leaves it, with evaluation.json beside and a checkpoint holding training
    state that must stay local."""
    run = tmp_path / "run"
    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label=ID2LABEL).save_pretrained(run / "pipeline")
    (run / "pipeline" / "training_summary.json").write_text(json.dumps(SUMMARY))
    (run / "evaluation.json").write_text(json.dumps(RESULTS))
    (run / "checkpoint-6").mkdir()
    for name in ("optimizer.bin", "training_state.json", "teacher.safetensors", "random_states_0.pkl", "model.safetensors"):
        (run / "checkpoint-6" / name).write_bytes(b"training state")
    return run


def _subprocess(args: list[str], tmp_path: Path, endpoint: str) -> subprocess.CompletedProcess:
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0", "HF_TOKEN": "fake",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def _st_ar(*args: str, tmp_path: Path, endpoint: str) -> subprocess.CompletedProcess:
    return _subprocess(["-m", "st_ar_hf.cli", *args], tmp_path, endpoint)


def _python_block(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_push_uploads_pipeline_card_and_eval_results_but_not_checkpoints(run_dir, tmp_path):
    pipe = STARPipeline.from_pretrained(run_dir / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    torch.save(pipe([3, "jay"], output_type="latent", generator=torch.Generator().manual_seed(5)).tokens,
               tmp_path / "expected.pt")
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _st_ar("push", str(run_dir), "--repo-id", "org/st-ar-tiny", tmp_path=tmp_path, endpoint=endpoint)
        assert push.returncode == 0, push.stderr[-3000:]
        repo = tmp_path / "hub" / "org" / "st-ar-tiny"
        assert _files(repo) == _files(run_dir / "pipeline")  # no checkpoint, optimiser, teacher or random state
        assert not any("checkpoint" in name or name.endswith((".bin", ".pkl")) for name in _files(repo))

        card = ModelCard.load(repo / "README.md")
        assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.library_name == "diffusers"
        assert card.data.datasets == ["ylecun/mnist"] and card.data.model_name == "org/st-ar-tiny"
        results = {r.metric_type: r for r in card.data.eval_results}
        assert set(results) == {"fid", "sfid", "inception_score", "precision", "recall"}
        assert results["fid"].metric_value == 44.8 and results["fid"].metric_name == f"FID, {NETWORK}"
        assert results["fid"].dataset_type == "ylecun/mnist" and "500 reference images" in results["fid"].dataset_name
        assert f"| FID, {NETWORK} | 44.8 |" in card.content  # the results table of the card body
        assert "ST-AR self-guided training" in card.content

        snippet = _python_block(card.content)  # run as written: it names the repo id, served by the loopback hub
        assert 'DiffusionPipeline.from_pretrained("org/st-ar-tiny", trust_remote_code=True)' in snippet
        pull = _subprocess(["-c", snippet + (
            "pipe.set_progress_bar_config(disable=True)\n"
            "out = pipe([3, 'jay'], output_type='latent', generator=torch.Generator().manual_seed(5))\n"
            "assert torch.equal(out.tokens, torch.load('expected.pt'))\n"
            "from huggingface_hub import ModelCard\n"
            "card = ModelCard.load('org/st-ar-tiny'); card.validate()\n"  # through the loopback hub
            "assert len(card.data.eval_results) == 5\n")], tmp_path, endpoint)
        assert pull.returncode == 0, pull.stderr[-3000:]
        assert (tmp_path / "sample.png").is_file()


def test_push_of_a_scale_wise_pipeline_renders_its_family_card(tiny_var, tiny_var_vqvae, tmp_path):
    folder = tmp_path / "var-d2"
    pipe = STARPipeline(transformer=tiny_var, vqvae=tiny_var_vqvae, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    torch.save(pipe([3, "jay"], output_type="latent", generator=torch.Generator().manual_seed(5)).tokens,
               tmp_path / "expected.pt")
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _st_ar("push", str(folder), "--repo-id", "org/var-tiny", "--eval-results", "results.json",
                      "--eval-dataset", "ILSVRC/imagenet-1k", "--base-model", "FoundationVision/var",
                      tmp_path=tmp_path, endpoint=endpoint)
        assert push.returncode == 0, push.stderr[-3000:]
        card = ModelCard.load(tmp_path / "hub" / "org" / "var-tiny" / "README.md")
        assert "var" in card.data.tags and "llamagen" not in card.data.tags
        assert card.data.base_model == "FoundationVision/var" and len(card.data.eval_results) == 5
        assert "`VARForImageGeneration`" in card.content and "scale by scale (3 steps, from 1x1 to 4x4)" in card.content
        assert "Sampling follows VAR" in card.content
        snippet = _python_block(card.content)
        assert "guidance_scale=1.5" in snippet
        pull = _subprocess(["-c", snippet + (
            "pipe.set_progress_bar_config(disable=True)\n"
            "out = pipe([3, 'jay'], output_type='latent', generator=torch.Generator().manual_seed(5))\n"
            "assert all(torch.equal(a, b) for a, b in zip(out.tokens, torch.load('expected.pt')))\n")],
            tmp_path, endpoint)
        assert pull.returncode == 0, pull.stderr[-3000:]


def test_include_checkpoints_uploads_them_under_checkpoints(run_dir, tmp_path):
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _st_ar("push", str(run_dir), "--repo-id", "org/with-state", "--include-checkpoints",
                      "--eval-results", str(run_dir / "evaluation.json"), tmp_path=tmp_path, endpoint=endpoint)
        assert push.returncode == 0, push.stderr[-3000:]
        pull = _subprocess(["-c", "import os\nfrom st_ar_hf import STARPipeline\n"
                            "folder = STARPipeline.download('org/with-state')\n"
                            "assert os.path.isfile(os.path.join(folder, 'model_index.json'))\n"
                            "assert not os.path.exists(os.path.join(folder, 'checkpoints')), os.listdir(folder)\n"],
                           tmp_path, endpoint)
    assert push.stdout.count("pushed http://127.0.0.1") == 2  # the pipeline, then the checkpoints
    files = _files(tmp_path / "hub" / "org" / "with-state")
    assert {"checkpoints/checkpoint-6/optimizer.bin", "checkpoints/checkpoint-6/teacher.safetensors",
            "model_index.json", "README.md"} <= files
    assert pull.returncode == 0, pull.stderr[-3000:]  # loading the pipeline does not download the training state


def test_tokenizer_push_renders_its_card_with_reconstruction_results(tiny_vq, tmp_path):
    run = tmp_path / "tokenizer-run"
    tiny_vq.save_pretrained(run / "vqvae")
    (run / "vqvae" / "training_summary.json").write_text(json.dumps(
        {"steps": 600, "arguments": {"dataset": "ILSVRC/imagenet-1k", "model": "VQ-16", "image_size": 16}}))
    reconstruction = {"psnr": 23.7, "ssim": 0.91, "rfid": 2.19, "feature_network": "ADM Inception-v3"}
    (tmp_path / "rec.json").write_text(json.dumps(reconstruction))
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _st_ar("push", str(run), "--repo-id", "org/vq-tiny", "--eval-results", "rec.json",
                      tmp_path=tmp_path, endpoint=endpoint)
        assert push.returncode == 0, push.stderr[-3000:]
        card = ModelCard.load(tmp_path / "hub" / "org" / "vq-tiny" / "README.md")
        snippet = _python_block(card.content)
        pull = _subprocess(["-c", snippet + "assert reconstruction.shape == (1, 3, 16, 16)\n"], tmp_path, endpoint)
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.datasets == ["ILSVRC/imagenet-1k"]
    names = {r.metric_type: r.metric_name for r in card.data.eval_results}
    assert names == {"rfid": "rFID, ADM Inception-v3", "psnr": "PSNR (dB)", "ssim": "SSIM"}
    assert "trained with `training/train_tokenizer.py` of\nst-ar-hf for 600 steps" in card.content


def test_background_uploader_pushes_a_dataset_folder(tmp_path):
    folder = tmp_path / "codes"
    folder.mkdir()
    (folder / "train-00000.parquet").write_bytes(b"codes")
    (folder / "progress-0.json").write_text("{}")
    script = ("from st_ar_hf.hub import BackgroundUploader\n"
              "uploader = BackgroundUploader('org/codes', retries=1, repo_type='dataset')\n"
              "uploader.upload('codes', 'code shards', ignore_patterns=['progress-*.json'])\n"
              "uploader.wait()\n"
              "assert uploader.failures == [], uploader.failures\n")
    with FakeHub(tmp_path / "hub") as endpoint:
        run = _subprocess(["-c", script], tmp_path, endpoint)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _files(tmp_path / "hub" / "datasets" / "org" / "codes") == {"train-00000.parquet"}


def _cli_error(args: list[str], capsys) -> str:
    """Runs `st-ar` in this process, with the Hub offline: exit code 2 proves that the input was refused before
    any upload was tried (an upload would fail with exit code 1)."""
    assert main(args) == 2
    return capsys.readouterr().err


def test_bad_push_inputs_fail_before_any_upload_naming_the_argument(run_dir, tiny_gpt, tmp_path, capsys):
    push = ["push", "--repo-id", "org/x"]
    (tmp_path / "empty").mkdir()
    assert "RUN_DIR" in _cli_error([*push, str(tmp_path / "empty")], capsys)
    assert "RUN_DIR" in _cli_error([*push, str(tmp_path / "missing")], capsys)
    tiny_gpt.save_pretrained(tmp_path / "gpt")
    assert "neither a STARPipeline nor a LlamaGen tokenizer" in _cli_error([*push, str(tmp_path / "gpt")], capsys)
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    assert "DDPMPipeline pipeline, not a STARPipeline" in _cli_error([*push, str(tmp_path / "ddpm")], capsys)

    for name, content, message in [
        ("broken.json", "{'fid': 3", "--eval-results broken.json: Expecting property name"),
        ("list.json", "[1, 2]", "--eval-results list.json: expected a JSON object, got list"),
        ("text.json", json.dumps({**RESULTS, "fid": "n/a"}), "--eval-results text.json: 'fid' must be a finite number"),
        ("nonet.json", json.dumps({"fid": 3.0}), "--eval-results nonet.json: 'feature_network'"),
        ("nometric.json", json.dumps({"feature_network": NETWORK}), "--eval-results nometric.json: no metric among"),
    ]:
        (tmp_path / name).write_text(content)
        assert message in _cli_error([*push, str(run_dir), "--eval-results", str(tmp_path / name)], capsys).replace(
            str(tmp_path) + "/", "")
    assert "--eval-results" in _cli_error([*push, str(run_dir), "--eval-results", str(tmp_path / "none.json")], capsys)

    (run_dir / "pipeline" / "training_summary.json").unlink()  # the training data is then unknown
    assert "needs --eval-dataset" in _cli_error([*push, str(run_dir)], capsys)
    assert "--include-checkpoints" in _cli_error([*push, str(run_dir / "pipeline"), "--include-checkpoints"], capsys)
    assert "--repo-id 'not a repo id'" in _cli_error(["push", str(run_dir), "--repo-id", "not a repo id"], capsys)


def test_pulling_a_missing_or_foreign_repo_gives_a_clear_cli_error(tmp_path):
    (tmp_path / "hub" / "org" / "ddpm").mkdir(parents=True)
    (tmp_path / "hub" / "org" / "ddpm" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with FakeHub(tmp_path / "hub") as endpoint:
        missing = _st_ar("sample", "--model", "org/missing", "--labels", "1", "--output-file", "x.png", tmp_path=tmp_path,
                         endpoint=endpoint)
        foreign = _st_ar("sample", "--model", "org/ddpm", "--labels", "1", "--output-file", "x.png", tmp_path=tmp_path,
                         endpoint=endpoint)
    assert missing.returncode == 2 and "--model 'org/missing' is neither a local folder nor a Hub repo" in missing.stderr
    assert foreign.returncode == 2 and "holds a DDPMPipeline pipeline, not a STARPipeline" in foreign.stderr
    assert "Traceback" not in missing.stderr + foreign.stderr


def test_converted_card_snippet_runs_with_the_directory_substituted(tiny_gpt, tmp_path):
    tiny_gpt.save_pretrained(tmp_path / "gpt")
    card = converted_model_card(tiny_gpt, "`c2i_B_256.pt`", "llamagen-gpt")
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.datasets == ["ILSVRC/imagenet-1k"]
    assert card.data.base_model == "FoundationVision/LlamaGen"
    snippet = _python_block(card.content).replace("path/to/this/directory", str(tmp_path / "gpt"))
    namespace = {}
    exec(snippet, namespace)
    assert isinstance(namespace["model"], LlamaGenForImageGeneration)


def test_code_shards_card_links_the_source_data_set():
    facts = dict(image_size=16, crop_range=1.1, num_crops=2, grid_size=4, codebook_size=64, num_examples=8, num_skipped=0)
    card = code_shards_card("org/vq", "the embedded MNIST-5k digits", training_datasets({"embedded_dataset_dir": "d"}),
                            **facts)
    assert card.data.source_datasets == ["extended|ylecun/mnist"]
    assert card.data.task_categories == ["unconditional-image-generation"]
    local = code_shards_card("org/vq", "shards/*.parquet", training_datasets({"train_data_files": "shards/*.parquet"}),
                             **facts)
    assert local.data.source_datasets is None


def test_pipeline_push_to_hub_keeps_its_own_card(run_dir, tmp_path):
    """`pipe.push_to_hub` (diffusers' name) through the loopback stand-in: the card is ours, not diffusers' generic one."""
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _subprocess(["-c", "from st_ar_hf import STARPipeline\n"
                            f"pipe = STARPipeline.from_pretrained({str(run_dir / 'pipeline')!r})\n"
                            "print(pipe.push_to_hub('org/direct').commit_url)\n"], tmp_path, endpoint)
    assert push.returncode == 0, push.stderr[-3000:]
    assert push.stdout.startswith("http://127.0.0.1")
    files = _files(tmp_path / "hub" / "org" / "direct")
    assert {"model_index.json", "transformer/model.safetensors", "vqvae/model.safetensors", "README.md"} <= files
    card = ModelCard.load(tmp_path / "hub" / "org" / "direct" / "README.md")
    assert "st-ar-hf" in card.data.tags and "STARPipeline.from_pretrained" in card.content


def test_push_never_runs_the_code_the_folder_carries(run_dir, tmp_path):
    """The export carries its code for users without the package; `st-ar push` renders the card with the package's
    classes, so code planted in the folder's files does not run (it is uploaded as it is, for its readers to judge)."""
    folder = run_dir / "pipeline"
    for code in (folder / "pipeline_star.py", *folder.glob("*/*.py")):
        code.write_text(code.read_text() + f"\nopen({str(tmp_path / 'ran')!r}, 'a').write('{code.name}')\n")
    with FakeHub(tmp_path / "hub") as endpoint:
        push = _st_ar("push", str(run_dir), "--repo-id", "org/planted", tmp_path=tmp_path, endpoint=endpoint)
    assert push.returncode == 0, push.stderr[-3000:]
    assert not (tmp_path / "ran").exists()
    assert (tmp_path / "hub" / "org" / "planted" / "README.md").is_file()
