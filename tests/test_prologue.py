"""Prologue: the tokenizer, the AR prior with its logit mask, the converters of the official accelerate folders (state
dicts in the official layout with random weights: the real files are out of reach here) and sampling through
STARPipeline. Parity with the original code on the same weights was measured separately (README, Prologue)."""

import json
import math

import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModel

from st_ar_hf import PrologueConfig, PrologueForImageGeneration, PrologueVQVAE, STARPipeline
from st_ar_hf.cli import main as cli_main
from st_ar_hf.models.prologue.convert_prologue import convert_prologue, convert_prologue_tokenizer, paper_sampling
from st_ar_hf.models.prologue.modeling_prologue import logit_mask
from st_ar_hf.pipelines.decoding_prologue import generate, guidance_scales

from .conftest import tiny_prologue_config, tiny_prologue_tokenizer_config
from .official_layout import prologue_ar_shapes, prologue_tokenizer_shapes, random_state_dict

TINY_TOKENIZER = dict(dim=64, layers=2, dec_dim=64, dec_layers=2, head_dim=32, patch_dim=192, num_patches=16, z_len=4,
                      codebook=64, prologue_codebook=16)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def sequence(config: PrologueConfig, batch=2, seed=0) -> torch.LongTensor:
    """A random [prologue] [EOS] [visual] sequence in the model's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    prologue = config.prologue_offset + torch.randint(0, config.prologue_vocab_size, (batch, config.num_prologue_tokens), generator=g)
    visual = torch.randint(0, config.visual_vocab_size, (batch, config.num_visual_tokens), generator=g)
    return torch.cat([prologue, torch.full((batch, 1), config.eos_token_id), visual], dim=1)


def write_folder(folder, *state_dicts):
    """An `accelerator.save_state` folder: model.safetensors, model_1.safetensors, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, state in enumerate(state_dicts):
        save_file(state, folder / ("model.safetensors" if i == 0 else f"model_{i}.safetensors"))
    return folder


