import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.callbacks import PipelineCallback

from st_ar_hf import LlamaGenForImageGeneration, LlamaGenVQVAE, STARPipeline
from st_ar_hf.pipelines.decoding_llamagen import generate

from .conftest import tiny_gpt_config, tiny_vq_config

ID2LABEL = {i: name for i, name in enumerate(
    ["tench, Tinca tinca", "goldfish", "golden retriever", "tabby, tabby cat", "volcano", "daisy", "otter", "pizza",
     "castle", "jay"]
)}


@pytest.fixture
def pipe(tiny_gpt, tiny_vq):
    """Tiny random GPT (4x4 grid, 64 codes) and VQ (factor 2): 8x8 images."""
    pipe = STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_names_ids_and_synonyms_resolve(pipe):
    assert pipe.get_label_ids(["Golden Retriever", "tinca tinca", "tabby cat"]) == [2, 0, 3]
    assert pipe.get_label_ids("volcano") == [4]
    with pytest.raises(ValueError, match="unknown class name 'golden retreiver'; closest: 'golden retriever'"):
        pipe.get_label_ids("golden retreiver")
    out = pipe(["goldfish", 2], output_type="latent", generator=torch.Generator().manual_seed(0))
    direct = generate(pipe.transformer, torch.tensor([1, 2]), guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens, direct.view(2, 4, 4))


def test_imagenet_names_are_the_default_labels(tiny_vq):
    imagenet_classes = LlamaGenForImageGeneration(tiny_gpt_config(num_classes=1000)).eval()
    pipe = STARPipeline(transformer=imagenet_classes, vqvae=tiny_vq)
    assert len(pipe.id2label) == 1000 and pipe.get_label_ids(["golden retriever", "volcano"]) == [207, 980]


def test_default_imagenet_names_keep_the_transformers_classes_only(tiny_gpt, tiny_vq, caplog):
    pipe = STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq)
    assert sorted(pipe.id2label) == list(range(10)) and pipe.get_label_ids("goldfish") == [1]
    assert "the transformer has 10 classes, not ImageNet's 1000" in caplog.text
    with pytest.raises(ValueError, match="class_labels: unknown class name 'golden retriever'"):
        pipe(["golden retriever"], output_type="latent")


def test_id2label_with_ids_outside_the_classes_is_refused(tiny_gpt, tiny_vq):
    with pytest.raises(ValueError, match=r"id2label names ids \[10, 207\] outside the transformer's classes \[0, 10\)"):
        STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={**ID2LABEL, 10: "ten", 207: "golden retriever"})


