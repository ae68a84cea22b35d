"""st-ar-hf: autoregressive image generation (LlamaGen and Prologue token by token; VAR and FlexVAR scale by scale)
and ST-AR's self-guided training, on the Hugging Face stack."""

import warnings

from transformers import AutoConfig, AutoModel

from .models.llamagen import (
    LLAMAGEN_PRESETS, LLAMAGEN_VQ_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig,
)
from .models.prologue import (
    PROLOGUE_PRESETS, PROLOGUE_TOKENIZER_PRESETS, PrologueConfig, PrologueForImageGeneration, PrologueVQVAE,
    PrologueVQVAEConfig,
)
from .models.var import (
    FLEXVAR_PRESETS, VAR_PRESETS, FlexVARConfig, FlexVARForImageGeneration, VARConfig, VARForImageGeneration, VARVQVAE,
    VARVQVAEConfig,
)
from .pipelines import STARPipeline, STARPipelineOutput
from .pipelines.decoding_llamagen import generate as generate_llamagen
from .pipelines.decoding_prologue import generate as generate_prologue

__version__ = "0.1.0"

for _config, _model in (
    (LlamaGenConfig, LlamaGenForImageGeneration),
    (LlamaGenVQVAEConfig, LlamaGenVQVAE),
    (VARConfig, VARForImageGeneration),
    (FlexVARConfig, FlexVARForImageGeneration),
    (VARVQVAEConfig, VARVQVAE),
    (PrologueConfig, PrologueForImageGeneration),
    (PrologueVQVAEConfig, PrologueVQVAE),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    # saved directories carry their code and an `auto_map`, so they load with trust_remote_code=True anywhere
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModel")
# `model.generate(class_labels, guidance_scale=...)` of the token-by-token models runs the pipeline's decoding
LlamaGenForImageGeneration.decoding = staticmethod(generate_llamagen)
PrologueForImageGeneration.decoding = staticmethod(generate_prologue)

DEPRECATED_NAMES = {"PrologueTokenizer": "PrologueVQVAE", "PrologueTokenizerConfig": "PrologueVQVAEConfig"}


def __getattr__(name: str):
    if name in DEPRECATED_NAMES:
        warnings.warn(f"{name} is deprecated: use {DEPRECATED_NAMES[name]}", FutureWarning, stacklevel=2)
        return globals()[DEPRECATED_NAMES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FLEXVAR_PRESETS",
    "LLAMAGEN_PRESETS",
    "LLAMAGEN_VQ_PRESETS",
    "PROLOGUE_PRESETS",
    "PROLOGUE_TOKENIZER_PRESETS",
    "VAR_PRESETS",
    "FlexVARConfig",
    "FlexVARForImageGeneration",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenVQVAE",
    "LlamaGenVQVAEConfig",
    "PrologueConfig",
    "PrologueForImageGeneration",
    "PrologueVQVAE",
    "PrologueVQVAEConfig",
    "STARPipeline",
    "STARPipelineOutput",
    "VARConfig",
    "VARForImageGeneration",
    "VARVQVAE",
    "VARVQVAEConfig",
]