@pytest.fixture
def pipe(tiny_prologue, tiny_prologue_tokenizer):
    pipe = STARPipeline(tiny_prologue, tiny_prologue_tokenizer, id2label={i: f"class {i}" for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- models


def test_tokenizer_codes_and_the_straight_through_prologue(tiny_prologue_tokenizer):
    tokenizer = tiny_prologue_tokenizer.train()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(tokenizer.unpatchify(tokenizer.patchify(pixels)), pixels)
    # patch 0 is the top-left 8x8 block, flattened as (row, column, channel)
    assert torch.equal(tokenizer.patchify(pixels)[0, 0], pixels[0, :, :8, :8].permute(1, 2, 0).flatten())
    encoded = tokenizer.encode(pixels)
    assert encoded.indices.shape == (2, 4, 4) and encoded.prologue_indices.shape == (2, 4)
    assert torch.equal(encoded.prologue_one_hot, F.one_hot(encoded.prologue_indices, 16).float())
    # the one-hot carries the softmax's gradient into the shared encoder: what an AR prior's CE trains
    (encoded.prologue_one_hot * torch.randn(2, 4, 16)).sum().backward()
    assert tokenizer.encoder.prologue_queries.grad.abs().sum() > 0
    assert tokenizer.encoder.layers[0].attn.qkv_proj.weight.grad.abs().sum() > 0
    assert tokenizer.decoder.to_patches.weight.grad is None  # the prologue is never decoded
    out = tokenizer(pixels)
    assert out.reconstruction.shape == pixels.shape and out.codebook_loss > 0
    assert torch.allclose(out.commitment_loss, 0.25 * out.codebook_loss)
    assert torch.allclose(tokenizer.decode(encoded.indices), out.reconstruction, atol=1e-5)


def test_a_2d_tokenizer_has_no_prologue():
    tokenizer = PrologueVQVAE(tiny_prologue_tokenizer_config(num_prologue_tokens=0)).eval()
    encoded = tokenizer.encode(torch.zeros(1, 3, 32, 32))
    assert encoded.prologue_indices is None and encoded.last_hidden_state.shape == (1, 16, 64)
    assert tokenizer.prologue_quantizer is None and tokenizer.encoder.prologue_queries is None


def test_logit_mask_allows_each_position_its_kind_of_token():
    config = tiny_prologue_config()
    mask = logit_mask(config, torch.arange(config.sequence_length)) == 0  # [21, 81]
    assert mask[:4, 64:80].all() and mask[:4].sum() == 4 * 16
    assert mask[4].nonzero().flatten().tolist() == [80]
    assert mask[5:, :64].all() and mask[5:].sum() == 16 * 64
    baseline = tiny_prologue_config(num_prologue_tokens=0)
    assert baseline.vocab_size == 64 and baseline.eos_token_id is None and (logit_mask(baseline, torch.arange(16)) == 0).all()


def test_forward_masks_logits_and_the_loss_is_the_unmasked_cross_entropy(tiny_prologue):
    config = tiny_prologue.config
    tokens = sequence(config)
    raw = []
    tiny_prologue.lm_head.register_forward_hook(lambda module, args, output: raw.append(output))
    out = tiny_prologue(input_ids=tokens[:, :-1], class_labels=torch.tensor([1, 2]), labels=tokens)
    assert out.logits.shape == (2, 21, 81)
    allowed = logit_mask(config, torch.arange(21)) == 0
    # a masked logit is the float32 minimum, finite (no -inf for arithmetic on the logits to turn into NaN)
    assert torch.isfinite(out.logits).all() and torch.equal(out.logits[0] > torch.finfo(torch.float32).min, allowed)
    assert torch.equal(out.logits[:, allowed], raw[0][:, allowed])
    # the loss reads the unmasked logits, as the official trainers do
    assert torch.allclose(out.loss, F.cross_entropy(raw[0].reshape(-1, 81), tokens.reshape(-1)))


def test_cached_decoding_equals_the_full_forward(tiny_prologue):
    from transformers import StaticCache

    config, tokens, labels = tiny_prologue.config, sequence(tiny_prologue.config), torch.tensor([3, 7])
    full = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels).logits
    cache = StaticCache(config=config, max_cache_len=config.sequence_length)
    steps = [tiny_prologue(class_labels=labels, past_key_values=cache, cache_position=torch.tensor([0])).logits]
    for t in range(config.sequence_length - 1):
        steps.append(tiny_prologue(input_ids=tokens[:, t : t + 1], past_key_values=cache,
                                   cache_position=torch.tensor([t + 1])).logits)
    assert torch.allclose(torch.cat(steps, 1).nan_to_num(), full.nan_to_num(), atol=1e-5)


def test_attention_implementations_agree_and_eager_returns_the_weights(tiny_prologue, tiny_prologue_tokenizer):
    from transformers import StaticCache

    config, tokens, labels = tiny_prologue.config, sequence(tiny_prologue.config), torch.tensor([3, 7])
    bias = torch.zeros(2, 1, 21, 21)
    bias[..., 3:, 2] = float("-inf")  # key 2 dropped for the queries after it
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1

    def run():
        cache = StaticCache(config=config, max_cache_len=config.sequence_length)
        prefill = tiny_prologue(input_ids=tokens[:, :5], class_labels=labels, past_key_values=cache,
                                cache_position=torch.arange(6)).logits
        steps = [tiny_prologue(input_ids=tokens[:, t : t + 1], past_key_values=cache,
                               cache_position=torch.tensor([t + 1])).logits for t in range(5, 20)]
        full = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels, output_attentions=True)
        biased = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels, attention_bias=bias).logits
        return full, torch.cat([prefill, *steps], 1), biased, tiny_prologue_tokenizer(pixels).reconstruction

    assert tiny_prologue.config._attn_implementation == tiny_prologue_tokenizer.config._attn_implementation == "sdpa"
    sdpa = run()  # output_attentions: eager attention for that call, SDPA forming no weights
    tiny_prologue.set_attn_implementation("eager")
    tiny_prologue_tokenizer.set_attn_implementation("eager")
    eager = run()
    torch.testing.assert_close(eager[0].logits, sdpa[0].logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager[0].attentions, sdpa[0].attentions)
    for a, b in zip(eager[1:], sdpa[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager[1], eager[0].logits, atol=1e-5, rtol=1e-5)  # cached decoding = full forward
    weights = eager[0].attentions
    assert len(weights) == 2 and weights[0].shape == (2, 2, 21, 21)  # [B, heads, T, S]
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2, 2, 21))
    assert (weights[0].triu(1) == 0).all()  # causal
    assert not torch.allclose(eager[2], eager[0].logits)
    dropped = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels, attention_bias=bias, output_attentions=True)
    assert all((w[..., 3:, 2] == 0).all() and w.isfinite().all() for w in dropped.attentions)


