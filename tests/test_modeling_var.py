"""The scale-wise family: VAR's residual VQVAE, the VAR and FlexVAR transformers, and FlexVAR's use of LlamaGen's VQ."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from st_ar_hf import (
    FlexVARConfig, FlexVARForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig, VARConfig, VARForImageGeneration,
    VARVQVAE, VARVQVAEConfig,
)

from .conftest import TINY_SCALES, tiny_flexvar_config, tiny_var_config, tiny_var_vqvae_config

# the original code's counts (FoundationVision/VAR, jiaosiyu1999/FlexVAR models built empty at each depth)
ORIGINAL_VAR_PARAMETERS = {"d16": 310_283_520, "d20": 600_917_136, "d24": 1_033_399_360, "d30": 2_010_020_356,
                           "d36": 2_353_893_904}
ORIGINAL_FLEXVAR_PARAMETERS = {"d16": 315_561_936, "d20": 607_513_952, "d24": 1_041_314_576}


def count(model_class, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(config).parameters())


@pytest.mark.parametrize("name", sorted(ORIGINAL_VAR_PARAMETERS))
def test_var_presets_have_the_original_parameter_counts(name):
    assert count(VARForImageGeneration, VARConfig.from_preset(name)) == ORIGINAL_VAR_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(ORIGINAL_FLEXVAR_PARAMETERS))
def test_flexvar_presets_have_the_original_parameter_counts(name):
    assert count(FlexVARForImageGeneration, FlexVARConfig.from_preset(name)) == ORIGINAL_FLEXVAR_PARAMETERS[name]


def test_tokenizers_have_the_original_parameter_counts():
    assert count(VARVQVAE, VARVQVAEConfig()) == 108_948_355  # vae_ch160v4096z32
    assert count(LlamaGenVQVAE, LlamaGenVQVAEConfig(codebook_size=8912, codebook_embed_dim=32)) == 72_049_827  # FlexVAE


@pytest.mark.parametrize(
    "config_class, kwargs, message",
    [
        (VARConfig, dict(patch_nums=[1, 3, 2]), "strictly increasing"),
        (VARConfig, dict(patch_nums=[2, 4]), "start at 1"),
        (VARConfig, dict(patch_nums=[1]), "at least two"),
        (VARConfig, dict(hidden_size=100, num_attention_heads=3), "divisible by num_attention_heads"),
        (VARConfig, dict(drop_path_rate=1.0), "drop_path_rate"),
        (FlexVARConfig, dict(position_grid_size=0), "position_grid_size"),
        (VARVQVAEConfig, dict(ch_mult=[2, 2]), "starting with 1"),
        (VARVQVAEConfig, dict(quant_resi=0.0), "quant_resi"),
        (VARVQVAEConfig, dict(quant_conv_kernel_size=2), "odd"),
    ],
)
def test_configs_reject_bad_values(config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(**kwargs)


def teacher_forcing_inputs(model, vqvae, maps):
    """Inputs of scales 1..K-1 from the code maps of scales 0..K-2: VAR's from its tokenizer, FlexVAR's the bicubic
    upsampling of the previous scale's code vectors."""
    if isinstance(model, FlexVARForImageGeneration):
        return torch.cat([F.interpolate(vqvae.code_vectors(m), size=(n.shape[-1],) * 2, mode="bicubic")
                          .flatten(2).transpose(1, 2) for m, n in zip(maps, maps[1:])], dim=1)
    return vqvae.scale_inputs(maps)


def random_maps(batch, scales, vocab=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, side, side), generator=generator) for side in scales]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["var", "flexvar"])
def test_kv_cached_scales_give_the_teacher_forced_logits(family, attn, tiny_var, tiny_flexvar, tiny_var_vqvae,
                                                          tiny_flexvae):
    model, vqvae = (tiny_var, tiny_var_vqvae) if family == "var" else (tiny_flexvar, tiny_flexvae)
    model.set_attn_implementation(attn)
    labels, maps = torch.tensor([3, 10]), random_maps(2, TINY_SCALES)  # 10: the null class
    inputs = teacher_forcing_inputs(model, vqvae, maps)
    with torch.no_grad():
        full = model(labels, inputs).logits  # [2, 21, 64]
        cache, conditioning, step_logits, start = DynamicCache(), model.condition(labels), [], 0
        for k, side in enumerate(TINY_SCALES):
            new = None if k == 0 else inputs[:, start - 1 : start - 1 + side * side]
            step_logits.append(model(labels, new, past_key_values=cache, conditioning=conditioning).logits)
            start += side * side
    assert full.shape == (2, 21, 64) and full.std() > 0.1
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_scales_see_only_coarser_scales_and_themselves(tiny_var, tiny_var_vqvae):
    labels, maps = torch.tensor([1, 2]), random_maps(2, TINY_SCALES)
    inputs = tiny_var_vqvae.scale_inputs(maps)
    changed = inputs.clone()
    changed[:, 4:] += 1.0  # the inputs of the last scale (positions 5 .. 20)
    with torch.no_grad():
        before, after = tiny_var(labels, inputs).logits, tiny_var(labels, changed).logits
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert (after[:, 5:] - before[:, 5:]).abs().max() > 1e-3
    with torch.no_grad():  # and the class conditions every position
        other = tiny_var(torch.tensor([4, 2]), inputs).logits
    assert (other[0] - before[0]).abs().min() > 0 and torch.equal(other[1], before[1])


