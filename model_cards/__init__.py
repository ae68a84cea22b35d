"""Model card templates (the `*.md` files beside this module), rendered with `huggingface_hub.ModelCard`.

Hub metadata: the Hub accepts only the tasks of its own list as `pipeline_tag`, and that list has no class-conditional
generation, so generators are tagged `unconditional-image-generation` (the task of DiT-style pipelines; `text-to-image`
would promise prompts) with a `class-conditional-image-generation` tag beside it; tokenizers map images to codes and
are tagged `image-feature-extraction`.
"""

import math
import re
from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData, SpaceCard, SpaceCardData

from st_ar_hf.models.llamagen.configuration_llamagen import LLAMAGEN_PRESETS, LLAMAGEN_VQ_PRESETS

TEMPLATES = Path(__file__).parent
GENERATION_TASK = ("unconditional-image-generation", "Class-conditional image generation")  # (pipeline_tag, name)
RECONSTRUCTION_TASK = ("image-feature-extraction", "Image reconstruction")
IMAGENET, MNIST = "ILSVRC/imagenet-1k", "ylecun/mnist"  # the official checkpoints' data; the embedded digits' source
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

# results keys (those of `st-ar evaluate --output-file`, and rFID/PSNR/SSIM for tokenizers) -> metric names on the card
METRICS = {"fid": "FID", "sfid": "sFID", "inception_score": "Inception Score", "precision": "Precision",
           "recall": "Recall", "rfid": "rFID", "psnr": "PSNR (dB)", "ssim": "SSIM", "codebook_usage": "Codebook usage"}
PIXEL_METRICS = ("psnr", "ssim", "codebook_usage")  # the others come from a feature network, which the name gives