def test_resize_token_embeddings_refuses_a_new_size_before_changing_anything(tiny_prologue):
    before = {name: tensor.clone() for name, tensor in tiny_prologue.state_dict().items()}
    with pytest.raises(ValueError, match="new_num_tokens: Prologue's vocabulary of 81 ids .* cannot be resized to 91"):
        tiny_prologue.resize_token_embeddings(91)
    with pytest.raises(ValueError, match="cannot be resized to 96"):
        tiny_prologue.resize_token_embeddings(pad_to_multiple_of=32)
    assert tiny_prologue.resize_token_embeddings(81) is tiny_prologue.embed_tokens
    assert tiny_prologue.resize_token_embeddings(pad_to_multiple_of=27) is tiny_prologue.embed_tokens  # 81 = 3 x 27
    after = tiny_prologue.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert tiny_prologue.config.vocab_size == 81 and tiny_prologue.lm_head.out_features == 81


def test_the_one_hot_path_reaches_the_prologue_inputs(tiny_prologue):
    config, tokens, labels = tiny_prologue.config, sequence(tiny_prologue.config), torch.tensor([3, 7])
    one_hot = F.one_hot(tokens[:, :4] - config.prologue_offset, 16).float().requires_grad_()
    by_ids = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels, labels=tokens)
    by_one_hot = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels, prologue_one_hot=one_hot, labels=tokens)
    assert torch.allclose(by_one_hot.loss, by_ids.loss, atol=1e-6)
    by_one_hot.loss.backward()
    assert one_hot.grad.abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_prologue_tokens=-1), "num_prologue_tokens must be an int >= 0"),
    (dict(num_visual_tokens=15), "num_visual_tokens 15 is not a square"),
    (dict(rotary_dim=33), "rotary_dim must be even and at most the head dim 32"),
    (dict(no_guidance_temperature=(0.7,)), "no_guidance_temperature must be"),
    (dict(hidden_size=65), "must be divisible by num_attention_heads"),
])
def test_bad_configs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_prologue_config(**kwargs)


def test_bad_tokenizer_configs_are_named():
    with pytest.raises(ValueError, match="rope_axes_dim must be 3 even sizes summing to the head dim 32"):
        tiny_prologue_tokenizer_config(rope_axes_dim=[20, 20, 24])
    with pytest.raises(ValueError, match="image_size 30 must be a multiple of patch_size 8"):
        tiny_prologue_tokenizer_config(image_size=30)


# --- conversion


def tiny_official_folders(tmp_path, z_len=4):
    encoder, decoder = prologue_tokenizer_shapes(**{**TINY_TOKENIZER, "z_len": z_len})
    vocab = 64 + (16 + 1 if z_len else 0)
    ar = prologue_ar_shapes(dim=64, layers=2, head_dim=32, vocab=vocab, num_classes=10)
    raw = [random_state_dict(shapes, seed=i) for i, shapes in enumerate((encoder, decoder))]
    ema = [random_state_dict(shapes, seed=10 + i) for i, shapes in enumerate((encoder, decoder))]
    tokenizer = write_folder(tmp_path / "tokenizer", *raw, *ema)
    return tokenizer, write_folder(tmp_path / "ar", random_state_dict(ar, seed=5), random_state_dict(ar, seed=6)), raw


def test_conversion_folds_the_null_class_conditioning(tmp_path):
    encoder, decoder = prologue_tokenizer_shapes(**TINY_TOKENIZER)
    encoder, decoder = random_state_dict(encoder), random_state_dict(decoder)
    # the condition vector is a constant c: a norm's weight becomes 1 + W c + b, a gate W c + b
    encoder["enc.layers.1.adaln_1.affine.weight"].zero_()
    encoder["enc.layers.1.gate1.weight"].zero_()
    tokenizer = convert_prologue_tokenizer((encoder, decoder), rope_axes_dim=[10, 10, 12])
    layer = tokenizer.encoder.layers[1]
    assert torch.allclose(layer.attn_norm.weight, 1 + encoder["enc.layers.1.adaln_1.affine.bias"])
    assert torch.allclose(layer.attn_gate, encoder["enc.layers.1.gate1.bias"])
    q, kv = encoder["enc.layers.0.attn1.to_q.weight"], encoder["enc.layers.0.attn1.to_kv.weight"]
    assert torch.equal(tokenizer.encoder.layers[0].attn.qkv_proj.weight, torch.cat([q, kv]))  # (q, k, v) rows
    gate, value = encoder["enc.layers.0.ffn.fc1.weight"].chunk(2)  # the original activates the second half
    assert torch.equal(tokenizer.encoder.layers[0].mlp.gate_proj.weight, value)
    assert torch.equal(tokenizer.encoder.layers[0].mlp.up_proj.weight, gate)
    assert torch.equal(tokenizer.encoder.prologue_queries, encoder["enc.learnable_query"][0])


