"""LlamaGen (arXiv 2406.06525): the VQ tokenizer and the class-conditional GPT, token by token."""

from .configuration_llamagen import LLAMAGEN_PRESETS, LLAMAGEN_VQ_PRESETS, LlamaGenConfig, LlamaGenVQVAEConfig
from .modeling_llamagen import LlamaGenForImageGeneration
from .modeling_llamagen_vq import LlamaGenVQVAE

__all__ = ["LLAMAGEN_PRESETS", "LLAMAGEN_VQ_PRESETS", "LlamaGenConfig", "LlamaGenForImageGeneration", "LlamaGenVQVAE",
           "LlamaGenVQVAEConfig"]
