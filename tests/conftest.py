import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig  # noqa: E402


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
