"""Prologue (arXiv 2605.06137): the tokenizer with prologue tokens and the AR prior over [prologue] [EOS] [visual]."""

from .configuration_prologue import (
    PROLOGUE_PRESETS, PROLOGUE_SAMPLING, PROLOGUE_TOKENIZER_PRESETS, PrologueConfig, PrologueTokenizerConfig,
)
from .modeling_prologue import PrologueForImageGeneration
from .modeling_prologue_tokenizer import PrologueTokenizer

__all__ = ["PROLOGUE_PRESETS", "PROLOGUE_SAMPLING", "PROLOGUE_TOKENIZER_PRESETS", "PrologueConfig",
           "PrologueForImageGeneration", "PrologueTokenizer", "PrologueTokenizerConfig"]