def test_eager_attention_weights_are_block_causal(tiny_var, tiny_var_vqvae):
    tiny_var.set_attn_implementation("eager")
    inputs = tiny_var_vqvae.scale_inputs(random_maps(2, TINY_SCALES))
    with torch.no_grad():
        out = tiny_var(torch.tensor([1, 2]), inputs, output_attentions=True)
        tiny_var.config.output_attentions = True  # the config's flag when the argument is None
        from_config = tiny_var(torch.tensor([1, 2]), inputs)
    levels = torch.tensor([0] + [1] * 4 + [2] * 16)
    hidden = levels[None, :] > levels[:, None]  # [21, 21]: key j is on a finer scale than query i
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 21, 21)
    for weights, again in zip(out.attentions, from_config.attentions):
        assert torch.equal(weights, again) and weights[..., hidden].abs().max() == 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 21))


@pytest.mark.parametrize("family", ["var", "flexvar"])
def test_torch_export_gives_the_eager_logits(family, tiny_var, tiny_flexvar):
    model = tiny_var if family == "var" else tiny_flexvar
    labels, inputs = torch.tensor([3, 10]), torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(model, (labels, inputs))  # the block-causal mask is built without data branches
    with torch.no_grad():
        torch.testing.assert_close(program.module()(labels, inputs).logits, model(labels, inputs).logits)


def test_labels_give_the_mean_cross_entropy_over_all_scales(tiny_flexvar, tiny_flexvae):
    labels, maps = torch.tensor([1, 2]), random_maps(2, TINY_SCALES)
    out = tiny_flexvar(labels, teacher_forcing_inputs(tiny_flexvar, tiny_flexvae, maps),
                       labels=torch.cat([m.flatten(1) for m in maps], dim=1))
    expected = F.cross_entropy(out.logits.flatten(0, 1), torch.cat([m.flatten(1) for m in maps], dim=1).flatten())
    torch.testing.assert_close(out.loss, expected)


def test_var_samples_its_schedule_only_and_flexvar_any(tiny_var, tiny_flexvar):
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="VAR learned one position embedding per position"):
        tiny_var(labels, torch.zeros(1, 4 + 9, 8), scales=[1, 2, 3])
    for scales in ([1, 2, 3], [1, 3, 5, 8], [1, 2, 4, 6]):
        length = sum(s * s for s in scales)
        with torch.no_grad():
            assert tiny_flexvar(labels, torch.randn(1, length - 1, 8), scales=scales).logits.shape == (1, length, 64)
    with pytest.raises(ValueError, match="must cover whole scales"):
        tiny_flexvar(labels, torch.randn(1, 7, 8), scales=[1, 2, 4])


def test_var_init_gates_blocks_and_head_as_the_original():
    config = tiny_var_config(hidden_size=128, num_attention_heads=2)
    model = VARForImageGeneration(config)
    std = config.initializer_range  # sqrt(1 / (3 * 128))
    gates, modulation = model.layers[0].adaln_modulation.weight[:256], model.layers[0].adaln_modulation.weight[256:]
    assert abs(modulation.std() / std - 0.5) < 0.05  # init_adaln
    assert abs(gates.std() / std - 1e-5) < 2e-6  # init_adaln_gamma
    assert abs(model.lm_head.weight.std() / std - 0.02) < 0.002  # init_head
    assert abs(model.layers[0].mlp.fc2.weight.std() / std - 0.5) < 0.05  # 1 / sqrt(2 depth), depth 2
    assert torch.allclose(model.layers[0].self_attn.query_log_scale.exp(), torch.tensor(4.0))
    flexvar = FlexVARForImageGeneration(tiny_flexvar_config())
    grid = flexvar.position_grid[0]  # [C, rows, columns]: channel 0 is sin(row * w_0), channel 1 cos(column * w_0)
    assert torch.allclose(grid[0, :, 3], torch.sin(torch.arange(8.0))) and torch.allclose(grid[0, 5], grid[0, 5, :1])
    assert torch.allclose(grid[1, 5], torch.cos(torch.arange(8.0))) and torch.allclose(grid[1, :, 2], grid[1, :1, 2])