def test_class_names_of_classes_the_transformer_lacks_are_refused_before_decoding(tiny_gpt, tiny_vq):
    pipe = STARPipeline(transformer=LlamaGenForImageGeneration(tiny_gpt_config(num_classes=1000)), vqvae=tiny_vq)
    pipe.transformer = tiny_gpt  # a 10-class transformer behind the ImageNet names
    calls = []
    with pytest.raises(ValueError, match=r"class_labels: 'golden retriever' is class 207, but the transformer has 10 "
                                         r"classes \(num_classes\)"):
        pipe(["golden retriever"], callback_on_step_end=lambda *args: calls.append(args))
    assert not calls


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types_carry_tokens(pipe, output_type):
    out = pipe([1, 2], num_images_per_label=2, output_type=output_type, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (4, 4, 4)
    assert not torch.equal(out.tokens[0], out.tokens[1])  # two draws of the same label differ
    if output_type == "pil":
        assert len(out.images) == 4 and isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (8, 8)
    elif output_type == "np":
        assert out.images.shape == (4, 8, 8, 3) and 0 <= out.images.min() and out.images.max() <= 1
    elif output_type == "pt":
        assert out.images.shape == (4, 3, 8, 8)
        decoded = ((pipe.vqvae.decode(out.tokens) + 1) / 2).clamp(0, 1)
        assert torch.allclose(out.images, decoded, atol=1e-6)
    else:  # diffusers' convention: the undecoded latents in place of images, here the tokens
        assert torch.equal(out.images, out.tokens)


def test_image_i_depends_only_on_generator_i(pipe):
    alone = pipe([3], guidance_scale=1.5, top_k=10, output_type="latent", generator=gens(123))
    grid = pipe([5, 3, 1], guidance_scale=1.5, top_k=10, output_type="latent", generator=gens(7, 123, 9))
    assert torch.equal(grid.tokens[1], alone.tokens[0])
    again = pipe([5, 3, 1], guidance_scale=1.5, top_k=10, output_type="np", generator=gens(7, 123, 9))
    assert torch.equal(grid.tokens, again.tokens)


def test_callback_sees_every_step_and_can_replace_tokens(pipe):
    seen = []

    def force_zero(pipeline, step, timestep, kwargs):
        seen.append((step, kwargs["tokens"].shape[1]))
        return {"tokens": torch.zeros_like(kwargs["tokens"])}

    out = pipe([1, 2], output_type="latent", callback_on_step_end=force_zero, generator=torch.Generator().manual_seed(0))
    assert seen == [(k, k + 1) for k in range(16)]
    assert torch.count_nonzero(out.tokens) == 0


def test_progress_bar_counts_decoding_steps(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    pipe([1], output_type="latent")
    assert "16/16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_labels=[10]), r"class_labels: 10 is neither a class name nor an id in \[0, 10\)"),
        (dict(class_labels=[]), "at least one class"),
        (dict(class_labels=["pizzza"]), "closest: 'pizza'"),
        (dict(class_labels=[1], guidance_scale=-0.5), "guidance_scale must be >= 0"),
        (dict(class_labels=[1], temperature=0.0), "temperature must be > 0"),
        (dict(class_labels=[1], top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(class_labels=[1], top_k=65), r"top_k must be in \[0, 64\]"),
        (dict(class_labels=[1], top_k=-1), "top_k"),
        (dict(class_labels=[1, 2], num_images_per_label=2, generator=gens(1, 2, 3)), "list of 3 but the call makes 4"),
        (dict(class_labels=[1], output_type="jpg"), "output_type"),
    ],
)
def test_bad_arguments_fail_before_decoding(pipe, kwargs, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs, callback_on_step_end=lambda *args: calls.append(args))
    assert not calls


def test_mismatched_codebook_is_refused(tiny_gpt):
    pipe = STARPipeline(transformer=tiny_gpt, vqvae=LlamaGenVQVAE(tiny_vq_config(codebook_size=32)), id2label=ID2LABEL)
    with pytest.raises(ValueError, match="vqvae has 32 codes but the transformer's vocabulary is 64"):
        pipe([1])


def test_guidance_between_zero_and_one_is_allowed(pipe):
    lean = pipe([1], guidance_scale=0.5, output_type="latent", generator=torch.Generator().manual_seed(0))
    full = pipe([1], guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert lean.tokens.shape == full.tokens.shape and not torch.equal(lean.tokens, full.tokens)


def test_save_and_load_round_trip(pipe, tmp_path):
    """The default folder carries its code (model_index.json names the code files); remote_code=False writes the
    package's module paths instead, and STARPipeline.from_pretrained loads both."""
    pipe.save_pretrained(tmp_path / "package", remote_code=False)
    index = json.loads((tmp_path / "package" / "model_index.json").read_text())
    assert index["_class_name"] == "STARPipeline"
    assert index["transformer"] == ["st_ar_hf.models.llamagen.modeling_llamagen", "LlamaGenForImageGeneration"]
    assert isinstance(STARPipeline.from_pretrained(tmp_path / "package").transformer, LlamaGenForImageGeneration)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_star", "STARPipeline"]
    assert index["transformer"] == ["modeling_llamagen", "LlamaGenForImageGeneration"]
    assert index["id2label"]["2"] == "golden retriever"
    for name in ("transformer", "vqvae"):
        assert (tmp_path / name / "model.safetensors").is_file()
    card = (tmp_path / "README.md").read_text()
    assert "library_name: diffusers" in card and "STARPipeline.from_pretrained" in card
    loaded = STARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.transformer, LlamaGenForImageGeneration) and loaded.id2label == pipe.id2label
    expected = pipe(["jay"], output_type="np", generator=torch.Generator().manual_seed(3))
    actual = loaded(["jay"], output_type="np", generator=torch.Generator().manual_seed(3))
    assert torch.equal(actual.tokens, expected.tokens) and np.allclose(actual.images, expected.images, atol=1e-6)



def test_from_pretrained_takes_diffusers_loading_arguments(pipe, tmp_path, caplog):
    """A variant (refused in diffusers' words when no component has it), a dtype per component, a component passed
    in; each loaded component is logged where diffusers logs it."""
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "transformer" / "model.fp16.safetensors").is_file()
    with caplog.at_level(logging.INFO, logger="diffusers.pipelines.pipeline_utils"):
        loaded = STARPipeline.from_pretrained(tmp_path / "fp16", variant="fp16",
                                              dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert loaded.transformer.dtype == torch.bfloat16 and loaded.vqvae.dtype == torch.float32
    assert "Loaded transformer as LlamaGenForImageGeneration" in caplog.text and "Loaded vqvae as" in caplog.text
    pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="load the model files of the `variant=fp16`"):
        STARPipeline.from_pretrained(tmp_path / "plain", variant="fp16")
    assert STARPipeline.from_pretrained(tmp_path / "plain", vqvae=pipe.vqvae).vqvae is pipe.vqvae

