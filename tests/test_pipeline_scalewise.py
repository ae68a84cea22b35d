"""STARPipeline with the scale-wise family (VAR, FlexVAR): the same API as LlamaGen's, decoding scale by scale."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from st_ar_hf import FlexVARForImageGeneration, LlamaGenVQVAE, STARPipeline
from st_ar_hf.pipelines.decoding_scalewise import generate, guidance_ratio, scale_top_k

from .conftest import TINY_SCALES, informative, tiny_flexvar_config, tiny_vq_config

ID2LABEL = {i: name for i, name in enumerate(
    ["tench", "goldfish", "golden retriever", "tabby cat", "volcano", "daisy", "otter", "pizza", "castle", "jay"]
)}


@pytest.fixture
def var_pipe(tiny_var, tiny_var_vqvae):
    pipe = STARPipeline(transformer=tiny_var, vqvae=tiny_var_vqvae, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def flexvar_pipe(tiny_flexvar, tiny_flexvae):
    pipe = STARPipeline(transformer=tiny_flexvar, vqvae=tiny_flexvae, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["var", "flexvar"])
def pipe(request, var_pipe, flexvar_pipe):
    return var_pipe if request.param == "var" else flexvar_pipe


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_guidance_ramps_as_the_originals():
    assert [guidance_ratio("var", k, [1, 2, 3, 4, 5], 5) for k in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    thirteen = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16]  # FlexVAR divides by min(K - 1, 9): full guidance early
    assert [guidance_ratio("flexvar", k, thirteen, 16) for k in (0, 9, 12)] == [0, 1.0, 12 / 9]
    assert guidance_ratio("flexvar", 3, [1, 2, 16, 20], 16) == 1.0  # beyond the trained side: the full scale
    assert [scale_top_k("flexvar", side, 900, 16) for side in (10, 12, 16, 20)] == [900, 1, 900, 1]
    assert scale_top_k("var", 12, 900, 16) == 900


def no_cache_reference(pipe, labels, scales, guidance_scale):
    """Greedy decoding that recomputes the whole teacher-forced sequence at every scale (no KV cache)."""
    transformer, vqvae = pipe.transformer, pipe.vqvae
    flexvar = transformer.config.model_type == "flexvar"
    doubled = torch.cat([labels, torch.full_like(labels, transformer.config.null_class_id)])
    maps, start = [], 0
    for k, side in enumerate(scales):
        if k == 0:
            inputs = None
        elif flexvar:
            inputs = torch.cat([F.interpolate(vqvae.code_vectors(m), size=(n,) * 2, mode="bicubic").flatten(2)
                                .transpose(1, 2) for m, n in zip(maps, scales[1 : k + 1])], dim=1)
        else:  # VAR's phi convs depend on the whole schedule: pad it with unused maps, keep the inputs of scales 1..k
            padding = [torch.zeros(len(labels), s, s, dtype=torch.long) for s in scales[k:]]
            inputs = vqvae.scale_inputs(maps + padding)[:, : start + side * side - 1]
        with torch.no_grad():
            logits = transformer(doubled, None if inputs is None else inputs.repeat(2, 1, 1),
                                 scales=scales).logits[:, start:]
        t = guidance_scale * guidance_ratio(transformer.config.model_type, k, scales, transformer.config.patch_nums[-1])
        cond, uncond = logits.chunk(2)
        maps.append(((1 + t) * cond - t * uncond).argmax(-1).view(len(labels), side, side))
        start += side * side
    return maps


def test_cached_greedy_decoding_equals_the_no_cache_reference(var_pipe, flexvar_pipe):
    labels = torch.tensor([3, 7])
    for pipe, scales in ((var_pipe, TINY_SCALES), (flexvar_pipe, TINY_SCALES), (flexvar_pipe, [1, 3, 5, 8])):
        kwargs = {} if pipe is var_pipe else {"scales": scales}
        out = pipe([3, 7], guidance_scale=1.5, top_k=1, output_type="latent", generator=gens(0, 1), **kwargs)
        expected = no_cache_reference(pipe, labels, scales, 1.5)
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, expected))
        assert len({int(m.max()) for m in out.tokens}) > 1  # not a degenerate constant map


def test_outputs_carry_per_scale_tokens_and_images(pipe):
    out = pipe(["golden retriever", 5], num_images_per_label=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert [m.shape for m in out.tokens] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]
    assert out.images.shape == (4, 8, 8, 3) and 0 <= out.images.min() and out.images.max() <= 1
    assert not torch.equal(out.tokens[-1][0], out.tokens[-1][1])  # two draws of one label differ
    pt = pipe(["golden retriever", 5], num_images_per_label=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    decoded = pipe.vqvae.decode(out.tokens if pipe.transformer.config.model_type == "var" else out.tokens[-1])
    torch.testing.assert_close(pt.images, (decoded / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


def test_image_i_depends_only_on_generator_i(pipe):
    alone = pipe([3], guidance_scale=2.0, top_k=10, output_type="latent", generator=gens(123))
    grid = pipe([5, 3, 1], guidance_scale=2.0, top_k=10, output_type="latent", generator=gens(7, 123, 9))
    assert all(torch.equal(g[1], a[0]) for g, a in zip(grid.tokens, alone.tokens))


def test_flexvar_samples_other_schedules_and_larger_images(flexvar_pipe):
    out = flexvar_pipe([1, 2], scales=[1, 2, 3, 5, 8], output_type="np", generator=gens(0, 1))
    assert [m.shape[-1] for m in out.tokens] == [1, 2, 3, 5, 8] and out.images.shape == (2, 16, 16, 3)


def test_flexvar_takes_untrained_sides_greedily(tiny_flexvae):
    """FlexVAR trained on sides up to 8: with the coarse maps fixed, the last map of [1, 2, 7] (7 is no FlexVAR side)
    is the same for every seed, that of [1, 2, 8] (a FlexVAR side) is sampled, and so is nothing beyond 8 here."""
    transformer = FlexVARForImageGeneration(tiny_flexvar_config(patch_nums=[1, 2, 4, 8]))
    pipe = STARPipeline(transformer=informative(transformer), vqvae=tiny_flexvae, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)

    def fix_coarse_maps(pipeline, step, timestep, kwargs):
        maps = kwargs["tokens"]
        return {"tokens": maps[:-1] + [torch.zeros_like(maps[-1])]} if step < 2 else {}

    def last_maps(scales):
        return [pipe([1], scales=scales, top_k=64, output_type="latent", generator=gens(seed),
                     callback_on_step_end=fix_coarse_maps).tokens[-1] for seed in range(4)]

    untrained, trained = last_maps([1, 2, 7]), last_maps([1, 2, 8])
    assert all(torch.equal(m, untrained[0]) for m in untrained)
    assert not all(torch.equal(m, trained[0]) for m in trained)


def test_callback_sees_every_scale_and_can_replace_a_map(pipe):
    seen = []

    def zero_the_map(pipeline, step, timestep, kwargs):
        seen.append([m.shape[-1] for m in kwargs["tokens"]])
        return {"tokens": kwargs["tokens"][:-1] + [torch.zeros_like(kwargs["tokens"][-1])]}

    out = pipe([1, 2], output_type="latent", callback_on_step_end=zero_the_map, generator=gens(0, 1))
    assert seen == [[1], [1, 2], [1, 2, 4]]
    assert all(torch.count_nonzero(m) == 0 for m in out.tokens)


def test_progress_bar_counts_scales(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    pipe([1], output_type="latent")
    assert "3/3" in capsys.readouterr().err and pipe.num_steps() == 3


def test_var_smoothing_changes_the_fed_vectors_only(var_pipe):
    plain = var_pipe([1], output_type="pt", generator=gens(0))
    smooth = var_pipe([1], output_type="pt", more_smooth=True, generator=gens(0))
    assert torch.equal(plain.tokens[0], smooth.tokens[0])  # the first map is sampled before any smoothing
    assert not torch.allclose(plain.images, smooth.images)


def test_guidance_zero_runs_the_conditional_batch_alone(pipe):
    out = pipe([1, 2], guidance_scale=0.0, output_type="latent", generator=gens(0, 1))
    maps, _ = generate(pipe.transformer, pipe.vqvae, torch.tensor([1, 2]), TINY_SCALES, guidance_scale=0.0,
                       generator=gens(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, maps))


@pytest.mark.parametrize(
    "family, kwargs, message",
    [
        ("var", dict(scales=[1, 2, 3]), r"VAR samples its trained schedule \[1, 2, 4\] only"),
        ("flexvar", dict(scales=[1, 3, 2]), "increase strictly from 1"),
        ("flexvar", dict(scales=[2, 4]), "increase strictly from 1"),
        ("flexvar", dict(scales=[1, 4, 16]), "the last side can be at most 8"),
        ("flexvar", dict(scales=[1]), "at least two"),
        ("flexvar", dict(more_smooth=True), "more_smooth is an option of VAR's sampler"),
        ("var", dict(cfg_interval=3), "cfg_interval is LlamaGen's option"),
        ("var", dict(compile_decoding=True), "compile_decoding"),
        ("var", dict(guidance_scale=float("nan")), "guidance_scale must be >= 0 and finite"),
        ("flexvar", dict(class_labels=[10]), r"neither a class name nor an id in \[0, 10\)"),
        ("flexvar", dict(top_k=65), r"top_k must be in \[0, 64\]"),
    ],
)
def test_bad_arguments_fail_before_decoding(var_pipe, flexvar_pipe, family, kwargs, message):
    pipe = var_pipe if family == "var" else flexvar_pipe
    calls = []
    with pytest.raises(ValueError, match=message):
        pipe(**{"class_labels": [1], **kwargs}, callback_on_step_end=lambda *args: calls.append(args))
    assert not calls


def test_tokenizers_of_the_other_family_are_refused(tiny_var, tiny_flexvar, tiny_var_vqvae, tiny_flexvae, tiny_gpt):
    for transformer, vqvae, message in (
        (tiny_var, tiny_flexvae, "a var transformer decodes with a var_vqvae tokenizer, got a llamagen_vqvae"),
        (tiny_flexvar, tiny_var_vqvae, "a flexvar transformer decodes with a llamagen_vqvae tokenizer, got a var_vqvae"),
        (tiny_gpt, tiny_var_vqvae, "a llamagen transformer decodes with a llamagen_vqvae tokenizer"),
    ):
        with pytest.raises(ValueError, match=message):
            STARPipeline(transformer=transformer, vqvae=vqvae, id2label=ID2LABEL)([1])


def test_a_transformer_of_no_family_is_refused(tiny_var_vqvae):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="transformer: a 'bert' model, not one of the families"):
        STARPipeline(transformer=bert, vqvae=tiny_var_vqvae)([1])


def test_scales_are_refused_for_llamagen(tiny_gpt, tiny_vq):
    pipe = STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label=ID2LABEL)
    with pytest.raises(ValueError, match="scales: a LlamaGen model decodes token by token"):
        pipe([1], scales=[1, 2, 4])


def test_mismatched_code_width_is_refused(tiny_flexvar):
    pipe = STARPipeline(transformer=tiny_flexvar, vqvae=LlamaGenVQVAE(tiny_vq_config(codebook_embed_dim=4)))
    with pytest.raises(ValueError, match="vqvae codes have 4 channels but the transformer reads 8"):
        pipe([1])


def test_save_load_round_trip_and_card(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    family = pipe.transformer.config.model_type
    assert index["transformer"][0] == "modeling_var"  # the folder carries its code: one file per component
    card = (tmp_path / "README.md").read_text()
    assert f"- {family}" in card and "scale by scale (3 steps, from 1x1 to 4x4)" in card
    assert f"guidance_scale={pipe.family.guidance_scale}" in card
    loaded = STARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    expected = pipe(["jay", 4], output_type="np", generator=gens(3, 4))
    actual = loaded(["jay", 4], output_type="np", generator=gens(3, 4))
    assert all(torch.equal(a, b) for a, b in zip(actual.tokens, expected.tokens))
    assert np.allclose(actual.images, expected.images, atol=1e-6)


def test_cli_sample_takes_a_schedule(flexvar_pipe, tmp_path):
    from st_ar_hf.cli import main as cli_main

    flexvar_pipe.save_pretrained(tmp_path / "pipe")
    run = [sys.executable, "-m", "st_ar_hf.cli", "sample", "--model", str(tmp_path / "pipe"), "--labels", "golden retriever",
           "7", "--num-images-per-label", "2", "--top-k", "20"]
    assert cli_main(run[3:] + ["--scales", "1", "2", "3", "6", "--output-file", str(tmp_path / "grid.png")]) == 0
    assert PIL.Image.open(tmp_path / "grid.png").size == (2 * 12, 2 * 12)  # a final side of 6: 12 px images
    bad = subprocess.run(run + ["--scales", "1", "3", "2", "--output-file", str(tmp_path / "x.png")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "scales must increase strictly from 1" in bad.stderr and "Traceback" not in bad.stderr


def test_guidance_scale_set_by_a_callback_steers_the_following_scales(pipe):
    """Scale 0 is never guided (the ramp starts at 0), so raising `pipe._guidance_scale` there is a call with the new
    scale from the start; diffusers' cut-off (0.0) stops guidance for the scales after."""

    def set_guidance(value):
        def callback(pipeline, step, timestep, kwargs):
            if step == 0:
                pipeline._guidance_scale = value
            return kwargs
        return callback

    raised = pipe([1, 2], guidance_scale=1.5, output_type="latent", generator=gens(0, 1),
                  callback_on_step_end=set_guidance(6.0))
    six = pipe([1, 2], guidance_scale=6.0, output_type="latent", generator=gens(0, 1))
    default = pipe([1, 2], guidance_scale=1.5, output_type="latent", generator=gens(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(raised.tokens, six.tokens))
    assert not all(torch.equal(a, b) for a, b in zip(raised.tokens, default.tokens))
    cut = pipe([1, 2], guidance_scale=6.0, output_type="latent", generator=gens(0, 1),
               callback_on_step_end=set_guidance(0.0))
    assert pipe.guidance_scale == 0.0 and not all(torch.equal(a, b) for a, b in zip(cut.tokens, six.tokens))
    with pytest.raises(ValueError, match="guidance_scale was set to 6.0 during decoding, but the call started without"):
        pipe([1], guidance_scale=0.0, callback_on_step_end=set_guidance(6.0))


def test_interrupt_returns_the_maps_so_far(pipe):
    def stop_after_scale_1(pipeline, step, timestep, kwargs):
        pipeline._interrupt = step == 1
        return kwargs

    full = pipe([1, 2], output_type="pt", generator=gens(0, 1))
    stopped = pipe([1, 2], output_type="pt", generator=gens(0, 1), callback_on_step_end=stop_after_scale_1)
    assert stopped.images is None and len(stopped.tokens) == 2
    assert all(torch.equal(a, b) for a, b in zip(stopped.tokens, full.tokens))


def test_callback_latents_are_the_maps_in_one_sequence(pipe):
    def zero_the_second_map(pipeline, step, timestep, kwargs):
        latents = kwargs["latents"]
        assert torch.equal(latents, torch.cat([m.flatten(1) for m in kwargs["tokens"]], dim=1))
        if step == 1:
            kwargs["latents"] = torch.cat([latents[:, :1], torch.zeros_like(latents[:, 1:])], dim=1)
        return kwargs

    out = pipe([1, 2], output_type="latent", generator=gens(0, 1), callback_on_step_end=zero_the_second_map)
    assert torch.count_nonzero(out.tokens[1]) == 0 and out.images.shape == (2, 1 + 4 + 16)
    assert torch.equal(out.images, torch.cat([m.flatten(1) for m in out.tokens], dim=1))
