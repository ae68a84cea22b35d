"""STARPipeline: class-conditional image generation with any family's transformer (LlamaGen and Prologue token by
token, VAR and FlexVAR scale by scale) and its VQ tokenizer.

This file and the modules it imports (`sampling.py`, `imagenet_labels.py`, one `decoding_<family>.py` per model family)
are the pipeline's only code: `save_pretrained` copies them to the folder's root, so nothing here may import `st_ar_hf`
at module level (the models are reached through their components).
"""

import ast
import difflib
import inspect
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging
from huggingface_hub import HfApi, snapshot_download
from transformers import AutoModel, PreTrainedModel

from .decoding_llamagen import LlamaGenDecoding
from .decoding_prologue import PrologueDecoding
from .decoding_scalewise import ScaleWiseDecoding
from .imagenet_labels import IMAGENET_ID2LABEL
from .sampling import Generators

logger = logging.get_logger(__name__)
LOADING_LOGGER = logging.get_logger("diffusers.pipelines.pipeline_utils")  # where diffusers logs each component it loads

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DOWNLOAD_ARGUMENTS = ("cache_dir", "revision", "token", "force_download", "local_files_only")  # of snapshot_download


@dataclass(frozen=True)
class ModelFamily:
    """How the pipeline samples a transformer: the decoding class of its family (`LlamaGenDecoding`,
    `ScaleWiseDecoding`, `PrologueDecoding`), the tokenizer it decodes with (a model type) and its default guidance
    scale (None: the transformer's config records it)."""

    decoding: type
    tokenizer_type: str
    guidance_scale: float | None


# transformer model type -> family; VAR's residual tokenizer and FlexVAR's (LlamaGen's VQ) are not interchangeable
FAMILIES = {
    "llamagen": ModelFamily(LlamaGenDecoding, "llamagen_vqvae", 2.0),
    "var": ModelFamily(ScaleWiseDecoding, "var_vqvae", 1.5),  # VAR's FID setting
    "flexvar": ModelFamily(ScaleWiseDecoding, "llamagen_vqvae", 2.5),  # FlexVAR's evaluation setting
    "prologue": ModelFamily(PrologueDecoding, "prologue_tokenizer", None),  # the paper's setting per model, in its config
}
# `from .module import ...` (on one line or parenthesised): the sibling imports that diffusers and transformers follow
RELATIVE_IMPORT = re.compile(r"^from \.(\w+) import (?:\([^)]*\)|[^\n]*)\n", re.MULTILINE)


def module_with_imports(path: Path) -> list[Path]:
    """`path` and the sibling modules it imports, recursively; each module comes after those it imports."""
    ordered = []

    def visit(module: Path):
        if module not in ordered:
            for name in RELATIVE_IMPORT.findall(module.read_text()):
                visit(module.with_name(f"{name}.py"))
            ordered.append(module)

    visit(path)
    return ordered


def single_file_module(path: Path) -> str:
    """The source of the module at `path` with the sibling modules it imports inlined before it, as one file.

    diffusers fetches a remote-code component from the Hub as the one file that model_index.json names
    (`<component>/<module>.py`), so that file must hold the configuration and every layer it uses. A module with no
    sibling imports (e.g. one written by this function) comes back unchanged."""
    modules = module_with_imports(path)
    defined = {}
    for module in modules:  # inlining must not let one module's top-level name replace another's
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("__"):
                if defined.setdefault(node.name, module) != module:
                    raise ValueError(f"{node.name} is defined in both {defined[node.name].name} and {module.name}")
    if len(modules) == 1:
        return path.read_text()
    parts = [f"# {module.name}\n{RELATIVE_IMPORT.sub('', module.read_text())}" for module in modules]
    return f"# One file of {', '.join(m.name for m in modules)} (written by STARPipeline.save_pretrained)\n\n" + "\n\n".join(parts)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_id2label(id2label) -> dict[int, str]:
    """id2label as given (a mapping of int or digit-string ids to names) -> {int id: name}."""
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must map class ids to names, got a {type(id2label).__name__}")
    bad = [(key, name) for key, name in id2label.items()
           if not (_is_int(key) or isinstance(key, str) and key.isdigit()) or not isinstance(name, str)]
    if bad:
        raise ValueError(f"id2label must map class ids (ints, or digit strings in JSON) to names (strings), got "
                         f"{len(bad)} other entries, e.g. {bad[0][0]!r}: {bad[0][1]!r}")
    return {int(key): name for key, name in id2label.items()}


