"""Prologue training: the phase-1 objective (the prior's CE reaches the encoder through the prologue one-hot only),
`train_tokenizer.py` with the joint prior, `extract_codes.py` writing AR sequences, and `train.py` training a Prologue
AR on them, end to end on the embedded MNIST digits with tiny models; bad settings named before training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModel

from st_ar_hf import PrologueForImageGeneration, PrologueVQVAE, STARPipeline
from st_ar_hf.training.arguments import TokenizerTrainingArguments
from st_ar_hf.training.data import write_embedded_dataset
from st_ar_hf.training.prologue import ProloguePriorObjective, build_prior, drop_visual_inputs, prior_sequence
from st_ar_hf.training.vq_losses import LeCamRegularizer, r1_penalty

from .conftest import tiny_prologue_tokenizer_config

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TOKENIZER = {"image_size": 16, "patch_size": 4, "hidden_size": 64, "num_encoder_layers": 1, "num_encoder_heads": 1,
             "decoder_hidden_size": 64, "num_decoder_layers": 1, "num_decoder_heads": 1, "num_prologue_tokens": 2,
             "codebook_size": 32, "prologue_codebook_size": 16, "codebook_embed_dim": 8}
PRIOR = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1}


def test_prior_sequence_and_visual_dropout():
    sequence = prior_sequence(torch.tensor([[1, 2]]), torch.tensor([[[3, 4], [5, 6]]]), 32, 16)
    assert sequence.tolist() == [[33, 34, 48, 3, 4, 5, 6]]  # prologue + 32, EOS = 32 + 16, visual row-major
    assert prior_sequence(None, torch.tensor([[[3, 4]]]), 32, 16).tolist() == [[3, 4]]
    prior = build_prior(tiny_prologue_tokenizer_config(num_prologue_tokens=2), "S", PRIOR)
    tokens = prior_sequence(torch.zeros(400, 2, dtype=torch.long), torch.ones(400, 16, dtype=torch.long), 64, 16)
    torch.manual_seed(0)
    inputs = drop_visual_inputs(tokens, prior.config, 0.5)
    dropped = (inputs[:, 3:] == 80).all(1)
    assert 150 < dropped.sum() < 250 and (inputs[~dropped] == tokens[~dropped]).all()
    assert (inputs[:, :3] == tokens[:, :3]).all()  # the prologue and the EOS stay


def test_encoder_terms_reach_the_one_hot_and_not_the_prior():
    torch.manual_seed(0)
    tokenizer = PrologueVQVAE(tiny_prologue_tokenizer_config()).train()
    prior = build_prior(tokenizer.config, "S", PRIOR).train()
    encoded = tokenizer.encode(torch.rand(3, 3, 32, 32) * 2 - 1)
    objective = ProloguePriorObjective(prologue_weight=3.0, visual_weight=2.0, visual_dropout=0.0)
    terms = objective.encoder_terms(prior, encoded.prologue_indices, encoded.indices, encoded.prologue_one_hot)
    sequence = prior_sequence(encoded.prologue_indices, encoded.indices, 64, 16)  # [3, 4 + 1 + 16]
    null = torch.full((3,), prior.config.null_class_id)
    per_token = prior(input_ids=sequence[:, :-1], class_labels=null, labels=sequence, loss_reduction="none").loss
    assert torch.allclose(terms["prior_prologue"], 3.0 * per_token[:, :5].sum(1).mean() / 21, atol=1e-6)
    assert torch.allclose(terms["prior_visual"], 2.0 * per_token[:, 5:].sum(1).mean() / 21, atol=1e-6)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in prior.parameters())  # the prior's weights are constants in sub-step A
    assert tokenizer.encoder.prologue_queries.grad.abs().sum() > 0
    assert tokenizer.prologue_quantizer.embedding.weight.grad.abs().sum() > 0
    assert tokenizer.decoder.to_patches.weight.grad is None and tokenizer.quantizer.embedding.weight.grad is None
    prior_terms = objective.prior_terms(prior, encoded.prologue_indices, encoded.indices)
    assert torch.allclose(prior_terms["prior"], per_token.mean(), atol=1e-6)
    prior_terms["prior"].backward()
    assert prior.lm_head.weight.grad.abs().sum() > 0


def test_lecam_and_r1_by_hand():
    lecam = LeCamRegularizer(decay=0.5)
    real, fake = torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 3.0]])
    penalty = lecam(real, fake)  # the means move first: real 0.5, fake 0.5
    assert (lecam.real_mean.item(), lecam.fake_mean.item()) == (0.5, 0.5)
    assert torch.isclose(penalty, torch.tensor((1.5**2 + 0) / 2 + (1.5**2 + 0) / 2))
    # R1 of D(x) = sum(w * x): the gradient is w everywhere, so the penalty is sum(w^2) / 2 per image
    weight = torch.randn(1, 3, 4, 4, requires_grad=True)
    pixels = torch.randn(2, 3, 4, 4).requires_grad_()
    r1 = r1_penalty((pixels * weight).sum(dim=(1, 2, 3)), pixels)
    assert torch.isclose(r1, weight.pow(2).sum() / 2)
    r1.backward()  # double backward reaches the discriminator's weights
    assert torch.allclose(weight.grad, weight)


def test_bad_prior_settings_are_named():
    with pytest.raises(ValueError, match="a prior loss needs a tokenizer with a prologue quantiser, got a prologue_tokenizer "
                                         "with 0 prologue tokens"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", image_size=32, prior_prologue_weight=3.0).check_model(
            tiny_prologue_tokenizer_config(num_prologue_tokens=0))
    from st_ar_hf import LlamaGenVQVAEConfig

    with pytest.raises(ValueError, match="got a llamagen_vqvae"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", prior_visual_weight=1.0).check_model(LlamaGenVQVAEConfig())
    with pytest.raises(ValueError, match="--prior_visual_dropout must be in \\[0, 1\\)"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", prior_visual_dropout=1.0)
    with pytest.raises(ValueError, match="--image_size 24 differs from the tokenizer's 32"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", image_size=24).check_model(tiny_prologue_tokenizer_config())
    with pytest.raises(ValueError, match="--disc_loss must be hinge or vanilla"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", disc_loss="wasserstein")
    with pytest.raises(ValueError, match="--disc_r1_interval must be >= 1"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", disc_r1_interval=0)
    with pytest.raises(ValueError, match="--train_visual false trains the prologue path by the prior's CE alone"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", train_visual=False)
    with pytest.raises(ValueError, match="give a Prologue-Post tokenizer .* got a prologue_tokenizer with 0 prologue "
                                         "encoder layers"):
        TokenizerTrainingArguments(embedded_dataset_dir="x", image_size=32, train_visual=False,
                                   prior_visual_weight=1.0).check_model(tiny_prologue_tokenizer_config())


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return write_embedded_dataset(tmp_path_factory.mktemp("prologue") / "mnist")


def _launch(script: str, config: dict, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    return subprocess.run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                           "no", "--dynamo_backend", "no", str(ROOT / "training" / script), "--config", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def phase1(mnist, tmp_path_factory):
    """A tiny joint Prologue tokenizer (60 steps) and its code shards."""
    tmp_path = tmp_path_factory.mktemp("phase1")
    run = _launch("train_tokenizer.py", {
        "embedded_dataset_dir": str(mnist), "output_dir": str(tmp_path / "tokenizer"), "image_size": 16,
        "model": "prologue-b", "model_config": TOKENIZER, "train_batch_size": 16, "learning_rate": 2e-3,
        "max_train_steps": 60, "log_steps": 20, "validation_steps": 0, "checkpointing_steps": 60, "report_to": "none",
        "shuffle_input_shards": 1, "random_flip": False, "eval_steps": 60, "eval_images": 32, "disc_start": 30,
        "disc_layers": 1, "disc_base_channels": 8, "disc_loss": "vanilla", "disc_weight": 0.1,
        "disc_lecam_weight": 0.001, "disc_r1_weight": 0.01, "disc_r1_interval": 2,
        "reconstruction_loss": "l1+l2", "prior_prologue_weight": 3.0, "prior_visual_weight": 3.0, "prior_config": PRIOR,
        "prior_learning_rate": 2e-3, "prior_ema_decay": 0.9}, tmp_path, "tokenizer")
    assert run.returncode == 0, run.stderr[-3000:]
    codes = subprocess.run([sys.executable, str(ROOT / "training" / "extract_codes.py"), "--embedded_dataset_dir",
                            str(mnist), "--vqvae", str(tmp_path / "tokenizer" / "vqvae"), "--image_size", "16",
                            "--output_dir", str(tmp_path / "codes"), "--max_examples", "64", "--ten_crop", "false"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert codes.returncode == 0, codes.stderr[-3000:]
    return tmp_path


def test_joint_tokenizer_trains_its_prior_and_logs_the_prologue(phase1):
    metrics = [json.loads(line) for line in (phase1 / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    for name in ("loss/prior_prologue", "loss/prior_visual", "loss/prior", "loss/discriminator", "loss/lecam",
                 "loss/r1", "loss/generator_adversarial", "prologue/position_usage", "prologue/position_entropy",
                 "eval/psnr"):
        assert name in last, name
    assert last["loss/reconstruction"] < metrics[0]["loss/reconstruction"]
    assert last["loss/prior"] < metrics[0]["loss/prior"]  # the prior learns the codes
    tokenizer = PrologueVQVAE.from_pretrained(phase1 / "tokenizer" / "vqvae")
    prior = PrologueForImageGeneration.from_pretrained(phase1 / "tokenizer" / "prior")
    assert prior.config.vocab_size == 32 + 16 + 1 and tokenizer.config.num_prologue_tokens == 2
    assert "Prologue image tokenizer" in (phase1 / "tokenizer" / "vqvae" / "README.md").read_text()


def test_extracted_codes_are_ar_sequences(phase1):
    from st_ar_hf.training.data import load_stream

    info = json.loads((phase1 / "codes" / "codes_info.json").read_text())
    assert info["num_prologue_tokens"] == 2 and info["grid_size"] == 4
    example = next(iter(load_stream(data_files=str(phase1 / "codes" / "train-*.parquet"))))
    codes = torch.tensor(example["codes"])  # [2 crops, 2 + 1 + 16]
    assert codes.shape == (2, 19) and (codes[:, 2] == 48).all()
    assert ((codes[:, :2] >= 32) & (codes[:, :2] < 48)).all() and (codes[:, 3:] < 32).all()


def test_prologue_ar_trains_on_the_codes_and_exports_a_pipeline(phase1, mnist):
    config = {"train_codes": str(phase1 / "codes"), "output_dir": str(phase1 / "ar"),
              "image_size": 16, "model": "B", "num_views": 2, "report_to": "none",
              "model_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "rotary_dim": 16},
              "train_batch_size": 8, "learning_rate": 1e-3, "max_train_steps": 12, "log_steps": 6,
              "validation_steps": 12, "validation_max_classes": 2, "validation_images_per_class": 2,
              "checkpointing_steps": 12, "mim_weight": 0.0, "step_weight": 0.0, "view_weight": 0.0,
              "mixed_precision": "no", "shuffle_input_shards": 1}
    run = _launch("train.py", config, phase1, "ar")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (phase1 / "ar" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss/ar"] < metrics[0]["loss/ar"]
    pipe = STARPipeline.from_pretrained(phase1 / "ar" / "pipeline")
    out = pipe([1, 2], generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="pt")
    assert out.images.shape == (2, 3, 16, 16) and out.prologue_tokens.shape == (2, 2)
    # ST-AR's self-guidance applies to this family too
    star = _launch("train.py", {**config, "output_dir": str(phase1 / "star"), "max_train_steps": 2, "log_steps": 1,
                                "validation_steps": 0, "mim_weight": 1.0, "step_weight": 0.5, "view_weight": 0.5,
                                "contrastive_layer": 1, "num_positions": 4}, phase1, "star")
    assert star.returncode == 0, star.stderr[-3000:]
    last = json.loads((phase1 / "star" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(f"loss/{name}" in last for name in ("ar", "mim", "step", "view"))


def test_codes_of_another_tokenizer_are_refused(phase1, mnist, tmp_path):
    """2D codes (16 tokens) given with a Prologue tokenizer (whose AR models 19) fail before training."""
    tokenizer = PrologueVQVAE.from_pretrained(phase1 / "tokenizer" / "vqvae")
    flat = PrologueVQVAE(type(tokenizer.config)(**{**TOKENIZER, "num_prologue_tokens": 0}))
    flat.save_pretrained(tmp_path / "flat")
    codes = subprocess.run([sys.executable, str(ROOT / "training" / "extract_codes.py"), "--embedded_dataset_dir",
                            str(mnist), "--vqvae", str(tmp_path / "flat"), "--image_size", "16", "--output_dir",
                            str(tmp_path / "codes"), "--max_examples", "8", "--ten_crop", "false"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600,
                           env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert codes.returncode == 0, codes.stderr[-3000:]
    run = _launch("train.py", {"train_codes": str(tmp_path / "codes"),
                               "vqvae": str(phase1 / "tokenizer" / "vqvae"), "output_dir": str(tmp_path / "ar"),
                               "image_size": 16, "model": "B", "num_views": 2, "max_train_steps": 2,
                               "model_config": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1},
                               "mim_weight": 0.0, "step_weight": 0.0, "view_weight": 0.0, "report_to": "none"},
                  tmp_path, "bad")
    assert run.returncode != 0 and "--train_codes hold sequences of 16 tokens, but a prologue model" in run.stderr
    assert not (tmp_path / "ar" / "metrics.jsonl").exists()


def test_prologue_post_trains_only_its_prologue_path(mnist, tmp_path):
    """Prologue-Post's stage: from a 2D tokenizer folder, a prologue encoder learns by the prior's CE alone; the visual
    path (patch encoder, visual quantiser, decoder) leaves the run unchanged."""
    flat = PrologueVQVAE(PrologueVQVAE.config_class(**{**TOKENIZER, "num_prologue_tokens": 0}))
    flat.save_pretrained(tmp_path / "2d")
    post = {"num_prologue_tokens": 2, "prologue_codebook_size": 16, "prologue_encoder_layers": 1,
            "prologue_encoder_hidden_size": 64, "prologue_encoder_heads": 1}
    run = _launch("train_tokenizer.py", {
        "embedded_dataset_dir": str(mnist), "output_dir": str(tmp_path / "post"), "image_size": 16,
        "model": str(tmp_path / "2d"), "model_config": post, "train_visual": False, "train_batch_size": 16,
        "learning_rate": 2e-3, "max_train_steps": 30, "log_steps": 10, "validation_steps": 0, "eval_steps": 0,
        "checkpointing_steps": 30, "report_to": "none", "shuffle_input_shards": 1, "disc_start": 0,
        "prior_prologue_weight": 3.0, "prior_visual_weight": 3.0, "prior_config": PRIOR,
        "prior_learning_rate": 2e-3}, tmp_path, "post")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "post" / "metrics.jsonl").read_text().splitlines()]
    assert "loss/reconstruction" not in metrics[-1] and "loss/discriminator" not in metrics[-1]
    assert metrics[-1]["loss/prior"] < metrics[0]["loss/prior"]
    trained = PrologueVQVAE.from_pretrained(tmp_path / "post" / "vqvae")
    assert trained.config.prologue_encoder_layers == 1
    after = trained.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in flat.state_dict().items())
    start = AutoModel.from_pretrained(tmp_path / "2d", **post)  # the same initialisation, but for the RNG
    assert not torch.equal(after["prologue_encoder.input_proj.weight"], start.prologue_encoder.input_proj.weight)


def test_one_hot_gradient_sign_lowers_the_prior_loss():
    """A step along the one-hot's gradient lowers the prior's CE (what sub-step A does to the encoder)."""
    torch.manual_seed(0)
    tokenizer = PrologueVQVAE(tiny_prologue_tokenizer_config()).eval()
    prior = build_prior(tokenizer.config, "S", PRIOR).eval()
    encoded = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    one_hot = F.one_hot(encoded.prologue_indices, 16).float().requires_grad_()
    objective = ProloguePriorObjective(visual_dropout=0.0)
    loss = sum(objective.encoder_terms(prior, encoded.prologue_indices, encoded.indices, one_hot).values())
    loss.backward()
    with torch.no_grad():
        moved = sum(objective.encoder_terms(prior, encoded.prologue_indices, encoded.indices,
                                            one_hot - 0.1 * one_hot.grad).values())
    assert moved < loss


def test_nonfinite_losses_skip_steps_then_stop_with_the_terms(mnist, tmp_path):
    run = _launch("train_tokenizer.py", {
        "embedded_dataset_dir": str(mnist), "output_dir": str(tmp_path / "run"), "image_size": 16, "model": "prologue-b",
        "model_config": TOKENIZER, "train_batch_size": 8, "learning_rate": 1e30, "max_grad_norm": 1e30,
        "max_train_steps": 10, "max_nonfinite_steps": 2, "log_steps": 1, "validation_steps": 0, "eval_steps": 0,
        "report_to": "none", "shuffle_input_shards": 1, "prior_prologue_weight": 3.0, "prior_visual_weight": 3.0,
        "prior_config": PRIOR}, tmp_path, "nan")
    assert run.returncode != 0
    assert "step skipped (1 in a row)" in run.stderr and "2 non-finite losses in a row" in run.stderr
    assert "'prior_visual'" in run.stderr and "'loss'" in run.stderr
