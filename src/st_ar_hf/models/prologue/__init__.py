"""Prologue (arXiv 2605.06137): the tokenizer with prologue tokens and the AR prior over [prologue] [EOS] [visual]."""

from .configuration_prologue import (
    PROLOGUE_PRESETS, PROLOGUE_SAMPLING, PROLOGUE_TOKENIZER_PRESETS, PrologueConfig, PrologueVQVAEConfig,
)
from .modeling_prologue import PrologueForImageGeneration
from .modeling_prologue_tokenizer import PrologueVQVAE

__all__ = ["PROLOGUE_PRESETS", "PROLOGUE_SAMPLING", "PROLOGUE_TOKENIZER_PRESETS", "PrologueConfig",
           "PrologueForImageGeneration", "PrologueVQVAE", "PrologueVQVAEConfig"]