def flatten(labels: list | tuple) -> list:
    """Nested lists (and tuples) of labels -> one list, in order."""
    return [item for label in labels for item in (flatten(label) if isinstance(label, (list, tuple)) else [label])]


@dataclass
class STARPipelineOutput(BaseOutput):
    """
    images: list of PIL images, an np.ndarray [B, H, W, 3] or a torch tensor [B, 3, H, W] in [0, 1]; for
        output_type="latent" the tokens as one tensor (LlamaGen, Prologue: `tokens`; VAR, FlexVAR: the maps in one
        sequence [B, sum of s_k^2], coarsest first); None for an interrupted call.
    tokens: the sampled code ids: [B, h, w] for LlamaGen and Prologue (visual codes), one map [B, s_k, s_k] per scale
        for VAR and FlexVAR; an interrupted call has those decoded so far (LlamaGen, Prologue: [B, n]).
    prologue_tokens: Prologue: the prologue codes [B, P] (give them back as `prologue_tokens=` to keep them); None
        for the other families.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    tokens: torch.LongTensor | list[torch.LongTensor]
    prologue_tokens: torch.LongTensor | None = None


class STARPipeline(DiffusionPipeline):
    r"""Class-conditional sampling for every model family: the `transformer` draws VQ codes per class label (token by
    token, or scale by scale), the `vqvae` decodes them.

    Args:
        transformer: a `LlamaGenForImageGeneration`, `VARForImageGeneration`, `FlexVARForImageGeneration` or
            `PrologueForImageGeneration`.
        vqvae: its tokenizer, whose codebook is the transformer's vocabulary: a `LlamaGenVQVAE` (LlamaGen, FlexVAR),
            a `VARVQVAE` (VAR) or a `PrologueVQVAE` (Prologue).
        id2label: class id (int, or str as in JSON) -> name(s), comma-separated synonyms allowed, every id one of the
            transformer's classes; by default the ImageNet-1k names (of a transformer with another number of classes,
            those of its ids only, with a warning).
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["latents", "tokens"]

    def __init__(self, transformer: PreTrainedModel, vqvae: PreTrainedModel, id2label: dict | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, vqvae=vqvae)
        self.family  # noqa: B018 (refuses a transformer of no family before its config is read)
        num_classes = transformer.config.num_classes
        id2label = IMAGENET_ID2LABEL if id2label is None else check_id2label(id2label)
        if id2label == IMAGENET_ID2LABEL and num_classes != 1000:  # the default, or a folder saved with it
            logger.warning(f"id2label: the transformer has {num_classes} classes, not ImageNet's 1000: its classes keep "
                           f"ImageNet's names of ids < {num_classes}; pass id2label to name them")
            id2label = {class_id: name for class_id, name in id2label.items() if class_id < num_classes}
        outside = sorted(class_id for class_id in id2label if not 0 <= class_id < num_classes)
        if outside:
            raise ValueError(f"id2label names ids {outside[:5]}{' ...' if len(outside) > 5 else ''} outside the "
                             f"transformer's classes [0, {num_classes}) (num_classes)")
        self.register_to_config(id2label=id2label)
        self.labels = {
            synonym.strip().lower(): class_id for class_id, names in id2label.items() for synonym in names.split(",")
        }
        self.image_processor = VaeImageProcessor(do_normalize=True)

    @property
    def id2label(self) -> dict[int, str]:
        return self.config.id2label  # int keys: __init__ converts the JSON's string keys

    @property
    def guidance_scale(self) -> float | tuple:
        """The guidance of the current (or last) call, read by the decoding loop before each step: a
        `callback_on_step_end` that sets `pipe._guidance_scale` changes the following steps (guidance must be on at
        the start of the call for a callback to raise it)."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The decoding steps of the last call (tokens, or scales), as many as `callback_on_step_end` calls."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a `callback_on_step_end` to stop decoding after that step: the call returns
        the tokens decoded so far and no images."""
        return self._interrupt

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names (case-insensitive, any comma-separated synonym) -> class ids."""
        ids = []
        for name in [label] if isinstance(label, str) else label:
            key = name.strip().lower()
            if key not in self.labels:
                close = difflib.get_close_matches(key, self.labels, n=3)
                hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
                raise ValueError(f"class_labels: unknown class name {name!r}{hint}")
            ids.append(self.labels[key])
        return ids

    @property
    def family(self) -> ModelFamily:
        model_type = self.transformer.config.model_type
        if model_type not in FAMILIES:
            raise ValueError(f"transformer: a {model_type!r} model, not one of the families {sorted(FAMILIES)}")
        return FAMILIES[model_type]

    def num_steps(self, scales: list[int] | None = None) -> int:
        """Decoding steps of a call (progress-bar ticks, callback calls): image tokens for LlamaGen, scales for VAR and
        FlexVAR (`scales`, default the trained schedule)."""
        decoding = self.family.decoding
        return decoding.num_steps(self.transformer, **decoding.check_arguments(self.transformer, self.vqvae, -1, False,
                                                                                 scales, False))

    def default_guidance_scale(self):
        """The family's default guidance; Prologue models record the paper's setting in their config."""
        family = self.family
        return self.transformer.config.default_guidance_scale if family.guidance_scale is None else family.guidance_scale

    def check_components(self) -> None:
        """The tokenizer fits the transformer: its kind, its codebook size and (for transformers that read code
        vectors) its code width."""
        config, tokenizer, family = self.transformer.config, self.vqvae.config, self.family
        if tokenizer.model_type != family.tokenizer_type:
            raise ValueError(f"vqvae: a {config.model_type} transformer decodes with a {family.tokenizer_type} tokenizer, "
                             f"got a {tokenizer.model_type}")
        if config.model_type == "prologue":
            layout = (tokenizer.codebook_size, tokenizer.prologue_codebook_size if tokenizer.num_prologue_tokens else None,
                      tokenizer.num_prologue_tokens, tokenizer.grid_size**2)
            expected = (config.visual_vocab_size, config.prologue_vocab_size if config.num_prologue_tokens else None,
                        config.num_prologue_tokens, config.num_visual_tokens)
            if layout != expected:
                raise ValueError(f"vqvae: its (visual codes, prologue codes, prologue tokens, visual tokens) {layout} do "
                                 f"not match the transformer's vocabulary layout {expected}")
            return
        if tokenizer.codebook_size != config.vocab_size:
            raise ValueError(f"vqvae has {tokenizer.codebook_size} codes but the transformer's vocabulary is "
                             f"{config.vocab_size}")
        width = getattr(config, "codebook_embed_dim", tokenizer.codebook_embed_dim)
        if tokenizer.codebook_embed_dim != width:
            raise ValueError(f"vqvae codes have {tokenizer.codebook_embed_dim} channels but the transformer reads {width}")

    def check_inputs(self, class_labels, num_images_per_prompt, guidance_scale, temperature, top_k, top_p, generator,
                     output_type, callback_on_step_end_tensor_inputs, num_images_per_label=None,
                     **family_arguments) -> tuple[list[int], int, dict]:
        """Validates every argument before decoding starts; returns the class ids, the images per label and the
        family's decoding options (`family_arguments`: cfg_interval, compile_decoding, scales, more_smooth,
        prologue_tokens)."""
        self.check_components()
        config = self.transformer.config
        if isinstance(class_labels, (torch.Tensor, np.ndarray)):
            class_labels = class_labels.tolist()
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        labels = flatten(class_labels) if isinstance(class_labels, (list, tuple)) else []  # as DiT's reshape(-1)
        if not labels:
            raise ValueError(f"class_labels must name at least one class (a name, an id, or a list of them), got "
                             f"{class_labels!r}")
        ids = []
        for label in labels:
            if isinstance(label, str):
                (class_id,) = self.get_label_ids(label)
                if class_id >= config.num_classes:
                    raise ValueError(f"class_labels: {label!r} is class {class_id}, but the transformer has "
                                     f"{config.num_classes} classes (num_classes)")
                ids.append(class_id)
            elif _is_int(label) and 0 <= label < config.num_classes:
                ids.append(int(label))
            else:
                raise ValueError(f"class_labels: {label!r} is neither a class name nor an id in [0, {config.num_classes})")
        for name, value in [("num_images_per_prompt", num_images_per_prompt),
                            ("num_images_per_label", num_images_per_label)]:
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if None not in (num_images_per_prompt, num_images_per_label) and num_images_per_prompt != num_images_per_label:
            raise ValueError(f"num_images_per_prompt {num_images_per_prompt} and num_images_per_label (its older name) "
                             f"{num_images_per_label} disagree: pass one of them")
        images_per_label = num_images_per_prompt or num_images_per_label or 1
        prologue = config.model_type == "prologue"
        if isinstance(guidance_scale, (tuple, list)) or isinstance(temperature, (tuple, list)):
            if not prologue:
                raise ValueError(f"guidance_scale {guidance_scale!r} / temperature {temperature!r}: tuples are Prologue's "
                                 f"split settings; a {config.model_type} model takes numbers")
        elif guidance_scale is not None and not (isinstance(guidance_scale, (int, float)) and 0 <= guidance_scale < math.inf):
            raise ValueError(f"guidance_scale must be >= 0 and finite, or None for the family's default "
                             f"({self.default_guidance_scale()}), got {guidance_scale!r}")
        if not isinstance(temperature, (tuple, list)) and not (
                temperature is None or isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
            raise ValueError(f"temperature must be > 0 and finite (or None: 1.0, Prologue's no-guidance temperatures "
                             f"without guidance), got {temperature!r}")
        if family_arguments.get("prologue_tokens") is not None and not prologue:
            raise ValueError(f"prologue_tokens: a {config.model_type} model has no prologue tokens")
        if not (_is_int(top_k) and 0 <= top_k <= config.vocab_size):
            raise ValueError(f"top_k must be in [0, {config.vocab_size}], an int (0 = off), got {top_k!r}")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p!r}")
        num_images = len(ids) * images_per_label
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(f"generator is a list of {len(generator)} but the call makes {num_images} images "
                             f"({len(ids)} labels x {images_per_label})")
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {sorted(unknown)} not in {self._callback_tensor_inputs}")
        prologue_tokens = family_arguments.pop("prologue_tokens", None)
        if prologue:
            family_arguments |= dict(guidance_scale=guidance_scale, temperature=temperature,
                                     prologue_tokens=prologue_tokens, batch_size=num_images)
        return ids, images_per_label, self.family.decoding.check_arguments(self.transformer, self.vqvae,
                                                                            **family_arguments)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str],
        num_images_per_prompt: int | None = None,
        guidance_scale: float | None = None,
        cfg_interval: int = -1,
        temperature: float | tuple[float, float] | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents", "tokens"],  # noqa: B006 (diffusers convention)
        compile_decoding: bool = False,
        scales: list[int] | None = None,
        more_smooth: bool = False,
        prologue_tokens: torch.LongTensor | None = None,
        num_images_per_label: int | None = None,
    ) -> STARPipelineOutput | tuple:
        r"""
        Args:
            class_labels: class ids, class names (any synonym of `id2label`, case-insensitive) or a mix; nested lists
                are flattened.
            num_images_per_prompt: images drawn for each label (None: 1); images of one label are adjacent.
            guidance_scale: classifier-free guidance with the null class as `uncond`; None takes the family's
                default (LlamaGen 2.0, VAR 1.5, FlexVAR 2.5).
                - LlamaGen: `uncond + (cond - uncond) * guidance_scale` on raw logits; 1.0 disables guidance (and the
                  unconditional half), values in [0, 1) lean towards the unconditional model.
                - VAR / FlexVAR: the originals' `cfg`, ramped over the scales: `(1 + t) * cond - t * uncond` with
                  `t = guidance_scale * k / (K - 1)` at scale k (FlexVAR: `k / min(K - 1, 9)`, and the full
                  `guidance_scale` on sides beyond the trained ones); 0 disables guidance.
                - Prologue: `s * cond + (1 - s) * uncond` per step, with s from a number (constant), (scale, power)
                  (a cosine ramp from 1 over all steps) or (prologue scale, visual scale, power) (split CFG: constant
                  on the prologue, the ramp over the visual tokens); default the paper's setting for the model.
            cfg_interval: LlamaGen: guide image tokens 0 .. cfg_interval + 1 only; -1 guides all.
            temperature, top_k, top_p: applied after guidance; top_k 0 and top_p 1.0 are off. FlexVAR takes sides
                it was not trained on greedily (top-k 1), as the original does. Prologue takes a (prologue, visual)
                pair too; None is 1.0, or for Prologue without guidance its config's `no_guidance_temperature`.
            generator: one generator for the whole call, or one per image: image i then depends on generator i
                alone, whatever else is in the batch.
            output_type: "pil", "np", "pt", or "latent" (the tokens as one tensor in `images`, no decoding).
            callback_on_step_end: `callback(pipe, step, step, callback_kwargs)` after each decoding step (a token for
                LlamaGen; a sequence token for Prologue; a scale for VAR / FlexVAR), with the tokens so far as
                "tokens" (LlamaGen, Prologue: [B, step + 1], Prologue's in its sequence vocabulary; VAR / FlexVAR: the
                list of maps) and as diffusers' "latents" (one tensor: the same for LlamaGen and Prologue, the maps in
                one sequence [B, sum of s_k^2] for VAR / FlexVAR). A returned "latents" (else "tokens") that differs
                from the one given replaces the tokens so far; the earlier ones are already in the model's cache, so
                only the last step's steer what follows. The callback may set `pipe._guidance_scale` (read before
                each step: diffusers' dynamic guidance) and `pipe._interrupt` (stops decoding: the tokens so far come
                back, without images).
            callback_on_step_end_tensor_inputs: which of "latents" and "tokens" the callback gets (a diffusers
                `PipelineCallback` names its own `tensor_inputs`).
            compile_decoding: LlamaGen: run the per-token step under torch.compile (CUDA graphs on GPU); the first
                call compiles, later calls reuse it, and the tokens are those of the eager path.
            scales: VAR / FlexVAR: the scale schedule (sides of the token maps, increasing from 1); default the
                trained `patch_nums`. VAR samples its trained schedule only; FlexVAR any, up to its position grid
                (e.g. 13 steps, or a final side of 20 for 320 px images).
            more_smooth: VAR: feed Gumbel-softmax-smoothed code vectors forward (VAR's option for visualisation).
            prologue_tokens: Prologue: prologue codes [B, P] to keep (e.g. `out.prologue_tokens` of an earlier call):
                only the visual tokens are sampled, which keeps class, layout and palette and redraws the details.
            num_images_per_label: the older name of `num_images_per_prompt`.

        Examples:
        ```py
        >>> pipe = STARPipeline.from_pretrained("org/st-ar-b-256")
        >>> out = pipe(["golden retriever", 207], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].save("dog.png"); out.tokens.shape  # [2, 16, 16]
        >>> flexvar = STARPipeline.from_pretrained("converted/flexvar-d16")
        >>> out = flexvar(["golden retriever", 980], guidance_scale=2.5, top_k=900, top_p=0.96)
        >>> [m.shape for m in out.tokens]  # [2, 1, 1], [2, 2, 2], ..., [2, 16, 16]
        >>> prologue = STARPipeline.from_pretrained("converted/prologue-b-b")
        >>> out = prologue([207, 980], guidance_scale=(0.7, 3.75, 0.2))  # split CFG
        >>> again = prologue([207] * 4, prologue_tokens=out.prologue_tokens[:1].repeat(4, 1))  # same layout
        ```
        """
        # 1. Check inputs
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        ids, images_per_label, options = self.check_inputs(
            class_labels, num_images_per_prompt, guidance_scale, temperature, top_k, top_p, generator, output_type,
            callback_on_step_end_tensor_inputs, num_images_per_label, cfg_interval=cfg_interval,
            compile_decoding=compile_decoding, scales=scales, more_smooth=more_smooth, prologue_tokens=prologue_tokens,
        )
        # 2. Define call parameters
        device = self._execution_device
        family = self.family
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale()
        if temperature is None:
            unguided = family.guidance_scale is None and guidance_scale == 1.0
            temperature = tuple(self.transformer.config.no_guidance_temperature) if unguided else 1.0
        self._guidance_scale = guidance_scale
        self._num_timesteps = family.decoding.num_steps(self.transformer, **options)
        self._interrupt = False
        # 3. Prepare conditioning (the null class for CFG is added by the decoding loop)
        class_ids = torch.tensor(ids, device=device).repeat_interleave(images_per_label)

        # 4. Generate tokens
        with self.progress_bar(total=self.num_timesteps) as progress_bar:

            def on_step(step, tokens):
                progress_bar.update()
                if callback_on_step_end is None:
                    return None
                given = {"tokens": tokens}
                if "latents" in callback_on_step_end_tensor_inputs:
                    given["latents"] = family.decoding.latents(tokens)
                callback_kwargs = {name: given[name] for name in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, step, step, callback_kwargs) or {}
                if outputs.get("latents", given.get("latents")) is not given.get("latents"):
                    return family.decoding.tokens_from_latents(outputs["latents"], tokens)
                return None if outputs.get("tokens") is tokens else outputs.get("tokens")

            tokens, extra = family.decoding.generate_tokens(  # extra: VAR's latent f_hat, Prologue's prologue codes
                self.transformer, self.vqvae, class_ids, guidance_scale=guidance_scale, temperature=temperature,
                top_k=top_k, top_p=top_p, generator=generator, callback=on_step, control=self, **options,
            )

        # 5. Decode tokens with the tokenizer, 6. post-process and offload
        if self.interrupt:
            images = None  # part of the tokens: no image
        elif output_type == "latent":
            images = family.decoding.latents(tokens)
        else:
            pixels = family.decoding.decode_tokens(self.vqvae, tokens, extra)  # [B, 3, H, W] in [-1, 1]
            images = self.image_processor.postprocess(pixels.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, tokens
        return STARPipelineOutput(images=images, tokens=tokens,
                                  prologue_tokens=extra if self.transformer.config.model_type == "prologue" else None)

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """Hub repo id -> local snapshot of its configs, weights and card (not its code, which this package's classes
        replace; the HF cache serves it offline). Reads the `DOWNLOAD_ARGUMENTS` of kwargs."""
        return snapshot_download(
            pretrained_model_name,
            **{name: kwargs[name] for name in DOWNLOAD_ARGUMENTS if name in kwargs},
            allow_patterns=["*.json", "*.safetensors", "*.md"],
            ignore_patterns=["checkpoints/*"],  # training state pushed with `st-ar push --include-checkpoints`
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Loads a saved pipeline (a folder, or a Hub repo id) with this class and the package's model classes: the
        code that a folder carries for remote use is never run (`DiffusionPipeline.from_pretrained(...,
        trust_remote_code=True)` runs it, and needs no package).

        Keyword arguments: components by name (used as given); `dtype` (or diffusers' older `torch_dtype`: one dtype,
        or a dict by component name with a "default"), `variant` and `device_map` for each component's
        `from_pretrained`; `id2label` to replace the saved class names; `cache_dir`, `revision`, `token`,
        `force_download` and `local_files_only` for the download."""
        unknown = set(kwargs) - {"transformer", "vqvae", "dtype", "torch_dtype", "variant", "device_map", "id2label",
                                 *DOWNLOAD_ARGUMENTS}
        if unknown:
            raise ValueError(f"STARPipeline.from_pretrained got unexpected keyword arguments {sorted(unknown)}")
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            folder = Path(cls.download(str(pretrained_model_name_or_path), **kwargs))
        to_load = [name for name in ("transformer", "vqvae") if name not in kwargs]
        id2label = kwargs["id2label"] if "id2label" in kwargs else cls._saved_id2label(folder)
        variant = kwargs.get("variant")
        cls._check_weights_files(folder, to_load, variant)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        components = {name: kwargs[name] for name in ("transformer", "vqvae") if name in kwargs}
        for name in to_load:
            component_dtype = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype
            components[name] = AutoModel.from_pretrained(folder / name, dtype=component_dtype, variant=variant,
                                                         device_map=kwargs.get("device_map"), use_safetensors=True)
            LOADING_LOGGER.info(f"Loaded {name} as {type(components[name]).__name__} from `{name}` subfolder of "
                                f"{pretrained_model_name_or_path}.")
        try:
            pipeline = cls(**components, id2label=id2label)
            pipeline.check_components()
        except ValueError as error:  # saved names outside the classes, or components that do not fit together
            saved_names = str(error).startswith("id2label") and "id2label" not in kwargs
            raise ValueError(f"{folder / 'model_index.json' if saved_names else folder}: {error}") from None
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    @staticmethod
    def _saved_id2label(folder: Path) -> dict | None:
        """model_index.json's id2label, checked before any weights load (errors name the file)."""
        id2label = DiffusionPipeline.load_config(folder).get("id2label")
        try:
            return None if id2label is None else check_id2label(id2label)
        except ValueError as error:
            raise ValueError(f"{folder / 'model_index.json'}: {error}") from None

    @staticmethod
    def _check_weights_files(folder: Path, names: list[str], variant: str | None) -> None:
        """Before any weights load: no component is pickled only (pickles are never loaded: unpickling can run
        code), and a requested variant exists (refused in diffusers' words)."""
        for name in names:
            pickles = sorted((folder / name).glob("*.bin"))
            if pickles and not any((folder / name).glob("*.safetensors")):
                raise ValueError(f"{pickles[0]}: pickled weights, which are never loaded (unpickling can run code): "
                                 f"save the {name} as safetensors (save_pretrained)")
        if variant is not None and not any(file for name in names for file in (folder / name).glob(f"*.{variant}[.-]*")):
            raise ValueError(f"variant: You are trying to load the model files of the `variant={variant}`, but no such "
                             f"modeling files are available in {folder}")

    def save_pretrained(self, save_directory: str | os.PathLike, remote_code: bool = True, push_to_hub: bool = False,
                        **kwargs):
        """Writes model_index.json, the components as safetensors, and a model card (with the package installed).

        With `remote_code` (the default), the folder also carries its code, so that
        `DiffusionPipeline.from_pretrained(folder or repo id, trust_remote_code=True)` loads it without this package:
        this file and the modules it imports at the root, and in each component's folder one file with the
        component's configuration and model, the only code file diffusers fetches of a component. A pipeline loaded
        that way saves its code again. With `push_to_hub` (`repo_id`, `commit_message`, `private` in kwargs), the
        folder is then uploaded with its card in one commit, the card's snippet loading `repo_id`."""
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        if remote_code:
            self._save_code(save_directory)
        try:  # the card templates ship with the package, not with a remote-code copy of this file
            from st_ar_hf.model_cards import pipeline_model_card

            pipeline_model_card(self, remote_code, repo_id=kwargs.get("repo_id")).save(save_directory / "README.md")
        except ImportError:
            pass
        if push_to_hub:
            api = HfApi()
            repo_id = kwargs.get("repo_id", save_directory.name)
            api.create_repo(repo_id, private=kwargs.get("private") or False, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=save_directory,
                                     commit_message=kwargs.get("commit_message") or "Upload STARPipeline")

    def _save_code(self, save_directory: Path) -> None:
        """The code of a remote-code folder, with model_index.json and each component's `auto_map` pointing at it."""
        for source in module_with_imports(Path(__file__)):
            (save_directory / source.name).write_text(source.read_text())
        index_file = save_directory / "model_index.json"
        index = json.loads(index_file.read_text())
        index["_class_name"] = [Path(__file__).stem, type(self).__name__]
        for name in ("transformer", "vqvae"):
            model_class = type(getattr(self, name))
            source = Path(inspect.getsourcefile(model_class))
            folder = save_directory / name
            for stale in folder.glob("*.py"):  # the several files transformers copies for an auto class
                stale.unlink()
            (folder / source.name).write_text(single_file_module(source))
            config_file = folder / "config.json"
            config = json.loads(config_file.read_text())
            config["auto_map"] = {"AutoConfig": f"{source.stem}.{type(getattr(self, name).config).__name__}",
                                  "AutoModel": f"{source.stem}.{model_class.__name__}"}
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            index[name] = [source.stem, model_class.__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    remote_code: bool = True, **kwargs):
        """Uploads the pipeline with its card in one commit (through a temporary `save_pretrained`); returns the
        `CommitInfo`. `st-ar push` publishes a training run the same way, with its training and evaluation facts."""
        with tempfile.TemporaryDirectory() as folder:
            return self.save_pretrained(folder, remote_code, push_to_hub=True, repo_id=repo_id,
                                        commit_message=commit_message, private=private, **kwargs)