# the originals: Hub id of their weights -> how a card cites them
ORIGINS = {
    "FoundationVision/LlamaGen": "[LlamaGen](https://github.com/FoundationVision/LlamaGen) (Sun et al., *Autoregressive "
                                 "Model Beats Diffusion: Llama for Scalable Image Generation*, arXiv 2406.06525)",
    "FoundationVision/var": "[VAR](https://github.com/FoundationVision/VAR) (Tian et al., *Visual Autoregressive "
                            "Modeling: Scalable Image Generation via Next-Scale Prediction*, arXiv 2404.02905)",
    "Zyriix/prologue": "[Prologue](https://github.com/Zyriix/prologue) (*Autoregressive Visual Generation Needs a "
                       "Prologue*, arXiv 2605.06137)",
    "jiaosiyu1999/FlexVAR": "[FlexVAR](https://github.com/jiaosiyu1999/FlexVAR) (Jiao et al., *FlexVAR: Flexible "
                            "Visual Autoregressive Modeling without Residual Prediction*, arXiv 2502.20313)",
}
_GENERATOR_TAGS = ["class-conditional-image-generation", "autoregressive"]
_TOKENIZER_TAGS = ["image-tokenizer", "vector-quantization"]
# kind of `st-ar convert` -> (title, tags, task, the original's Hub id); SAR's weights are FlexVAR weights
_CONVERTED = {
    "llamagen-gpt": ("LlamaGen class-conditional GPT", ["llamagen", *_GENERATOR_TAGS], GENERATION_TASK,
                     "FoundationVision/LlamaGen"),
    "llamagen-vq": ("LlamaGen VQ image tokenizer", ["llamagen", *_TOKENIZER_TAGS], RECONSTRUCTION_TASK,
                    "FoundationVision/LlamaGen"),
    "var": ("VAR scale-wise class-conditional transformer", ["var", "scale-wise", *_GENERATOR_TAGS], GENERATION_TASK,
            "FoundationVision/var"),
    "var-vqvae": ("VAR multi-scale residual VQVAE", ["var", *_TOKENIZER_TAGS], RECONSTRUCTION_TASK,
                  "FoundationVision/var"),
    "flexvar": ("FlexVAR scale-wise class-conditional transformer", ["flexvar", "scale-wise", *_GENERATOR_TAGS],
                GENERATION_TASK, "jiaosiyu1999/FlexVAR"),
    "prologue-tokenizer": ("Prologue image tokenizer (visual and prologue tokens)", ["prologue", *_TOKENIZER_TAGS],
                           RECONSTRUCTION_TASK, "Zyriix/prologue"),
    "prologue-ar": ("Prologue class-conditional AR prior", ["prologue", *_GENERATOR_TAGS], GENERATION_TASK,
                    "Zyriix/prologue"),
}


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a local path."""
    return bool(_HUB_ID.fullmatch(name)) and not Path(name).exists()


def training_datasets(arguments: dict) -> list[str] | None:
    """The Hub data sets a run of the training scripts read (`arguments`: its arguments), if they are on the Hub."""
    if arguments.get("embedded_dataset_dir"):
        return [MNIST]
    source = arguments.get("dataset") or arguments.get("train_codes")
    return [source] if source and is_hub_id(source) else None


def training_base_model(arguments: dict) -> str | list[str] | None:
    """The model a run started from: its `--model` when that is no preset, as a Hub id, or through the card of a
    local folder (converted weights name `FoundationVision/LlamaGen`)."""
    model = arguments.get("model")
    if model is None or model in LLAMAGEN_PRESETS or model in LLAMAGEN_VQ_PRESETS:
        return None
    card = Path(model) / "README.md"
    if card.is_file():
        return ModelCard.load(card).data.base_model
    return model if is_hub_id(model) else None


def eval_results(results: dict, dataset: str, task: tuple[str, str]) -> list[EvalResult]:
    """Model-index entries of one results dict (as written by `st-ar evaluate --output-file`: metric values, `feature_network`,
    `num_samples`, `num_reference`) on the data set `dataset`. Metric names carry the feature network, since FIDs
    on different networks are different numbers. Metrics the evaluation marked unreliable (None) are left out."""
    found = [key for key in METRICS if results.get(key) is not None]
    if not found:
        raise ValueError(f"no metric among {list(METRICS)}")
    for key in found:
        value = results[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key!r} must be a finite number, got {value!r}")
    network = results.get("feature_network")
    if not isinstance(network, str) and any(key not in PIXEL_METRICS for key in found):
        raise ValueError(f"'feature_network' (the network behind {[k for k in found if k not in PIXEL_METRICS]}) is missing")
    counts = {key: results[key] for key in ("num_samples", "num_reference") if key in results}
    dataset_name = f"{dataset} ({counts['num_reference']} reference images)" if "num_reference" in counts else dataset
    return [EvalResult(task_type=task[0], task_name=task[1], dataset_type=dataset, dataset_name=dataset_name,
                       metric_type=key, metric_value=float(results[key]), metric_args=counts or None,
                       metric_name=METRICS[key] if key in PIXEL_METRICS else f"{METRICS[key]}, {network}")
            for key in found]


def converted_base_model(kind: str) -> str:
    """The Hub id of the original weights that `st-ar convert <kind>` reads."""
    return _CONVERTED[kind][3]


def converted_model_card(model, source: str, kind: str) -> ModelCard:
    """Card of a model converted from an official checkpoint (`kind`: the `st-ar convert` kind, a key of
    `_CONVERTED`)."""
    title, tags, task, base_model = _CONVERTED[kind]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task[0],
        license="mit",
        tags=["st-ar-hf", *tags],
        datasets=[IMAGENET],
        base_model=base_model,
    )
    config = {k: v for k, v in model.config.to_diff_dict().items() if not k.startswith("_") and k not in ("auto_map", "architectures", "transformers_version")}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "converted.md"),
        title=title,
        origin=ORIGINS[base_model],
        source=source,
        class_name=type(model).__name__,
        num_parameters=f"{model.num_parameters():,}",
        config=config,
    )


def _trained_model_card(template: str, library_name: str, task: tuple[str, str], tags: list[str], model_name: str,
                        training: dict | None, evaluation: list[EvalResult], repo_id: str | None,
                        base_model: str | list[str] | None, **template_kwargs) -> ModelCard:
    """A card whose metadata comes from a training run (data sets, base model), its evaluation (model-index) and the
    repo it is pushed to; `template_kwargs` fill the rest of `template`."""
    arguments = training["arguments"] if training else {}
    card_data = ModelCardData(
        library_name=library_name,
        pipeline_tag=task[0],
        license="mit",
        tags=["st-ar-hf", *tags],
        datasets=training_datasets(arguments),
        base_model=base_model or training_base_model(arguments),
        model_name=repo_id or model_name,
        eval_results=list(evaluation) or None,
    )
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / template), repo_id=repo_id, evaluation=evaluation, training=training,
        training_yaml=yaml.safe_dump(arguments, sort_keys=True) if training else None, **template_kwargs,
    )


def pipeline_model_card(pipeline, remote_code: bool, training: dict | None = None, evaluation: list[EvalResult] = (),
                        repo_id: str | None = None, base_model: str | list[str] | None = None) -> ModelCard:
    """Card of a saved `STARPipeline` directory; `training` (the training summary of `training/train.py`: steps,
    arguments, data) adds a training section and the data sets, `evaluation` (see `eval_results`) the model-index
    and a results table, `repo_id` the id the usage snippet loads, `base_model` the weights it started from
    (default: the run's `--model` when that is no preset)."""
    transformer, config = pipeline.transformer, pipeline.transformer.config
    if config.model_type == "llamagen":
        generation = f"a {config.grid_size}x{config.grid_size} grid of VQ codes, token by token,"
        sampling = "Sampling follows LlamaGen: classifier-free guidance on raw logits, then temperature, top-k, top-p."
    elif config.model_type == "prologue":
        generation = (f"{config.num_prologue_tokens} prologue tokens, then a {config.grid_size}x{config.grid_size} grid "
                      "of visual codes, token by token,")
        sampling = ("Sampling follows Prologue: split classifier-free guidance `(prologue scale, visual scale, power)` "
                    "(constant on the prologue, a cosine ramp over the visual tokens), then temperature (a "
                    "(prologue, visual) pair is accepted), top-k, top-p; without guidance the paper's temperatures "
                    f"{tuple(config.no_guidance_temperature)}. `prologue_tokens=` keeps a prologue and redraws the details.")
    else:
        scales = config.patch_nums
        generation = f"token maps scale by scale ({len(scales)} steps, from 1x1 to {scales[-1]}x{scales[-1]})"
        sampling = (f"Sampling follows {'VAR' if config.model_type == 'var' else 'FlexVAR'}: `guidance_scale` is the "
                    "original's `cfg`, ramped over the scales, then temperature, top-k, top-p"
                    + ("; `scales=` samples other schedules." if config.model_type == "flexvar" else "."))
    return _trained_model_card(
        "star_pipeline.md", "diffusers", GENERATION_TASK,
        [config.model_type, "class-conditional-image-generation", "autoregressive"],
        f"STAR pipeline ({type(transformer).__name__})", training, evaluation, repo_id, base_model,
        remote_code=remote_code,
        transformer_class=type(transformer).__name__,
        transformer_parameters=f"{transformer.num_parameters():,}",
        vqvae_class=type(pipeline.vqvae).__name__,
        vqvae_parameters=f"{pipeline.vqvae.num_parameters():,}",
        image_size=config.grid_size * pipeline.vqvae.config.downsample_factor,
        num_classes=config.num_classes,
        generation=generation,
        sampling=sampling,
        guidance_scale=pipeline.default_guidance_scale(),
        example_label=pipeline.id2label[min(pipeline.id2label)].split(",")[0],
    )


def tokenizer_model_card(model, training: dict | None = None, evaluation: list[EvalResult] = (),
                         repo_id: str | None = None, base_model: str | list[str] | None = None) -> ModelCard:
    """Card of a VQ tokenizer; `training` (steps and arguments of `training/train_tokenizer.py`) adds a training
    section and the data sets; `evaluation`, `repo_id` and `base_model` as for `pipeline_model_card`."""
    family, title = {"var_vqvae": ("var", "VAR multi-scale residual VQVAE"),
                     "prologue_tokenizer": ("prologue", "Prologue image tokenizer")}.get(
        model.config.model_type, ("llamagen", "LlamaGen VQ image tokenizer"))
    return _trained_model_card(
        "llamagen_tokenizer.md", "transformers", RECONSTRUCTION_TASK, [family, *_TOKENIZER_TAGS], title, training,
        evaluation, repo_id, base_model,
        model_class=type(model).__name__,
        num_parameters=f"{model.num_parameters():,}",
        config=model.config,
        image_size=(training["arguments"] if training else {}).get("image_size", 256),
    )


def code_shards_card(vqvae: str, source: str, source_datasets: list[str] | None = None, **facts) -> DatasetCard:
    """Card of a folder of code shards written by `training/extract_codes.py` (`source_datasets`: the Hub data sets
    of the images, if any; `facts`: image_size, crop_range, num_crops, grid_size, codebook_size, num_examples,
    num_skipped)."""
    card_data = DatasetCardData(license="other", tags=["st-ar-hf", "llamagen", "image-tokens"],
                                task_categories=[GENERATION_TASK[0]],
                                source_datasets=[f"extended|{name}" for name in source_datasets or []] or None,
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
