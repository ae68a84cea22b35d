"""st-ar-hf: autoregressive image generation with self-guided training (ST-AR) on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from .models.llamagen import (
    LLAMAGEN_PRESETS, LLAMAGEN_VQ_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenVQVAE, LlamaGenVQVAEConfig,
)
from .pipelines import STARPipeline, STARPipelineOutput

__version__ = "0.1.0"

for _config, _model in ((LlamaGenConfig, LlamaGenForImageGeneration), (LlamaGenVQVAEConfig, LlamaGenVQVAE)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    # saved directories carry their code and an `auto_map`, so they load with trust_remote_code=True anywhere
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModel")

__all__ = [
    "LLAMAGEN_PRESETS",
    "LLAMAGEN_VQ_PRESETS",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenVQVAE",
    "LlamaGenVQVAEConfig",
    "STARPipeline",
    "STARPipelineOutput",
]
