import pytest
import torch

from st_ar_hf.pipelines.decoding_llamagen import generate
from st_ar_hf.pipelines.sampling import exponential_noise, filter_logits, sample


def _full_logits(model, tokens, class_labels):
    """Logits [B, block_size, V] of every image token given the true prefix, from one full forward."""
    return model(input_ids=tokens[:, :-1], class_labels=class_labels).logits


def test_greedy_cached_decoding_equals_full_forward_argmax(tiny_gpt):
    class_labels = torch.tensor([1, 4, 9])
    tokens = generate(tiny_gpt, class_labels, do_sample=False)
    assert tokens.shape == (3, tiny_gpt.config.block_size) and tokens.dtype == torch.long
    assert torch.equal(_full_logits(tiny_gpt, tokens, class_labels).argmax(-1), tokens)
    assert len(set(tokens.flatten().tolist())) > 1


@pytest.mark.parametrize("cfg_interval", [-1, 3])
def test_greedy_cfg_follows_llamagen_formula(tiny_gpt, cfg_interval):
    class_labels, scale = torch.tensor([2, 7]), 3.0
    tokens = generate(tiny_gpt, class_labels, guidance_scale=scale, cfg_interval=cfg_interval, do_sample=False)
    cond = _full_logits(tiny_gpt, tokens, class_labels)
    uncond = _full_logits(tiny_gpt, tokens, torch.full_like(class_labels, tiny_gpt.config.null_class_id))
    guided = uncond + (cond - uncond) * scale
    if cfg_interval >= 0:
        guided[:, cfg_interval + 2 :] = cond[:, cfg_interval + 2 :]
    assert torch.equal(guided.argmax(-1), tokens)
    assert not torch.equal(tokens, generate(tiny_gpt, class_labels, do_sample=False))


def test_one_generator_makes_the_call_reproducible(tiny_gpt):
    class_labels = torch.tensor([1, 2, 3])
    first = generate(tiny_gpt, class_labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    again = generate(tiny_gpt, class_labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    other = generate(tiny_gpt, class_labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_generator_list_makes_each_image_independent_of_the_batch(tiny_gpt):
    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    alone = generate(tiny_gpt, torch.tensor([5]), guidance_scale=2.0, top_k=20, generator=gens(42))
    in_batch = generate(tiny_gpt, torch.tensor([1, 5, 8]), guidance_scale=2.0, top_k=20, generator=gens(7, 42, 9))
    assert torch.equal(in_batch[1], alone[0])
    with pytest.raises(ValueError, match="one per class label"):
        generate(tiny_gpt, torch.tensor([1, 2]), generator=gens(1))


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.6)).tolist() == [[False, False, True, True]]  # 0.5 < 0.6 <= 0.8
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits), logits)


def test_exponential_race_samples_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = 40_000
    logits = probs.log().expand(draws, 4)
    noise = exponential_noise(torch.Generator().manual_seed(0), (draws, 4), torch.device("cpu"))
    frequencies = torch.bincount(sample(logits, noise=noise), minlength=4).float() / draws
    assert torch.allclose(frequencies, probs, atol=0.01)
    frequencies = torch.bincount(sample(logits, temperature=0.5, noise=noise), minlength=4).float() / draws
    assert torch.allclose(frequencies, (probs.log() / 0.5).softmax(-1), atol=0.01)


def test_bf16_model_decodes_and_returns_fp32_logits(tiny_gpt):
    model = tiny_gpt.to(torch.bfloat16)
    tokens = generate(model, torch.tensor([1, 2]), guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, model.config.block_size)
    assert model(tokens[:, :-1], torch.tensor([1, 2])).logits.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cached_decoding_matches_full_forward(tiny_gpt):
    model = tiny_gpt.to("cuda")
    class_labels = torch.tensor([1, 4, 9], device="cuda")
    tokens = generate(model, class_labels, do_sample=False)
    assert torch.equal(_full_logits(model, tokens, class_labels).argmax(-1), tokens)
    sampled = generate(model, class_labels, generator=torch.Generator().manual_seed(0))  # CPU generator, GPU model
    again = generate(model, class_labels, generator=torch.Generator().manual_seed(0))
    assert sampled.device.type == "cuda" and torch.equal(sampled, again)


def _reference_generate(model, class_labels, guidance_scale, top_k, seed):
    """The plain reference: every step recomputes the whole sequence with a full forward (no cache); sampling noise
    drawn in the same order from the same generator."""
    generator = torch.Generator().manual_seed(seed)
    null = torch.full_like(class_labels, model.config.null_class_id)
    tokens = torch.empty(class_labels.shape[0], 0, dtype=torch.long)
    for _ in range(model.config.block_size):
        cond = model(input_ids=tokens, class_labels=class_labels).logits[:, -1]
        uncond = model(input_ids=tokens, class_labels=null).logits[:, -1]
        noise = exponential_noise(generator, cond.shape, cond.device)
        logits = uncond + (cond - uncond) * guidance_scale
        tokens = torch.cat([tokens, sample(logits, top_k=top_k, noise=noise)[:, None]], dim=1)
    return tokens


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "torch.compile"])
def test_fast_decoding_samples_the_same_tokens_as_the_full_forward_reference(tiny_gpt, compile):
    class_labels = torch.tensor([3, 8])
    fast = generate(tiny_gpt, class_labels, guidance_scale=2.0, top_k=30, generator=torch.Generator().manual_seed(11),
                    compile=compile)
    assert torch.equal(fast, _reference_generate(tiny_gpt, class_labels, 2.0, 30, seed=11))


def test_model_generate_is_the_pipelines_decoding(tiny_gpt, tiny_vq, monkeypatch):
    """transformers users' reflex, `model.generate(class_labels=..., guidance_scale=...)`, gives the pipeline's tokens
    for the same arguments and generators; without the package's decoding it says how to sample instead."""
    from st_ar_hf import LlamaGenForImageGeneration, STARPipeline

    tokens = tiny_gpt.generate(class_labels=[2, 7], guidance_scale=2.0, top_k=10,
                               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    pipe = STARPipeline(transformer=tiny_gpt, vqvae=tiny_vq, id2label={i: f"class {i}" for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([2, 7], guidance_scale=2.0, top_k=10, output_type="latent",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).tokens
    assert tokens.shape == (2, tiny_gpt.config.block_size) and torch.equal(tokens, expected.flatten(1))
    monkeypatch.setattr(LlamaGenForImageGeneration, "decoding", None)  # as in a remote-code copy without the package
    with pytest.raises(RuntimeError, match="DiffusionPipeline.from_pretrained"):
        tiny_gpt.generate(class_labels=[2])