def test_convert_folders_and_reload(tmp_path):
    tokenizer_folder, ar_folder, raw = tiny_official_folders(tmp_path)
    tokenizer = convert_prologue_tokenizer(tokenizer_folder, rope_axes_dim=[10, 10, 12], output_dir=tmp_path / "tok")
    config = tokenizer.config
    assert (config.image_size, config.patch_size, config.num_prologue_tokens, config.num_encoder_heads) == (32, 8, 4, 2)
    raw_tokenizer = convert_prologue_tokenizer(tokenizer_folder, ema=False, rope_axes_dim=[10, 10, 12])
    assert torch.equal(raw_tokenizer.quantizer.embedding.weight, raw[0]["quantizer.embedding.weight"])
    assert not torch.equal(tokenizer.quantizer.embedding.weight, raw[0]["quantizer.embedding.weight"])  # EMA default
    model = convert_prologue(ar_folder, tokenizer, rotary_dim=12, output_dir=tmp_path / "ar")
    assert (model.config.vocab_size, model.config.num_classes, model.config.num_attention_heads) == (81, 10, 2)
    assert model.config.default_guidance_scale == [0.7, 3.75, 0.2]  # no paper setting for this shape: the default
    reloaded = PrologueForImageGeneration.from_pretrained(tmp_path / "ar")
    tokens = sequence(model.config)
    a = model(input_ids=tokens[:, :-1], class_labels=torch.tensor([1, 2])).logits
    b = reloaded(input_ids=tokens[:, :-1], class_labels=torch.tensor([1, 2])).logits
    assert torch.equal(a, b)
    assert "Zyriix/prologue" in (tmp_path / "ar" / "README.md").read_text()


def test_paper_sampling_settings_follow_tokenizer_and_size():
    from st_ar_hf import PrologueVQVAEConfig

    b, large, flat = (PrologueVQVAEConfig.from_preset("prologue-b"), PrologueVQVAEConfig.from_preset("prologue-l"),
                      PrologueVQVAEConfig(num_prologue_tokens=0))
    assert paper_sampling(b, 768)["default_guidance_scale"] == (0.7, 3.75, 0.2)
    assert paper_sampling(large, 1280) == {"default_guidance_scale": (0.7, 2.25, 0.225),
                                           "no_guidance_temperature": (1.0, 0.9)}
    assert paper_sampling(flat, 768)["default_guidance_scale"] == (10.0, 1.5)


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda enc, dec: enc.update({"enc.extra.weight": torch.zeros(1)}), r"not part of a Prologue tokenizer.*enc\.extra"),
    (lambda enc, dec: dec.pop("dec.out.bias"), "checkpoint has no 'dec.out.bias'"),
    (lambda enc, dec: enc["quantizer.pos_select_mask"].fill_(-math.inf), "restricts codes per position"),
    (lambda enc, dec: enc.pop("semantic_quantizer.embedding.weight"), "1D tokenizer"),
])
def test_bad_tokenizer_checkpoints_are_named(break_it, message):
    encoder, decoder = (random_state_dict(s) for s in prologue_tokenizer_shapes(**TINY_TOKENIZER))
    break_it(encoder, decoder)
    with pytest.raises(ValueError, match=message):
        convert_prologue_tokenizer((encoder, decoder), rope_axes_dim=[10, 10, 12])