def test_dtype_conversion_keeps_sampling(pipe):
    pipe.to(dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    out = pipe([1], output_type="pt", generator=torch.Generator().manual_seed(0))
    assert out.images.dtype == torch.float32 and out.images.shape == (1, 3, 8, 8)


def test_loads_a_hub_repo_id_then_offline_from_the_cache(pipe, tmp_path):
    """Against a loopback stand-in for the Hub (tests/fake_hub.py), in subprocesses so that HF_ENDPOINT applies."""
    import subprocess
    import sys

    from .fake_hub import FakeHub

    pipe.save_pretrained(tmp_path / "hub" / "org" / "st-ar-tiny")
    expected = pipe(["jay", 4], output_type="latent", generator=torch.Generator().manual_seed(5)).tokens
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import torch; from st_ar_hf import STARPipeline\n"
        "pipe = STARPipeline.from_pretrained('org/st-ar-tiny'); pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(['jay', 4], output_type='latent', generator=torch.Generator().manual_seed(5))\n"
        "assert torch.equal(out.tokens, torch.load('expected.pt')); print('loaded', pipe.name_or_path)\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub(tmp_path / "hub") as endpoint:
        online = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                                env=env | {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}, timeout=120)
    assert online.returncode == 0, online.stderr[-3000:]
    offline = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                             env=env | {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert (tmp_path / "hf_home" / "hub" / "models--org--st-ar-tiny" / "snapshots").is_dir()  # served from the cache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_cpu_offload_and_compiled_cuda_decoding_keep_the_tokens(pipe):
    expected = pipe([1, 2], output_type="np", generator=torch.Generator().manual_seed(0))
    pipe.enable_model_cpu_offload()
    offloaded = pipe([1, 2], output_type="np", generator=torch.Generator().manual_seed(0))
    assert torch.equal(offloaded.tokens.cpu(), expected.tokens)
    assert np.allclose(offloaded.images, expected.images, atol=1e-4)
    pipe.remove_all_hooks()
    pipe.to("cuda")
    eager = pipe([1, 2], output_type="latent", generator=torch.Generator().manual_seed(1))
    compiled = pipe([1, 2], output_type="latent", generator=torch.Generator().manual_seed(1), compile_decoding=True)
    assert torch.equal(eager.tokens, compiled.tokens)


def test_cli_sample_writes_a_grid_and_reports_bad_labels(pipe, tmp_path):
    import subprocess
    import sys

    from st_ar_hf.cli import main as cli_main

    pipe.save_pretrained(tmp_path / "pipe")
    run = [sys.executable, "-m", "st_ar_hf.cli", "sample", "--model", str(tmp_path / "pipe"), "--guidance-scale", "2.0"]
    assert cli_main(run[3:] + ["--labels", "2", "7", "--num-images-per-label", "2", "--output-file", str(tmp_path / "a.png")]) == 0
    assert cli_main(run[3:] + ["--labels", "Golden Retriever", "pizza", "--num-images-per-label", "2",
                               "--output-file", str(tmp_path / "b.png")]) == 0
    grid = PIL.Image.open(tmp_path / "a.png")
    assert grid.size == (2 * 8, 2 * 8)  # a row per label, a column per image
    assert np.array_equal(np.asarray(grid), np.asarray(PIL.Image.open(tmp_path / "b.png")))
    bad = subprocess.run(run + ["--labels", "golden retreiver", "--output-file", str(tmp_path / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "closest: 'golden retriever'" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------- diffusers' call conventions


def test_num_images_per_prompt_and_its_older_name(pipe):
    out = pipe([1, 2], num_images_per_prompt=2, output_type="latent", generator=gens(1, 2, 3, 4))
    old = pipe([1, 2], num_images_per_label=2, output_type="latent", generator=gens(1, 2, 3, 4))
    both = pipe([1, 2], num_images_per_prompt=2, num_images_per_label=2, output_type="latent",
                generator=gens(1, 2, 3, 4))
    assert out.tokens.shape == (4, 4, 4)
    assert torch.equal(out.tokens, old.tokens) and torch.equal(out.tokens, both.tokens)
    with pytest.raises(ValueError, match="num_images_per_prompt 2 and num_images_per_label .* 3 disagree"):
        pipe([1], num_images_per_prompt=2, num_images_per_label=3)
    with pytest.raises(ValueError, match="^num_images_per_prompt must be a positive int"):
        pipe([1], num_images_per_prompt=0)


def test_nested_label_lists_are_flattened_as_dit_does(pipe):
    nested = pipe([[1], [2, "jay"]], output_type="latent", generator=gens(1, 2, 3))
    flat = pipe([1, 2, 9], output_type="latent", generator=gens(1, 2, 3))
    assert torch.equal(nested.tokens, flat.tokens)
    with pytest.raises(ValueError, match="class_labels must name at least one class"):
        pipe([[]])


def test_num_timesteps_counts_the_callback_steps(pipe):
    steps = []
    pipe([1], output_type="latent", callback_on_step_end=lambda p, i, t, kwargs: steps.append(i) or {})
    assert pipe.num_timesteps == len(steps) == 16


def test_guidance_scale_set_by_a_callback_steers_the_following_tokens(pipe):
    """`pipe._guidance_scale = 1.0` after token 4 (diffusers' CFG cut-off) is LlamaGen's cfg_interval 3: tokens 0..4
    guided, the rest conditional."""

    def cut_guidance(pipeline, step, timestep, kwargs):
        if step == 4:
            pipeline._guidance_scale = 1.0
        return kwargs

    class CFGCutoff(PipelineCallback):  # as diffusers' SDCFGCutoffCallback, for a pipeline without prompt_embeds
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            if step_index == self.config.cutoff_step_index:
                pipeline._guidance_scale = 1.0
            return callback_kwargs

    cut = pipe([1, 2], guidance_scale=4.0, output_type="latent", generator=gens(5, 6),
               callback_on_step_end=cut_guidance)
    interval = pipe([1, 2], guidance_scale=4.0, cfg_interval=3, output_type="latent", generator=gens(5, 6))
    guided = pipe([1, 2], guidance_scale=4.0, output_type="latent", generator=gens(5, 6))
    assert torch.equal(cut.tokens, interval.tokens) and not torch.equal(cut.tokens, guided.tokens)
    assert pipe.guidance_scale == 4.0  # the call's guidance, read back
    cutoff = CFGCutoff(cutoff_step_ratio=None, cutoff_step_index=4)
    by_callback_class = pipe([1, 2], guidance_scale=4.0, output_type="latent", generator=gens(5, 6),
                             callback_on_step_end=cutoff, callback_on_step_end_tensor_inputs=["tokens"])
    assert torch.equal(by_callback_class.tokens, interval.tokens) and pipe.guidance_scale == 1.0

    def raise_guidance(pipeline, step, timestep, kwargs):
        pipeline._guidance_scale = 2.0
        return kwargs

    with pytest.raises(ValueError, match="guidance_scale was set to 2.0 during decoding, but the call started without"):
        pipe([1], guidance_scale=1.0, callback_on_step_end=raise_guidance)


def test_interrupt_stops_decoding_and_returns_the_tokens_so_far(pipe):
    def stop_after_token_5(pipeline, step, timestep, kwargs):
        pipeline._interrupt = step == 5
        return kwargs

    full = pipe([1, 2], output_type="np", generator=gens(1, 2))
    stopped = pipe([1, 2], output_type="np", generator=gens(1, 2), callback_on_step_end=stop_after_token_5)
    assert pipe.interrupt and stopped.images is None
    assert torch.equal(stopped.tokens, full.tokens.flatten(1)[:, :6])
    again = pipe([1, 2], output_type="np", generator=gens(1, 2))  # the next call starts uninterrupted
    assert not pipe.interrupt and torch.equal(again.tokens, full.tokens)


def test_callback_latents_are_the_tokens_and_replace_them(pipe):
    def zero_latents_at_the_end(pipeline, step, timestep, kwargs):
        assert torch.equal(kwargs["latents"], kwargs["tokens"]) and kwargs["latents"].shape == (2, step + 1)
        if step == pipeline.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe([1, 2], output_type="latent", generator=gens(1, 2), callback_on_step_end=zero_latents_at_the_end)
    assert torch.count_nonzero(out.tokens) == 0 and torch.equal(out.images, out.tokens)
