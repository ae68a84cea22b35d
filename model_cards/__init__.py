"""Model card templates (the `*.md` files beside this module), rendered with `huggingface_hub.ModelCard`."""

from pathlib import Path

import yaml
from huggingface_hub import SpaceCard, SpaceCardData
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

TEMPLATES = Path(__file__).parent

_CONVERTED = {
    "gpt": ("LlamaGen class-conditional GPT", ["class-conditional-image-generation", "autoregressive"]),
    "vq": ("LlamaGen VQ image tokenizer", ["image-tokenizer", "vector-quantization"]),
}


def converted_model_card(model, source: str, kind: str) -> ModelCard:
    """Card of a model converted from an official LlamaGen checkpoint (`kind` is "gpt" or "vq")."""
    title, tags = _CONVERTED[kind]
    card_data = ModelCardData(
        library_name="transformers",
        license="mit",
        tags=["llamagen", "st-ar-hf", *tags],
        base_model="FoundationVision/LlamaGen",
    )
    config = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith("_") and k not in ("auto_map", "architectures", "transformers_version")}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "llamagen_converted.md"),
        title=title,
        source=source,
        class_name=type(model).__name__,
        num_parameters=f"{model.num_parameters():,}",
        config=config,
    )


def pipeline_model_card(pipeline, remote_code: bool, training: dict | None = None) -> ModelCard:
    """Card of a saved `STARPipeline` directory; `training` (the training summary of `training/train.py`: steps,
    arguments, data) adds a training section."""
    card_data = ModelCardData(
        library_name="diffusers",
        license="mit",
        tags=["st-ar-hf", "llamagen", "class-conditional-image-generation", "autoregressive"],
    )
    transformer = pipeline.transformer
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "star_pipeline.md"),
        remote_code=remote_code,
        transformer_class=type(transformer).__name__,
        transformer_parameters=f"{transformer.num_parameters():,}",
        vqvae_parameters=f"{pipeline.vqvae.num_parameters():,}",
        image_size=transformer.config.grid_size * pipeline.vqvae.config.downsample_factor,
        grid_size=transformer.config.grid_size,
        num_classes=transformer.config.num_classes,
        example_label=pipeline.id2label[min(pipeline.id2label)].split(",")[0],
        training=training,
        training_yaml=yaml.safe_dump(training["arguments"], sort_keys=True) if training else None,
    )


def tokenizer_model_card(model, training: dict) -> ModelCard:
    """Card of a VQ tokenizer trained with `training/train_tokenizer.py` (`training`: steps and arguments)."""
    card_data = ModelCardData(
        library_name="transformers",
        license="mit",
        tags=["st-ar-hf", "llamagen", "image-tokenizer", "vector-quantization"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "llamagen_tokenizer.md"),
        num_parameters=f"{model.num_parameters():,}",
        config=model.config,
        training=training,
        training_yaml=yaml.safe_dump(training["arguments"], sort_keys=True),
    )


def code_shards_card(vqvae: str, source: str, **facts) -> DatasetCard:
    """Card of a folder of code shards written by `training/extract_codes.py` (`facts`: image_size, crop_range,
    num_crops, grid_size, codebook_size, num_examples, num_skipped)."""
    card_data = DatasetCardData(license="other", tags=["st-ar-hf", "llamagen", "image-tokens"],
                                configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "train-*.parquet"}]}])
    return DatasetCard.from_template(card_data, template_path=str(TEMPLATES / "code_shards.md"), vqvae=vqvae,
                                     source=source, **facts)

def space_card(model_id: str, hardware: str = "a10g-small", sdk_version: str = "6.31.0") -> SpaceCard:
    """README of the Gradio Space in `spaces/` (app.py) for the `STARPipeline` repo `model_id`; `sdk_version` is the
    gradio release Spaces installs (the one the `demo` extra pins)."""
    card_data = SpaceCardData(
        title="ST-AR image generation",
        emoji="🎨",
        colorFrom="indigo",
        colorTo="purple",
        sdk="gradio",
        sdk_version=sdk_version,
        python_version="3.11",
        app_file="app.py",
        pinned=False,
        license="mit",
        short_description="Class-conditional autoregressive image generation",
        models=[model_id],
        suggested_hardware=hardware,
        tags=["st-ar-hf", "llamagen", "class-conditional-image-generation", "autoregressive"],
    )
    return SpaceCard.from_template(card_data, template_path=str(TEMPLATES / "space.md"), model_id=model_id)