def test_prologue_post_converts_with_its_own_prologue_encoder():
    """Prologue-Post: the original's `semantic_enc` (over the 2D encoder's output) becomes `prologue_encoder`. Its
    outputs match the original's (run unmodified outside the repo; README)."""
    encoder, decoder = prologue_tokenizer_shapes(**TINY_TOKENIZER, post_dim=96, post_layers=3)
    encoder, decoder = random_state_dict(encoder), random_state_dict(decoder)
    tokenizer = convert_prologue_tokenizer((encoder, decoder), rope_axes_dim=[10, 10, 12])
    config = tokenizer.config
    assert (config.prologue_encoder_layers, config.prologue_encoder_hidden_size, config.prologue_encoder_heads,
            config.prologue_encoder_mlp_ratio, config.num_prologue_tokens) == (3, 96, 3, 2.75, 4)
    assert tokenizer.encoder.prologue_queries is None  # the patch encoder is a 2D one
    assert torch.equal(tokenizer.prologue_encoder.prologue_queries, encoder["semantic_enc.learnable_query"][0])
    assert torch.equal(tokenizer.prologue_encoder.input_proj.weight, encoder["semantic_enc.input_layer.weight"])
    encoded = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert encoded.last_hidden_state.shape == (2, 16, 64) and encoded.prologue_indices.shape == (2, 4)
    # the visual path does not see the prologue encoder: the same visual codes without it
    flat = convert_prologue_tokenizer(without_post(encoder, decoder), rope_axes_dim=[10, 10, 12])
    assert torch.equal(flat.encode(torch.zeros(1, 3, 32, 32)).indices, tokenizer.encode(torch.zeros(1, 3, 32, 32)).indices)


def without_post(encoder, decoder):
    """The 2D tokenizer inside a Prologue-Post state dict."""
    return {k: v for k, v in encoder.items() if not k.startswith(("semantic_enc.", "semantic_quantizer."))}, decoder


def test_initialisation_and_prologue_post_from_a_2d_tokenizer(tmp_path):
    """SimVQ codebooks and the near-zero output layer (leaves that transformers' init reaches only by identity), and
    a Prologue-Post tokenizer made from a trained 2D folder: the visual path loaded, the prologue path initialised."""
    flat = PrologueVQVAE(tiny_prologue_tokenizer_config(num_prologue_tokens=0))
    simvq_std = flat.config.codebook_embed_dim**-0.5
    assert 0.8 < flat.quantizer.embedding.weight.std() / simvq_std < 1.2
    assert flat.decoder.to_patches.weight.abs().max() < 1e-5
    flat.save_pretrained(tmp_path / "2d")
    post = AutoModel.from_pretrained(tmp_path / "2d", num_prologue_tokens=4, prologue_encoder_layers=1,
                                     prologue_encoder_hidden_size=64, prologue_encoder_heads=2)
    assert all(torch.equal(a, b) for a, b in zip(flat.state_dict().values(),
                                                  {k: v for k, v in post.state_dict().items() if k in flat.state_dict()}.values()))
    assert 0.8 < post.prologue_quantizer.embedding.weight.std() / simvq_std < 1.2
    assert (post.prologue_encoder.layers[0].attn_gate == 0).all()  # residual gates closed
    assert post.encode(torch.zeros(1, 3, 32, 32)).prologue_indices.shape == (1, 4)
    with pytest.raises(ValueError, match="prologue_encoder_layers 2 needs prologue tokens"):
        tiny_prologue_tokenizer_config(num_prologue_tokens=0, prologue_encoder_layers=2)


