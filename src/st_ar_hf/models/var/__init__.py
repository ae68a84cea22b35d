"""The scale-wise family: VAR (arXiv 2404.02905) with its multi-scale residual VQVAE, and FlexVAR (arXiv 2502.20313),
which samples any scale schedule with LlamaGen's VQ tokenizer. SAR (arXiv 2512.06421) post-trains FlexVAR."""

from .configuration_var import FLEXVAR_PRESETS, VAR_PRESETS, FlexVARConfig, VARConfig, VARVQVAEConfig
from .modeling_var import FlexVARForImageGeneration, VARForImageGeneration
from .modeling_var_vqvae import VARVQVAE

__all__ = ["FLEXVAR_PRESETS", "VAR_PRESETS", "FlexVARConfig", "FlexVARForImageGeneration", "VARConfig",
           "VARForImageGeneration", "VARVQVAE", "VARVQVAEConfig"]