def test_drop_path_acts_in_training_only(tiny_var, tiny_var_vqvae):
    model = VARForImageGeneration(tiny_var_config(drop_path_rate=0.5)).eval()
    model.load_state_dict(tiny_var.state_dict())
    labels, inputs = torch.tensor([1, 2]), tiny_var_vqvae.scale_inputs(random_maps(2, TINY_SCALES))
    with torch.no_grad():
        torch.testing.assert_close(model(labels, inputs).logits, tiny_var(labels, inputs).logits)
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model(labels, inputs).logits, tiny_var(labels, inputs).logits)


def brute_force_residual_codes(vqvae, pixels, scales):
    """Residual quantisation written directly from VAR's description, with torch.cdist for the nearest code."""
    with torch.no_grad():
        latents = vqvae.quant_conv(vqvae.encoder(pixels))
        residual, codebook, maps = latents.clone(), vqvae.quantize.embedding.weight, []
        for k, side in enumerate(scales):
            small = F.interpolate(residual, size=(side, side), mode="area")
            flat = small.permute(0, 2, 3, 1).reshape(-1, small.shape[1])
            maps.append(torch.cdist(flat, codebook).argmin(1).view(-1, side, side))
            vectors = codebook[maps[-1]].permute(0, 3, 1, 2)
            if k < len(scales) - 1:
                vectors = F.interpolate(vectors, size=latents.shape[-2:], mode="bicubic")
            residual = residual - vqvae.quantize.phi(k, len(scales))(vectors)
    return maps


def test_var_vqvae_encodes_residually_and_decodes_its_codes(tiny_var_vqvae):
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        maps = tiny_var_vqvae.encode(pixels)
        assert [m.shape for m in maps] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
        for ours, brute in zip(maps, brute_force_residual_codes(tiny_var_vqvae, pixels, TINY_SCALES)):
            assert (ours == brute).float().mean() > 0.95  # cdist and VAR's expanded distance differ only in near-ties
        # the stepwise inputs and f_hat of decoding equal the teacher-forcing inputs and the decoded image
        f_hat, steps = None, []
        for k in range(len(maps)):
            f_hat, step = tiny_var_vqvae.next_scale_input(f_hat, tiny_var_vqvae.code_vectors(maps[k]), k, TINY_SCALES)
            steps += [step] if step is not None else []
        torch.testing.assert_close(torch.cat(steps, dim=1), tiny_var_vqvae.scale_inputs(maps))
        # and VAR's rule written out: the input of scale k+1 is the sum of phi(bicubic(codes of scales <= k)), area
        # downsampled to s_{k+1}
        codebook, phi = tiny_var_vqvae.quantize.embedding.weight, tiny_var_vqvae.quantize.phi
        terms = [phi(k, 3)(F.interpolate(codebook[m].permute(0, 3, 1, 2), size=(4, 4), mode="bicubic"))
                 for k, m in enumerate(maps[:2])]
        by_hand = [F.interpolate(sum(terms[: k + 1]), size=(side,) * 2, mode="area").flatten(2).transpose(1, 2)
                   for k, side in enumerate(TINY_SCALES[1:])]
        torch.testing.assert_close(tiny_var_vqvae.scale_inputs(maps), torch.cat(by_hand, dim=1))
        pixels_out = tiny_var_vqvae.decode(maps)
        torch.testing.assert_close(pixels_out, tiny_var_vqvae.decode_latents(f_hat))
        torch.testing.assert_close(pixels_out, tiny_var_vqvae.decode(torch.cat([m.flatten(1) for m in maps], dim=1)))
    assert pixels_out.shape == (2, 3, 8, 8) and pixels_out.abs().max() <= 1
    with pytest.raises(ValueError, match=r"scales must end at the latent grid \(4\)"):
        tiny_var_vqvae.encode(pixels, scales=[1, 2])
    with pytest.raises(ValueError, match=r"indices as one tensor must be \[B, 21\]"):
        tiny_var_vqvae.decode(torch.zeros(2, 5, dtype=torch.long))


