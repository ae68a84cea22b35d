import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from st_ar_hf import LlamaGenVQVAE

from .conftest import tiny_vq_config


def _pixels(batch=2, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_indices_are_cosine_nearest_codes(tiny_vq):
    with torch.no_grad():  # stored codebook rows are not unit-norm after training; the lookup must not care
        tiny_vq.quantize.embedding.weight.mul_(torch.rand(64, 1) * 5 + 0.1)
        encoded = tiny_vq.encode(_pixels())
        raw_latents = tiny_vq.quant_conv(tiny_vq.encoder(_pixels())).permute(0, 2, 3, 1)  # [B, h, w, C]
    assert encoded.indices.shape == (2, 16, 16) and encoded.indices.dtype == torch.long
    assert encoded.quantized.shape == (2, 4, 16, 16)
    cosine = F.cosine_similarity(raw_latents[..., None, :], tiny_vq.quantize.embedding.weight, dim=-1)  # [B, h, w, K]
    assert torch.equal(encoded.indices, cosine.argmax(-1))
    unit_codes = F.normalize(tiny_vq.quantize.embedding.weight, dim=-1)
    assert torch.allclose(encoded.quantized.permute(0, 2, 3, 1), unit_codes[encoded.indices], atol=1e-6)


def test_decode_accepts_grid_and_flat_indices(tiny_vq):
    indices = tiny_vq.encode(_pixels()).indices
    with torch.no_grad():
        from_grid = tiny_vq.decode(indices)
        from_flat = tiny_vq.decode(indices.flatten(1))
        reconstruction = tiny_vq(_pixels()).reconstruction
    assert from_grid.shape == (2, 3, 32, 32)
    assert torch.equal(from_grid, from_flat)
    assert torch.allclose(from_grid, reconstruction, atol=1e-5)


def test_forward_loss_terms_and_their_gradients():
    model = LlamaGenVQVAE(tiny_vq_config(entropy_loss_ratio=0.1)).train()
    out = model(_pixels())
    assert out.commitment_loss.item() == pytest.approx(0.25 * out.codebook_loss.item(), rel=1e-5)
    assert out.entropy_loss.item() != 0
    out.codebook_loss.backward(retain_graph=True)
    assert model.quantize.embedding.weight.grad.abs().sum() > 0 and model.encoder.conv_in.weight.grad is None
    model.zero_grad()
    out.commitment_loss.backward(retain_graph=True)
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0 and model.quantize.embedding.weight.grad is None
    model.zero_grad()
    out.reconstruction.square().mean().backward()  # straight-through: the decoder loss reaches the encoder
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert LlamaGenVQVAE(tiny_vq_config()).eval()(_pixels()).entropy_loss.item() == 0


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.zeros(2, 3, 31, 32), "divisible by the downsample factor 2"),
        (torch.zeros(2, 1, 32, 32), "3 channels"),
        (torch.zeros(3, 32, 32), r"float tensor \[B, 3, H, W\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), r"float tensor \[B, 3, H, W\]"),
    ],
)
def test_encode_rejects_bad_pixels(tiny_vq, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_vq.encode(pixel_values)


@pytest.mark.parametrize(
    "indices, message",
    [
        (torch.full((1, 4, 4), 64), r"indices must lie in \[0, 64\)"),
        (torch.zeros(1, 15, dtype=torch.long), "square grid"),
        (torch.zeros(1, 4, 4), "int64/int32"),
    ],
)
def test_decode_rejects_bad_indices(tiny_vq, indices, message):
    with pytest.raises(ValueError, match=message):
        tiny_vq.decode(indices)


def test_hidden_states_are_the_encoder_then_the_decoder_feature_maps(tiny_vq):
    with torch.no_grad():
        out = tiny_vq(_pixels(), output_hidden_states=True)
        encoded = tiny_vq.encode(_pixels(), output_hidden_states=True)
        as_tuple = tiny_vq(_pixels(), return_dict=False)
    # encoder: into level 0, out of levels 0 and 1 and the mid block; decoder: out of the mid block, levels 0 and 1
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [
        (32, 32, 32), (32, 16, 16), (64, 16, 16), (64, 16, 16), (64, 16, 16), (64, 32, 32), (32, 32, 32)]
    for ours, encoder_map in zip(out.hidden_states, encoded.hidden_states, strict=False):
        assert torch.equal(ours, encoder_map)
    assert len(encoded.hidden_states) == 4 and tiny_vq(_pixels()).hidden_states is None
    assert torch.equal(as_tuple[0], out.reconstruction) and torch.equal(as_tuple[-1], out.indices)


def test_save_pretrained_round_trip(tiny_vq, tmp_path):
    tiny_vq.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, LlamaGenVQVAE)
    with torch.no_grad():
        assert torch.equal(loaded.encode(_pixels()).indices, tiny_vq.encode(_pixels()).indices)
        assert torch.allclose(loaded(_pixels()).reconstruction, tiny_vq(_pixels()).reconstruction)
