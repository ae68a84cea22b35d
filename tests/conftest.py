import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from st_ar_hf import (  # noqa: E402
    FlexVARConfig, FlexVARForImageGeneration, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE,
    LlamaGenVQVAEConfig, PrologueConfig, PrologueForImageGeneration, PrologueVQVAE, PrologueVQVAEConfig,
    VARConfig, VARForImageGeneration, VARVQVAE, VARVQVAEConfig,
)


def tiny_gpt_config(**overrides) -> LlamaGenConfig:
    kwargs = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_classes=10,
                  block_size=16, intermediate_size=96)
    return LlamaGenConfig(**{**kwargs, **overrides})


def tiny_vq_config(**overrides) -> LlamaGenVQVAEConfig:
    kwargs = dict(base_channels=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32, codebook_size=64, codebook_embed_dim=4)
    return LlamaGenVQVAEConfig(**{**kwargs, **overrides})


@pytest.fixture
def tiny_gpt() -> LlamaGenForImageGeneration:
    """Tiny random GPT in eval mode, with a non-zero head so that logits carry information."""
    torch.manual_seed(0)
    model = LlamaGenForImageGeneration(tiny_gpt_config()).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model


@pytest.fixture
def tiny_vq() -> LlamaGenVQVAE:
    torch.manual_seed(0)
    return LlamaGenVQVAE(tiny_vq_config()).eval()


TINY_SCALES = [1, 2, 4]  # 21 tokens; the tiny tokenizers downsample by 2, so 8x8 images


TINY_SCALE_WISE = dict(vocab_size=64, codebook_embed_dim=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_classes=10, patch_nums=TINY_SCALES, class_dropout_prob=0.0)


def tiny_var_config(**overrides) -> VARConfig:
    return VARConfig(**{**TINY_SCALE_WISE, **overrides})


def tiny_flexvar_config(**overrides) -> FlexVARConfig:
    return FlexVARConfig(**{**TINY_SCALE_WISE, "position_grid_size": 8, **overrides})


def tiny_var_vqvae_config(**overrides) -> VARVQVAEConfig:
    kwargs = dict(base_channels=32, ch_mult=[1, 2], num_res_blocks=1, codebook_size=64, codebook_embed_dim=8,
                  patch_nums=TINY_SCALES)
    return VARVQVAEConfig(**{**kwargs, **overrides})


def informative(model):
    """Random weights large enough that every block and the class matter (VAR's init gates blocks at ~1e-5)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("query_log_scale"):
                continue
            scale = 0.5 if parameter.ndim == 1 else parameter.shape[-1] ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


@pytest.fixture
def tiny_var() -> VARForImageGeneration:
    return informative(VARForImageGeneration(tiny_var_config()))


@pytest.fixture
def tiny_flexvar() -> FlexVARForImageGeneration:
    return informative(FlexVARForImageGeneration(tiny_flexvar_config()))


@pytest.fixture
def tiny_var_vqvae() -> VARVQVAE:
    torch.manual_seed(0)
    return VARVQVAE(tiny_var_vqvae_config()).eval()


@pytest.fixture
def tiny_flexvae() -> LlamaGenVQVAE:
    """FlexVAR's tokenizer is LlamaGen's VQ; here with 64 8-d codes."""
    torch.manual_seed(0)
    return LlamaGenVQVAE(tiny_vq_config(codebook_embed_dim=8)).eval()


def tiny_prologue_tokenizer_config(**overrides) -> PrologueVQVAEConfig:
    """32 px images in 8 px patches (a 4x4 grid), 4 prologue tokens, two heads of 32 dims."""
    kwargs = dict(image_size=32, patch_size=8, hidden_size=64, num_encoder_layers=2, num_encoder_heads=2,
                  decoder_hidden_size=64, num_decoder_layers=2, num_decoder_heads=2, num_prologue_tokens=4,
                  codebook_size=64, prologue_codebook_size=16, rope_axes_dim=[10, 10, 12])
    return PrologueVQVAEConfig(**{**kwargs, **overrides})


def tiny_prologue_config(**overrides) -> PrologueConfig:
    kwargs = dict(visual_vocab_size=64, prologue_vocab_size=16, num_prologue_tokens=4, num_visual_tokens=16,
                  hidden_size=64, num_hidden_layers=2, num_attention_heads=2, rotary_dim=12, num_classes=10)
    return PrologueConfig(**{**kwargs, **overrides})


@pytest.fixture
def tiny_prologue_tokenizer() -> PrologueVQVAE:
    return informative(PrologueVQVAE(tiny_prologue_tokenizer_config()))


@pytest.fixture
def tiny_prologue() -> PrologueForImageGeneration:
    """Tiny random Prologue AR with open residual gates (they start closed)."""
    return informative(PrologueForImageGeneration(tiny_prologue_config()))