def test_var_vqvae_phi_ticks_as_the_original():
    quantize = VARVQVAE(tiny_var_vqvae_config(num_quant_resi_convs=4)).quantize
    # ticks linspace(1/12, 11/12, 4), the nearest to k / 9 for 10 scales; k = 7 lies halfway between ticks 2 and 3 and
    # float64 rounding gives it 3, as in the original
    chosen = [list(quantize.quant_resi).index(quantize.phi(k, 10)) for k in range(10)]
    assert chosen == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_var_vqvae_forward_gives_reconstruction_and_vq_loss(tiny_var_vqvae):
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    out = tiny_var_vqvae.train()(pixels)
    assert out.reconstruction.shape == pixels.shape and out.vq_loss > 0
    out.vq_loss.backward()
    assert tiny_var_vqvae.quantize.embedding.weight.grad.abs().sum() > 0  # codes pulled towards the latents
    assert tiny_var_vqvae.encoder.conv_in.weight.grad.abs().sum() > 0  # the encoder commits


def test_var_vqvae_hidden_states_are_the_latents_and_f_hat_after_each_scale(tiny_var_vqvae):
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = tiny_var_vqvae(pixels, output_hidden_states=True)
        latents = tiny_var_vqvae.quant_conv(tiny_var_vqvae.encoder(pixels))
        tiny_var_vqvae.config.output_hidden_states = True  # the config's flag when the argument is None
        as_tuple = tiny_var_vqvae(pixels, return_dict=False)
        assert len(out.hidden_states) == 4 and all(h.shape == (2, 8, 4, 4) for h in out.hidden_states)
        assert torch.equal(out.hidden_states[0], latents)
        decoded = tiny_var_vqvae.decode_latents(out.hidden_states[-1])  # f_hat after the last scale: the codes' image
        torch.testing.assert_close(decoded, tiny_var_vqvae.decode(out.indices))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4 and torch.equal(as_tuple[3][2], out.hidden_states[2])


def test_flexvar_tokenizer_quantises_each_scale_on_its_own(tiny_flexvae):
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        maps = tiny_flexvae.encode_scales(pixels, TINY_SCALES)
        latents = tiny_flexvae.quant_conv(tiny_flexvae.encoder(pixels))
        codebook = F.normalize(tiny_flexvae.quantize.embedding.weight, dim=-1)
        for side, ours in zip(TINY_SCALES, maps):
            small = F.normalize(F.interpolate(latents, size=(side, side), mode="area"), dim=1)
            nearest = (small.permute(0, 2, 3, 1) @ codebook.t()).argmax(-1)  # cosine nearest code
            assert torch.equal(ours, nearest)
        assert torch.equal(maps[-1], tiny_flexvae.encode(pixels).indices)  # the finest scale is plain VQ
    with pytest.raises(ValueError, match="up to the side"):
        tiny_flexvae.encode_scales(pixels, [1, 2, 64])


@pytest.mark.parametrize("family", ["var", "flexvar", "vqvae"])
def test_save_pretrained_round_trip_keeps_outputs(family, tiny_var, tiny_flexvar, tiny_var_vqvae, tmp_path):
    model = {"var": tiny_var, "flexvar": tiny_flexvar, "vqvae": tiny_var_vqvae}[family]
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert (tmp_path / "model.safetensors").is_file() and type(loaded.config) is type(model.config)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_gradient_checkpointing_and_hidden_states_keep_the_loss(tiny_flexvar, tiny_flexvae):
    labels, maps = torch.tensor([1, 2]), random_maps(2, TINY_SCALES)
    inputs = teacher_forcing_inputs(tiny_flexvar, tiny_flexvae, maps).detach()  # the tokenizer is frozen in training
    targets = torch.cat([m.flatten(1) for m in maps], dim=1)
    tiny_flexvar.train()
    plain = tiny_flexvar(labels, inputs, labels=targets, output_hidden_states=True)
    plain.loss.backward()
    grad = tiny_flexvar.layers[0].mlp.fc1.weight.grad.clone()
    tiny_flexvar.zero_grad()
    tiny_flexvar.gradient_checkpointing_enable()
    checkpointed = tiny_flexvar(labels, inputs, labels=targets)
    checkpointed.loss.backward()
    torch.testing.assert_close(checkpointed.loss, plain.loss)
    torch.testing.assert_close(tiny_flexvar.layers[0].mlp.fc1.weight.grad, grad)
    assert len(plain.hidden_states) == 3 and plain.hidden_states[-1].shape == (2, 21, 64)