def test_bad_folders_and_layouts_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        convert_prologue_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has none of \['model_2.safetensors'\]"):
        convert_prologue_tokenizer(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        convert_prologue(tmp_path / "empty", tiny_prologue_tokenizer_config())
    ar = random_state_dict(prologue_ar_shapes(dim=64, layers=2, head_dim=32, vocab=64 + 17, num_classes=10))
    with pytest.raises(ValueError, match=r"\(64 visual \+ 8 prologue \+ EOS = 73 tokens\) do not match the AR vocabulary of 81"):
        convert_prologue(ar, tiny_prologue_tokenizer_config(prologue_codebook_size=8))
    ar["ar_model.layers.0.ffn.fc9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not part of a Prologue AR"):
        convert_prologue(ar, tiny_prologue_tokenizer_config(), rotary_dim=12)


def test_cli_converts_folders_into_a_pipeline_and_samples(tmp_path, capsys):
    # one head of 64 dims: the published RoPE axes apply unchanged
    tiny = {**TINY_TOKENIZER, "head_dim": 64}
    encoder, decoder = prologue_tokenizer_shapes(**tiny)
    write_folder(tmp_path / "tok", *(random_state_dict(s) for s in (encoder, decoder, encoder, decoder)))
    ar = prologue_ar_shapes(dim=64, layers=2, head_dim=64, vocab=81, num_classes=10)
    write_folder(tmp_path / "ar", random_state_dict(ar))
    assert cli_main(["convert", "prologue-tokenizer", "--checkpoint", str(tmp_path / "tok"), "--output-dir",
                     str(tmp_path / "converted-tok")]) == 0
    assert cli_main(["convert", "prologue-ar", "--checkpoint", str(tmp_path / "ar"), "--tokenizer",
                     str(tmp_path / "converted-tok"), "--output-dir", str(tmp_path / "pipe")]) == 0
    assert "a STARPipeline of PrologueForImageGeneration" in capsys.readouterr().out
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["vqvae"][1] == "PrologueVQVAE"
    sample = ["sample", "--model", str(tmp_path / "pipe"), "--labels", "3", "--num-images-per-label", "2"]
    assert cli_main(sample + ["--guidance-scale", "0.7", "3.0", "0.2", "--output-file", str(tmp_path / "grid.png")]) == 0
    assert PIL.Image.open(tmp_path / "grid.png").size == (64, 32)
    assert cli_main(sample + ["--guidance-scale", "0.7", "3.0", "0", "--output-file", str(tmp_path / "x.png")]) == 2
    assert "the power > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the tokenizer is required
        cli_main(["convert", "prologue-ar", "--checkpoint", str(tmp_path / "ar"), "--output-dir", str(tmp_path / "other")])
    assert "one of the arguments --vqvae/--tokenizer" in capsys.readouterr().err


# --- sampling


def test_split_guidance_schedule():
    scales = guidance_scales((0.7, 3.75, 0.2), num_prologue=16, length=273)
    assert scales[:16] == [0.7] * 16 and scales[16] == 1.0  # the EOS step opens the visual ramp
    assert all(a <= b for a, b in zip(scales[16:], scales[17:])) and 3.7 < scales[-1] < 3.75
    ramp = guidance_scales((1.5, 1.0), 0, 256)
    assert ramp[0] == 1.0 and math.isclose(ramp[128], 1.25)
    assert guidance_scales(2.0, 16, 273) == [2.0] * 273


def test_greedy_decoding_takes_the_argmax_of_the_guided_logits(tiny_prologue):
    config, labels = tiny_prologue.config, torch.tensor([3, 7])
    visual, prologue = generate(tiny_prologue, labels, (0.7, 3.0, 0.5), do_sample=False)
    tokens = torch.cat([prologue + config.prologue_offset, torch.full((2, 1), config.eos_token_id), visual], 1)
    cond = tiny_prologue(input_ids=tokens[:, :-1], class_labels=labels).logits
    uncond = tiny_prologue(input_ids=tokens[:, :-1], class_labels=torch.full_like(labels, 10)).logits
    scales = torch.tensor(guidance_scales((0.7, 3.0, 0.5), 4, 21))[None, :, None]
    guided = uncond + (cond - uncond) * scales  # masked logits: the float32 minimum in both halves, and in guided
    assert torch.equal(guided.argmax(-1), tokens)
    assert prologue.min() >= 0 and prologue.max() < 16 and visual.max() < 64


def test_fixed_prologue_resamples_only_the_visual_tokens(pipe):
    first = pipe([3, 3], generator=gens(0, 1), output_type="latent")
    assert first.prologue_tokens.shape == (2, 4) and first.tokens.shape == (2, 4, 4)
    fixed = first.prologue_tokens[:1].repeat(3, 1)
    again = pipe([3] * 3, prologue_tokens=fixed, generator=gens(5, 6, 7), output_type="pt")
    assert torch.equal(again.prologue_tokens, fixed) and again.images.shape == (3, 3, 32, 32)
    assert len({tuple(t.flatten().tolist()) for t in again.tokens}) > 1  # new details



def test_model_generate_is_the_pipelines_decoding(pipe):
    """`model.generate(class_labels, guidance_scale=...)` gives the pipeline's visual and prologue codes."""
    visual, prologue = pipe.transformer.generate([3, 8], guidance_scale=(0.7, 3.0, 0.2), temperature=(1.0, 0.9),
                                                 generator=gens(0, 1))
    expected = pipe([3, 8], guidance_scale=(0.7, 3.0, 0.2), temperature=(1.0, 0.9), generator=gens(0, 1),
                    output_type="latent")
    assert torch.equal(visual, expected.tokens.flatten(1)) and torch.equal(prologue, expected.prologue_tokens)

def test_image_i_depends_only_on_generator_i(pipe):
    alone = pipe([5], generator=gens(9), output_type="latent")
    batch = pipe([1, 5, 2], generator=gens(3, 9, 4), output_type="latent")
    assert torch.equal(batch.tokens[1], alone.tokens[0]) and torch.equal(batch.prologue_tokens[1], alone.prologue_tokens[0])


def test_default_guidance_and_temperatures_come_from_the_config(pipe, monkeypatch):
    seen = {}
    import st_ar_hf.pipelines.decoding_prologue as decoding

    original = decoding.generate

    def spy(model, labels, **kwargs):
        seen.update(kwargs)
        return original(model, labels, **kwargs)

    monkeypatch.setattr(decoding, "generate", spy)
    pipe([1], output_type="latent")
    assert seen["guidance_scale"] == [0.7, 3.75, 0.2] and seen["temperature"] == 1.0
    pipe([1], guidance_scale=1.0, output_type="latent")
    assert seen["temperature"] == (0.7, 0.9)  # the paper's no-CFG temperatures


def test_callback_counts_steps_and_can_replace_a_token(pipe):
    steps = []

    def callback(pipe, step, timestep, kwargs):
        steps.append(kwargs["tokens"].shape[1])
        if step == 10:
            tokens = kwargs["tokens"].clone()
            tokens[:, -1] = 0
            return {"tokens": tokens}
        return {}

    out = pipe([1], generator=gens(0), callback_on_step_end=callback, output_type="latent")
    assert steps == list(range(1, 22)) and out.tokens[0].flatten()[10 - 5] == 0
    steps.clear()
    pipe([1], prologue_tokens=out.prologue_tokens, generator=gens(0), callback_on_step_end=callback, output_type="latent")
    assert len(steps) == 16  # the visual tokens only


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(guidance_scale=(0.7, 3.0, 0.0)), r"the power > 0"),
    (dict(guidance_scale=(0.7, 3.0, 0.2, 1.0)), r"a number, \(scale, power\) or \(prologue scale"),
    (dict(temperature=(0.7, 0.9, 1.0)), r"\(prologue, visual\) temperatures"),
    (dict(prologue_tokens=torch.tensor([[1, 2, 3]])), r"prologue_tokens must be integer codes \[1 images, 4\]"),
    (dict(prologue_tokens=torch.tensor([[1, 2, 3, 16]])), r"prologue codebook \[0, 16\)"),
    (dict(scales=[1, 2]), "options of other families"),
])
def test_bad_arguments_fail_before_decoding(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe([1], **kwargs)


def test_other_families_refuse_prologue_arguments(tiny_gpt, tiny_vq):
    pipe = STARPipeline(tiny_gpt, tiny_vq)
    with pytest.raises(ValueError, match="prologue_tokens: a llamagen model has no prologue tokens"):
        pipe([1], prologue_tokens=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tuples are Prologue's split settings"):
        pipe([1], guidance_scale=(0.7, 3.0, 0.2))


def test_a_tokenizer_of_another_layout_is_refused(tiny_prologue):
    other = PrologueVQVAE(tiny_prologue_tokenizer_config(num_prologue_tokens=8))
    with pytest.raises(ValueError, match=r"do not match the transformer's vocabulary layout \(64, 16, 4, 16\)"):
        STARPipeline(tiny_prologue, other)([1])


def test_save_load_round_trip_and_card(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "- prologue" in card and "guidance_scale=[0.7, 3.75, 0.2]" in card and "4 prologue tokens" in card
    loaded = STARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    expected = pipe([4, "class 2"], output_type="np", generator=gens(3, 4))
    actual = loaded([4, "class 2"], output_type="np", generator=gens(3, 4))
    assert torch.equal(actual.tokens, expected.tokens) and torch.equal(actual.prologue_tokens, expected.prologue_tokens)
    assert abs(actual.images - expected.images).max() < 1e-6
