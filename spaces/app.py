"""Class-conditional image generation with a `STARPipeline` of any family (LlamaGen / ST-AR, VAR, FlexVAR, Prologue):
the app of the Space. For Prologue models it also keeps each image's prologue and redraws its details.

Spaces imports this file and serves `demo` (the model from `$STAR_MODEL`, else `DEFAULT_MODEL`); run as a script,
`python spaces/app.py --model org/st-ar-b-256` (a Hub repo id or a local pipeline directory) serves the same app.
"""

import argparse
import functools
import os

import gradio as gr
import torch
from diffusers import DiffusionPipeline

DEFAULT_MODEL = "org/st-ar-b-256"  # the `models:` entry of this Space's README.md
MODEL_ID = os.environ.get("STAR_MODEL", DEFAULT_MODEL)

# Bounds: one request draws at most MAX_IMAGES images; one request decodes at a time and at most QUEUE_SIZE wait.
MAX_IMAGES = 8
MAX_SEED = 2**31 - 1
QUEUE_SIZE = 16
CONCURRENCY_LIMIT = 1
GUIDANCE_RANGE = (0.0, 10.0)
TEMPERATURE_RANGE = (0.05, 2.0)
TOP_P_RANGE = (0.05, 1.0)


@functools.lru_cache(maxsize=2)
def load_pipeline(model_id: str) -> DiffusionPipeline:
    """The STARPipeline of `model_id`, with the code its repo or folder carries (the Space installs no package of
    ours; the Space's owner chooses the model, so its code is trusted), on the GPU in bf16 when there is one, else on
    the CPU in fp32; loaded once."""
    try:
        pipe = DiffusionPipeline.from_pretrained(model_id, trust_remote_code=True)
    except Exception as error:  # no such folder or repo, no network, a corrupt download, ...
        raise ValueError(f"cannot load a STARPipeline from {model_id!r} (a Hub repo id or a local pipeline "
                         f"directory): {type(error).__name__}: {error}") from error
    if type(pipe).__name__ != "STARPipeline":
        raise ValueError(f"cannot load a STARPipeline from {model_id!r}: it holds a {type(pipe).__name__}")
    if torch.cuda.is_available():
        pipe.to("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    elif pipe.transformer.config.model_type == "llamagen":
        pipe.transformer.set_attn_implementation("eager")  # SDPA is slow for one-token queries on CPU (README)
    pipe.set_progress_bar_config(disable=True)  # progress goes to the page instead
    return pipe


def class_choices(pipe: DiffusionPipeline) -> list[tuple[str, int]]:
    """("name, synonyms (id)", id) for every class the model knows, from its own `id2label`."""
    num_classes = pipe.transformer.config.num_classes
    return [(f"{name} ({i})", i) for i, name in sorted(pipe.id2label.items()) if i < num_classes]


def _check_number(name: str, value, low, high, integer: bool = False):
    """Server-side bounds (an API client can send anything); the message names the input."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and low <= value <= high and (not integer or value == int(value))):  # NaN fails the bounds
        kind = "an integer" if integer else "a number"
        raise gr.Error(f"{name} must be {kind} from {low} to {high}, got {value!r}.")
    return int(value) if integer else float(value)


def _guidance(pipe: DiffusionPipeline, guidance_scale: float):
    """The slider's scale as the model takes it: Prologue's split CFG keeps its prologue scale and power from the
    model's default and takes the slider as the visual scale."""
    default = pipe.default_guidance_scale()
    if isinstance(default, list) and len(default) == 3:
        return (default[0], guidance_scale, default[2])
    if isinstance(default, list):  # a cosine ramp (scale, power)
        return (guidance_scale, default[1])
    return guidance_scale


def _sample(model_id, class_ids, seed, guidance_scale, temperature, top_k, top_p, num_images, progress,
            detail_seed=None):
    """The checked request drawn with generators seeded `seed + i`; with `detail_seed`, each image keeps the prologue
    that seed gives it and its visual tokens are drawn again with generators seeded `detail_seed + i`."""
    pipe = load_pipeline(model_id)
    if not class_ids:
        raise gr.Error("Pick at least one class.")
    known_ids = {i for _, i in class_choices(pipe)}
    if not isinstance(class_ids, list) or not all(type(i) is int and i in known_ids for i in class_ids):
        raise gr.Error(f"Classes must be a list of class ids from the picker, got {class_ids!r}.")
    num_images = _check_number("Images per class", num_images, 1, MAX_IMAGES, integer=True)
    if len(class_ids) * num_images > MAX_IMAGES:
        raise gr.Error(f"At most {MAX_IMAGES} images per request: {len(class_ids)} classes x {num_images} images "
                       f"per class is {len(class_ids) * num_images}.")
    seed = _check_number("Seed", seed, 0, MAX_SEED - MAX_IMAGES, integer=True)
    guidance_scale = _check_number("Guidance scale", guidance_scale, *GUIDANCE_RANGE)
    temperature = _check_number("Temperature", temperature, *TEMPERATURE_RANGE)
    top_k = _check_number("Top-k", top_k, 0, pipe.transformer.config.vocab_size, integer=True)
    top_p = _check_number("Top-p", top_p, *TOP_P_RANGE)
    if detail_seed is not None:
        if pipe.transformer.config.model_type != "prologue":
            raise gr.Error("Only Prologue models have a prologue to keep.")
        detail_seed = _check_number("Details seed", detail_seed, 0, MAX_SEED - MAX_IMAGES, integer=True)

    # progress over every decoded step: a resample decodes the whole sequences, then their visual tokens again
    config = pipe.transformer.config
    bar = {"done": 0, "total": pipe.num_steps()}
    if detail_seed is not None:
        bar["total"] += pipe.num_steps() - config.num_prologue_tokens - 1
    progress((0, bar["total"]), desc="Decoding", unit="steps")

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        bar["done"] += 1
        progress((bar["done"], bar["total"]), desc="Decoding", unit="steps")
        return {}

    num_total = len(class_ids) * num_images
    call = dict(num_images_per_label=num_images, guidance_scale=_guidance(pipe, guidance_scale), temperature=temperature,
                top_k=top_k, top_p=top_p, callback_on_step_end=on_step_end)
    try:
        out = pipe(class_ids, generator=[torch.Generator().manual_seed(seed + i) for i in range(num_total)],
                   output_type="pil" if detail_seed is None else "latent", **call)
        if detail_seed is not None:
            out = pipe(class_ids, generator=[torch.Generator().manual_seed(detail_seed + i) for i in range(num_total)],
                       prologue_tokens=out.prologue_tokens, **call)
    except ValueError as error:  # the pipeline's own input checks
        raise gr.Error(str(error)) from error
    names = [pipe.id2label[i].split(",")[0] for i in class_ids for _ in range(num_images)]
    return [(image, f"{name}, seed {seed + i}" + ("" if detail_seed is None else f", details {detail_seed + i}"))
            for i, (image, name) in enumerate(zip(out.images, names))]


def generate(model_id, class_ids, seed, guidance_scale, temperature, top_k, top_p, num_images,
             progress=gr.Progress()):
    """Draws `num_images` images of each selected class; image i is drawn from a generator seeded `seed + i`."""
    return _sample(model_id, class_ids, seed, guidance_scale, temperature, top_k, top_p, num_images, progress)


def resample_details(model_id, class_ids, seed, guidance_scale, temperature, top_k, top_p, num_images, detail_seed,
                     progress=gr.Progress()):
    """Prologue: the images of `generate` with the same inputs keep their prologue tokens (class, layout, palette)
    and draw their visual tokens again from generators seeded `detail_seed + i`."""
    return _sample(model_id, class_ids, seed, guidance_scale, temperature, top_k, top_p, num_images, progress,
                   detail_seed)


def build_demo(model_id: str) -> gr.Blocks:
    """The Blocks app for one model (loaded here, so that a bad model id fails at start-up, not at the first click)."""
    pipe = load_pipeline(model_id)
    config = pipe.transformer.config
    choices = class_choices(pipe)
    default_class = 207 if any(i == 207 for _, i in choices) else choices[0][1]  # golden retriever on ImageNet
    image_size = config.grid_size * pipe.vqvae.config.downsample_factor
    prologue = config.model_type == "prologue"
    token_wise = config.model_type in ("llamagen", "prologue")
    how = (f"a {config.grid_size}x{config.grid_size} grid of VQ codes, token by token," if token_wise else
           f"{len(config.patch_nums)} token maps, scale by scale from 1x1 to {config.grid_size}x{config.grid_size},")
    if prologue:
        how = f"{config.num_prologue_tokens} prologue tokens, then " + how
    default_guidance = pipe.default_guidance_scale()
    slider_guidance = default_guidance[1 if len(default_guidance) == 3 else 0] if prologue else default_guidance
    with gr.Blocks(title="ST-AR image generation") as demo:
        gr.Markdown(
            f"# ST-AR class-conditional image generation\n"
            f"`{model_id}`: a {type(pipe.transformer).__name__} ({pipe.transformer.num_parameters() / 1e6:.1f}M "
            f"parameters) draws {how} for one of {config.num_classes} classes with classifier-free guidance, and a "
            f"{type(pipe.vqvae).__name__} decodes them to {image_size}x{image_size} pixels. Running on "
            f"{pipe.device.type} in {str(pipe.transformer.dtype).removeprefix('torch.')}; at most {MAX_IMAGES} images "
            f"per request."
        )
        model = gr.State(model_id)
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.Dropdown(choices, value=[default_class], multiselect=True, filterable=True,
                                      max_choices=MAX_IMAGES, label="Classes (type to search)", elem_id="classes")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images per class")
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED - MAX_IMAGES, label="Seed")
                guidance_scale = gr.Slider(*GUIDANCE_RANGE, value=slider_guidance, step=0.05,
                                           label=f"Guidance scale ({1 if token_wise else 0} = none)"
                                           + (" of the visual tokens" if prologue else ""))
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
                    top_k = gr.Slider(0, config.vocab_size, value=0, step=1, label="Top-k (0 = off)")
                    top_p = gr.Slider(*TOP_P_RANGE, value=1.0, step=0.01, label="Top-p (1 = off)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Group(visible=prologue):
                    detail_seed = gr.Number(1000, precision=0, minimum=0, maximum=MAX_SEED - MAX_IMAGES,
                                            label="Details seed")
                    details = gr.Button("Keep the prologue, resample the details", elem_id="resample-details")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Samples", columns=4, height="auto", format="png", elem_id="gallery")
        # preprocess=False: the raw values reach `generate`, whose checks name the input that is out of bounds
        inputs = [model, classes, seed, guidance_scale, temperature, top_k, top_p, num_images]
        button.click(generate, inputs=inputs, outputs=gallery, api_name="generate", preprocess=False)
        details.click(resample_details, inputs=inputs + [detail_seed], outputs=gallery, api_name="resample_details",
                      preprocess=False)
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL_ID, help="Hub repo id or local STARPipeline directory "
                        f"(default: $STAR_MODEL or {DEFAULT_MODEL})")
    parser.add_argument("--host", default=None, help="address to serve on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    try:
        demo = build_demo(args.model)
    except ValueError as error:
        parser.error(f"--model: {error}")
    demo.launch(server_name=args.host, server_port=args.port)
else:
    demo = build_demo(MODEL_ID)
