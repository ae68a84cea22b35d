"""Training arguments: dataclasses read from a YAML file (`--config`) and overridden on the command line.

Every field is a command-line flag of the same name, spelt `--output_dir` or `--output-dir`. A YAML key that is not a
field is an error, so a typo never silently falls back to a default.
"""

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..flags import FlagParser
from .losses import AR_PASSES
from .sar import RolloutSampling, check_flexvar_schedule


@dataclass
class DataArguments:
    """Where the images come from, and their size."""

    DATA_SOURCES = ("embedded_dataset_dir", "dataset", "train_data_files")  # exactly one is given

    # data: a Hub dataset id, local files in one of the `datasets` builder formats, or the embedded MNIST digits
    embedded_dataset_dir: str | None = field(
        default=None, metadata={"help": "write the embedded MNIST-5k shards here (once) and train on them"})
    dataset: str | None = field(default=None, metadata={"help": "Hub dataset id, e.g. ILSVRC/imagenet-1k"})
    dataset_config: str | None = field(default=None, metadata={"help": "configuration name of --dataset"})
    train_data_files: str | None = field(default=None, metadata={"help": "local shards: a glob, or a folder for imagefolder"})
    data_format: str = field(default="parquet", metadata={"help": "parquet, webdataset or imagefolder (with --train_data_files)"})
    split: str = "train"
    image_column: str = "image"
    label_column: str = "label"
    image_size: int = 256
    shuffle_buffer: int = 1000
    shuffle_input_shards: int = field(default=10, metadata={"help": "shards mixed into the shuffle buffer at once"})
    max_skipped_in_a_row: int = field(
        default=1000, metadata={"help": "stop with an error after this many unusable (undecodable) examples in a row"})

    def __post_init__(self):
        sources = [name for name in self.DATA_SOURCES if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one data source of {['--' + n for n in self.DATA_SOURCES]}, got {sources}")
        if self.data_format not in ("parquet", "webdataset", "imagefolder"):
            raise ValueError(f"--data_format must be parquet, webdataset or imagefolder, got {self.data_format!r}")
        for name in ("image_size", "shuffle_buffer", "shuffle_input_shards", "max_skipped_in_a_row"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")

    @property
    def data_source(self) -> str:
        """The data as errors name it, e.g. `--dataset ILSVRC/imagenet-1k`."""
        name = next(name for name in self.DATA_SOURCES if getattr(self, name) is not None)
        return f"--{name} {getattr(self, name)}"


@dataclass
class HubArguments:
    push_to_hub: bool = False
    hub_model_id: str | None = field(default=None, metadata={"help": "repo id; default: the output folder's name"})
    hub_private_repo: bool = False
    upload_retries: int = 3


@dataclass
class RunArguments(HubArguments, DataArguments):
    """What every training script shares: data, optimisation, precision, logging, checkpoints, Hub."""

    # optimisation
    seed: int = 0
    train_batch_size: int = field(default=32, metadata={"help": "images per process and step"})
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000
    learning_rate: float = 1e-4
    scale_lr: bool = field(default=False, metadata={"help": "multiply the lr by global batch / 256 (LlamaGen: 1e-4 per 256)"})
    lr_scheduler: str = field(default="constant", metadata={"help": "a diffusers.optimization scheduler name"})
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    mixed_precision: str | None = field(default=None, metadata={"help": "no, fp16 or bf16; default: accelerate's config"})
    max_nonfinite_steps: int = field(default=10, metadata={"help": "stop after this many non-finite losses in a row"})
    # outputs
    output_dir: str = "runs/train"
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none"})
    log_steps: int = 10
    validation_steps: int = field(default=500, metadata={"help": "log a sample grid every N steps (0: only at the end)"})
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "a fresh run deletes another run's checkpoints and metrics in --output_dir"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "log_steps",
                     "checkpointing_steps", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_warmup_steps > 0 and self.lr_scheduler == "constant":
            raise ValueError("--lr_warmup_steps needs a scheduler with warmup, e.g. --lr_scheduler constant_with_warmup")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.report_to not in ("tensorboard", "wandb", "all", "none"):
            raise ValueError(f"--report_to must be tensorboard, wandb, all or none, got {self.report_to!r}")


def _flag_type(annotation):
    """The argparse type of a field annotation such as `int`, `str | None` or `bool`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _to_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_arguments(cls, argv=None, default_config: str | None = None):
    """Builds `cls` from `--config file.yaml` (or `default_config` when no argument is given at all), then flags.
    A config may start from another with `base: other.yaml`."""
    parser = FlagParser(description=cls.__doc__)
    parser.add_argument("--config", help="YAML file of arguments; flags given on the command line override it")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():
        kind = _flag_type(hints[name])
        kind = {bool: _to_bool, dict: _json_mapping}.get(kind, kind)
        if type(None) in typing.get_args(hints[name]):  # `--vqvae null` unsets a value a config gave, as YAML's null
            kind = _or_null(kind)
        parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=f.metadata.get("help"),
                            nargs="?" if kind is _to_bool else None, const=True if kind is _to_bool else None)
    argv = sys.argv[1:] if argv is None else argv
    flags = vars(parser.parse_args(argv))
    config_file = flags.pop("config", None) or (default_config if not argv else None)
    values = _read_config(Path(config_file), set(fields), cls.__name__) if config_file is not None else {}
    for name, value in values.items():  # command-line flags were converted by argparse; YAML values are checked here
        kind = _flag_type(hints[name])
        if value is not None and not _is_a(value, kind):
            raise ValueError(f"--{name} must be {kind.__name__}, got {value!r} in {config_file}")
    return cls(**{**values, **flags})


def _or_null(kind):
    def parse(text: str):
        return None if text == "null" else kind(text)

    parse.__name__ = kind.__name__  # argparse's "invalid int value" names it
    return parse


def _is_a(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"hidden_size\": 64}}', got {text!r}")
    return value


def run_script(main, cls, default_config: str | None = None) -> None:
    """A script's entry point: `main(parse_arguments(cls, ...))`, where a `ValueError` (a bad setting, unusable data,
    a foreign checkpoint) ends the process with its one-line message and exit code 2 instead of a traceback."""
    try:
        main(parse_arguments(cls, default_config=default_config))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _read_config(path: Path, fields: set[str], class_name: str, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; `base: other.yaml` (relative to this file) is read first and overridden by the other keys."""
    if path.resolve() in seen:
        raise ValueError(f"--config: the chain of base: files loops back to {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of settings, got a {type(values).__name__}")
    base = values.pop("base", None)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; {class_name} accepts {sorted(fields)}")
    inherited = _read_config(path.parent / base, fields, class_name, (*seen, path.resolve())) if base else {}
    return {**inherited, **values}


@dataclass
class ARTrainingArguments(RunArguments):
    """LlamaGen next-token training, with ST-AR's self-guidance terms (arXiv 2509.15185) when their weights are > 0."""

    DATA_SOURCES = RunArguments.DATA_SOURCES + ("train_codes",)
    # what a resumed run may not change: the model's shape, its tokenizer, the data
    RESUME_FIXED = DATA_SOURCES + ("model", "model_config", "image_size", "num_classes", "vqvae", "projector_hidden_size")

    train_codes: str | None = field(default=None, metadata={"help": "code shards of extract_codes.py: folder, glob or Hub id"})
    num_classes: int | None = field(default=None, metadata={"help": "default: the dataset's ClassLabel count"})
    crop_range: float = field(default=1.1, metadata={"help": "images: centre crop to crop_range * image_size, then ten crops"})
    random_flip: bool = field(default=True, metadata={
        "help": "images: the ten crops include the five of the mirrored image; false for data that is not "
                "mirror-symmetric (digits): five crops"})
    # models
    vqvae: str | None = field(
        default=None, metadata={"help": "LlamaGenVQVAE folder or Hub id; with --train_codes, default: the one that made them"})
    tokenizer_config: str | None = field(
        default=None, metadata={"help": "without --vqvae: train one first with this train_tokenizer.py YAML"})
    model: str = field(default="B", metadata={"help": "a preset (B, L, XL, XXL, 3B) or a pretrained LlamaGen folder"})
    model_config: dict | None = field(default=None, metadata={"help": "LlamaGenConfig overrides, as JSON on the command line"})
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # objective: L = ar_weight * L_AR + mim_weight * L_MIM + step_weight * L_step + view_weight * L_view
    ar_weight: float = 1.0
    mim_weight: float = field(default=1.0, metadata={"help": "alpha; 0 also drops the attention mask"})
    step_weight: float = field(default=0.5, metadata={"help": "beta * 1 (the paper's beta = 0.5, no extra 1/2)"})
    view_weight: float = field(default=0.5, metadata={"help": "beta * 1"})
    mask_ratio: float = field(default=0.25, metadata={"help": "fraction r of key positions hidden from the student"})
    ar_pass: str = field(default="masked", metadata={
        "help": "L_AR's student pass under the mask: masked (one forward, the paper's figure), unmasked (a second "
                "forward) or split (even sequences masked for L_MIM, odd ones plain for L_AR)"})
    contrastive_layer: int | None = field(default=None, metadata={"help": "default num_layers // 2 (6 for B; the paper uses 18 for L)"})
    num_positions: int = field(default=4, metadata={"help": "K positions sampled per batch for L_step / L_view"})
    num_views: int | None = field(default=None, metadata={"help": "crops per image; default 2 with L_view, else 1"})
    temperature: float = 0.2
    projector_hidden_size: int | None = None
    ema_decay: float = 0.9999
    # validation samples
    validation_images_per_class: int = 4
    validation_max_classes: int = 16
    validation_guidance_scale: float = 2.0
    validation_top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the grids and the final samples "
                                                                    "(1.0: off, LlamaGen's default)"})
    sample_accuracy_per_class: int = field(default=0, metadata={
        "help": "at the end, sample N per class at the validation guidance and report the share a digit CNN trained on "
                "--embedded_dataset_dir's train split reads as their class (0: off)"})
    export_steps: int | None = field(default=None, metadata={"help": "also export (and push) a pipeline every N steps"})

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is not None and self.tokenizer_config is not None:
            raise ValueError("give --vqvae or --tokenizer_config, not both")
        if self.vqvae is None and self.tokenizer_config is None and self.train_codes is None:
            raise ValueError("training on images needs --vqvae, or --tokenizer_config to train one first")
        if self.tokenizer_config is not None and self.train_codes is not None:
            raise ValueError("--train_codes come with their tokenizer (codes_info.json or --vqvae): drop --tokenizer_config")
        for name in ("ar_weight", "mim_weight", "step_weight", "view_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.validation_top_p <= 1:
            raise ValueError(f"--validation_top_p must lie in (0, 1], got {self.validation_top_p}")
        if self.sample_accuracy_per_class < 0 or (self.sample_accuracy_per_class and self.embedded_dataset_dir is None):
            raise ValueError(f"--sample_accuracy_per_class {self.sample_accuracy_per_class}: expected 0, or N > 0 with "
                             "--embedded_dataset_dir (the classifier trains on its labelled digits)")
        if self.ar_pass not in AR_PASSES:
            raise ValueError(f"--ar_pass must be one of {', '.join(AR_PASSES)}, got {self.ar_pass!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.num_views is None:
            self.num_views = 2 if self.view_weight > 0 else 1
        if self.view_weight > 0 and self.num_views < 2:
            raise ValueError(f"--view_weight > 0 needs --num_views >= 2, got {self.num_views}")
        crops = 10 if self.random_flip else 5
        if not 1 <= self.num_views <= crops:
            raise ValueError(f"--num_views must lie in [1, {crops}] (the {crops} crops{'' if self.random_flip else ' without flips'}), "
                             f"got {self.num_views}")
        if (self.step_weight > 0 or self.view_weight > 0) and self.train_batch_size < 2:
            raise ValueError("the contrastive terms need --train_batch_size >= 2 (the negatives are the other images)")
        if self.step_weight > 0 and self.num_positions < 2:
            raise ValueError(f"--step_weight > 0 needs --num_positions >= 2, got {self.num_positions}")

    @property
    def self_guided(self) -> bool:
        return self.mim_weight > 0 or self.step_weight > 0 or self.view_weight > 0

    def check_model(self, config, vqvae_config) -> None:
        """Settings that depend on the model and its tokenizer: fails before training with the setting's name."""
        if vqvae_config.model_type == "prologue_tokenizer" and self.image_size != vqvae_config.image_size:
            raise ValueError(f"--image_size {self.image_size} differs from the Prologue tokenizer's {vqvae_config.image_size}")
        layer = self.contrastive_layer
        if layer is not None and not 1 <= layer <= config.num_hidden_layers:
            raise ValueError(f"--contrastive_layer {layer} is outside the model's layers 1..{config.num_hidden_layers}")
        if (self.step_weight > 0 or self.view_weight > 0) and self.num_positions > config.block_size:
            raise ValueError(f"--num_positions {self.num_positions} exceeds the sequence of {config.block_size} tokens")


@dataclass
class ScaleWiseTrainingArguments(RunArguments):
    """VAR / FlexVAR training by teacher forcing, and SAR's post-training (arXiv 2512.06421) when sigma > 0:
    L = L_TF + sigma * L_CSF. Optimisation defaults are VAR's: lr = 1e-4 per 256 images, AdamW (0.9, 0.95), weight
    decay 0.05, clip 2.0, the `lin0` schedule."""

    RESUME_FIXED = RunArguments.DATA_SOURCES + (
        "model", "model_config", "image_size", "num_classes", "vqvae", "sigma", "rollout_scales", "rollout_targets")

    num_classes: int | None = field(default=None, metadata={"help": "default: the dataset's ClassLabel count"})
    crop_ratio: float = field(default=1.125, metadata={"help": "resize the short side to crop_ratio * image_size, then "
                                                                "a random square crop (VAR's mid_reso)"})
    random_flip: bool = False
    # models
    model: str = field(default="flexvar-d16", metadata={
        "help": "a preset (var-d16 .. var-d36, flexvar-d16 .. flexvar-d24) to train from scratch, or a folder: a "
                "STARPipeline (its transformer and tokenizer) or a transformer"})
    model_config: dict | None = field(default=None, metadata={"help": "VARConfig / FlexVARConfig overrides, as JSON"})
    vqvae: str | None = field(default=None, metadata={
        "help": "VARVQVAE (VAR) or LlamaGenVQVAE (FlexVAR) folder; default: the pipeline's given as --model"})
    tokenizer_config: str | None = field(
        default=None, metadata={"help": "without a tokenizer: train one first with this train_tokenizer.py YAML"})
    pretrain_config: str | None = field(default=None, metadata={
        "help": "when the --model folder does not exist: pre-train it first with this train_scalewise.py YAML"})
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # teacher forcing
    random_scales: bool | None = field(default=None, metadata={
        "help": "FlexVAR's random scale schedule per step (default: on for FlexVAR; VAR has one schedule)"})
    label_smoothing: float = 0.0
    # SAR
    sigma: float = field(default=0.0, metadata={"help": "weight of L_CSF; 0 is teacher forcing alone (SAR: 0.01)"})
    rollout_scales: str = field(default="last", metadata={
        "help": "last: the released code's penultimate -> last scale pass; all: every scale, the paper's figure"})
    rollout_targets: str = field(default="teacher", metadata={
        "help": "teacher: the teacher-forced tokens (CSF); ground_truth: the ablation tf_then_single_sf"})
    rollout_sampling: bool = field(default=False, metadata={"help": "draw the rollout tokens instead of argmax"})
    rollout_guidance_scale: float | None = field(default=None, metadata={"help": "with rollout_sampling; default 1.2"})
    rollout_top_k: int | None = field(default=None, metadata={"help": "with rollout_sampling; default 900"})
    rollout_top_p: float | None = field(default=None, metadata={"help": "with rollout_sampling; default 0.96"})
    # VAR's optimisation
    learning_rate: float = field(default=1e-4, metadata={"help": "per 256 images with scale_lr (VAR's tblr)"})
    scale_lr: bool = True
    max_grad_norm: float = 2.0
    lr_scheduler: str = field(default="lin0", metadata={"help": "VAR's lin0, or a diffusers.optimization scheduler"})
    lr_start_ratio: float = field(default=0.005, metadata={"help": "lin0: lr at step 0 over the peak (VAR's wp0)"})
    lr_end_ratio: float = field(default=0.01, metadata={"help": "lin0: lr at the last step over the peak (VAR's wpe)"})
    lr_schedule_offset: int = field(default=0, metadata={
        "help": "lin0: steps of the schedule done before this run (a post-training continues its pre-training's decay)"})
    lr_schedule_total: int | None = field(default=None, metadata={
        "help": "lin0: the schedule's length in steps; default lr_schedule_offset + max_train_steps"})
    # validation samples
    validation_images_per_class: int = 4
    validation_max_classes: int = 16
    validation_guidance_scale: float = 1.5
    validation_top_p: float = 1.0
    export_steps: int | None = field(default=None, metadata={"help": "also export (and push) a pipeline every N steps"})

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is not None and self.tokenizer_config is not None:
            raise ValueError("give --vqvae or --tokenizer_config, not both")
        if self.sigma < 0:
            raise ValueError(f"--sigma must be >= 0, got {self.sigma}")
        if self.rollout_scales not in ("last", "all"):
            raise ValueError(f"--rollout_scales must be last or all, got {self.rollout_scales!r}")
        if self.rollout_targets not in ("teacher", "ground_truth"):
            raise ValueError(f"--rollout_targets must be teacher or ground_truth, got {self.rollout_targets!r}")
        given = [name for name in ("rollout_guidance_scale", "rollout_top_k", "rollout_top_p") if getattr(self, name) is not None]
        if given and not self.rollout_sampling:
            raise ValueError(f"{['--' + n for n in given]} set the sampled rollout: add --rollout_sampling, or drop "
                             "them for the argmax rollout")
        if self.pretrain_config is not None and self.is_preset:
            raise ValueError(f"--pretrain_config writes the pretrained --model folder; --model {self.model!r} is a preset")
        if self.sigma > 0 and self.is_preset:
            raise ValueError(f"SAR (--sigma {self.sigma}) post-trains a pretrained scale-wise model: give --model a "
                             f"converted or trained folder, not the preset {self.model!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.crop_ratio < 1:
            raise ValueError(f"--crop_ratio must be >= 1, got {self.crop_ratio}")
        if self.lr_schedule_total is not None and self.lr_schedule_total < self.lr_schedule_offset + self.max_train_steps:
            raise ValueError(f"--lr_schedule_total {self.lr_schedule_total} is shorter than --lr_schedule_offset + "
                             f"--max_train_steps ({self.lr_schedule_offset + self.max_train_steps})")
        if self.lr_scheduler == "lin0" and self.lr_warmup_steps == 0 and self.lr_schedule_offset == 0:
            self.lr_warmup_steps = round(0.02 * (self.lr_schedule_total or self.max_train_steps))  # VAR: ep / 50

    @property
    def is_preset(self) -> bool:
        return self.model.split("-")[0] in ("var", "flexvar") and self.model.split("-", 1)[-1].startswith("d")

    @property
    def rollout_sampling_settings(self) -> RolloutSampling | None:
        if not self.rollout_sampling:
            return None
        defaults = RolloutSampling()
        return RolloutSampling(
            defaults.guidance_scale if self.rollout_guidance_scale is None else self.rollout_guidance_scale,
            defaults.top_k if self.rollout_top_k is None else self.rollout_top_k,
            defaults.top_p if self.rollout_top_p is None else self.rollout_top_p)

    def check_model(self, config, vqvae_config) -> None:
        """Settings that depend on the transformer and its tokenizer; fails before training with the setting's name."""
        expected = {"var": "var_vqvae", "flexvar": "llamagen_vqvae"}[config.model_type]
        if vqvae_config.model_type != expected:
            raise ValueError(f"--vqvae: a {config.model_type} transformer reads {expected} codes, got a "
                             f"{vqvae_config.model_type} tokenizer")
        if (vqvae_config.codebook_size, vqvae_config.codebook_embed_dim) != (config.vocab_size, config.codebook_embed_dim):
            raise ValueError(f"--vqvae has {vqvae_config.codebook_size} codes of {vqvae_config.codebook_embed_dim} dims; "
                             f"the transformer expects {config.vocab_size} of {config.codebook_embed_dim}")
        latent_side = self.image_size // vqvae_config.downsample_factor
        if config.patch_nums[-1] != latent_side:
            raise ValueError(f"--image_size {self.image_size}: the tokenizer makes {latent_side}x{latent_side} code maps, "
                             f"but the transformer's patch_nums {config.patch_nums} end at {config.patch_nums[-1]}")
        if config.model_type == "var" and self.random_scales:
            raise ValueError("--random_scales: VAR learns one position embedding per position of its schedule; only "
                             "FlexVAR trains on random schedules")
        if config.model_type == "var" and self.sigma > 0 and self.rollout_scales == "last":
            raise ValueError("--rollout_scales last is the released FlexVAR pass over a [1, s_K] schedule, which VAR's "
                             "per-position embeddings cannot run: use --rollout_scales all for VAR")
        if self.random_scales is None:
            self.random_scales = config.model_type == "flexvar"
        if self.random_scales:
            check_flexvar_schedule(config.patch_nums)


@dataclass
class TokenizerTrainingArguments(RunArguments):
    """LlamaGen's VQ tokenizer training: reconstruction, codebook and commitment (and optional entropy) losses, a
    perceptual loss when LPIPS weights are given, and a PatchGAN discriminator from `disc_start` on."""

    RESUME_FIXED = RunArguments.DATA_SOURCES + ("model", "model_config", "image_size")

    model: str = field(default="VQ-16", metadata={
        "help": "a LlamaGen preset (VQ-16, VQ-8; FlexVAR's tokenizer is one), var-vqvae (VAR's residual multi-scale "
                "VQVAE), a Prologue preset (prologue-b, prologue-l; num_prologue_tokens 0 in --model_config is the "
                "2D tokenizer) or a pretrained tokenizer folder"})
    model_config: dict | None = field(default=None, metadata={
        "help": "LlamaGenVQVAEConfig / VARVQVAEConfig / PrologueVQVAEConfig overrides, as JSON"})
    reconstruction_loss: str = field(default="l2", metadata={"help": "l2 (LlamaGen), l1, or l1+l2 (Prologue)"})
    reconstruction_weight: float = 1.0
    min_crop_fraction: float = field(default=0.8, metadata={"help": "random crops cover this to 1.0 of the short side"})
    random_flip: bool = True
    train_batch_size: int = 16
    adam_weight_decay: float = 0.0  # LlamaGen parses --weight-decay for the tokenizer but never uses it
    validation_images: int = 8
    # perceptual loss: LPIPS-VGG from local files (none ship in any package here)
    perceptual_weight: float = 1.0
    perceptual_vgg16: str | None = field(default=None, metadata={"help": "torchvision VGG16 ImageNet weights (.pth/.safetensors)"})
    perceptual_lpips: str | None = field(default=None, metadata={"help": "the lpips package's vgg.pth (linear layers)"})
    # PatchGAN discriminator, hinge loss (LlamaGen: weight 0.5 from step 20000, its own Adam)
    disc_start: int = 20000
    disc_weight: float = 0.5
    disc_learning_rate: float | None = field(default=None, metadata={"help": "default: --learning_rate"})
    disc_layers: int = 3
    disc_base_channels: int = 64
    disc_loss: str = field(default="hinge", metadata={"help": "hinge (LlamaGen) or vanilla (non-saturating, Prologue)"})
    disc_lecam_weight: float = field(default=0.0, metadata={"help": "LeCam regulariser of the discriminator (Prologue: 0.001)"})
    disc_r1_weight: float = field(default=0.0, metadata={"help": "R1 penalty of the discriminator (Prologue: 0.01)"})
    disc_r1_interval: int = field(default=25, metadata={"help": "R1 on every this many steps, unscaled (Prologue: 25)"})
    # Prologue's joint phase: an AR prior whose CE trains the prologue tokens (weights > 0 turn it on)
    train_visual: bool = field(default=True, metadata={
        "help": "false: the patch encoder, visual quantiser and decoder stay frozen and only the prologue path learns, "
                "from the prior's CE alone (Prologue-Post: --model a trained 2D tokenizer folder, --model_config "
                "with num_prologue_tokens and prologue_encoder_layers > 0)"})
    prior_prologue_weight: float = field(default=0.0, metadata={"help": "weight of the prologue + EOS CE (official 3.0)"})
    prior_visual_weight: float = field(default=0.0, metadata={"help": "weight of the visual CE (official 3.0)"})
    prior_visual_dropout: float = field(default=0.5, metadata={"help": "share of samples whose visual inputs become EOS"})
    prior_model: str = field(default="S", metadata={"help": "the prior's PrologueConfig preset"})
    prior_config: dict | None = field(default=None, metadata={"help": "PrologueConfig overrides (train.sh: 7 layers)"})
    prior_learning_rate: float = 1e-4
    prior_adam_beta2: float = 0.99
    prior_weight_decay: float = 0.03
    prior_ema_decay: float | None = field(default=None, metadata={"help": "EMA of the prior (official half-life 2500 "
                                                                        "steps: 0.99972)"})
    # EMA of the tokenizer weights, exported instead of the raw ones when set (LlamaGen: 0.9999, off by default)
    ema_decay: float | None = None
    # held-out evaluation: PSNR, SSIM and codebook usage
    eval_data_files: str | None = field(default=None, metadata={"help": "held-out shards; with --embedded_dataset_dir its test shard"})
    eval_steps: int = 0
    eval_images: int = 256

    def __post_init__(self):
        super().__post_init__()
        if self.reconstruction_loss not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"--reconstruction_loss must be l1, l2 or l1+l2, got {self.reconstruction_loss!r}")
        if not 0 < self.min_crop_fraction <= 1:
            raise ValueError(f"--min_crop_fraction must lie in (0, 1], got {self.min_crop_fraction}")
        if (self.perceptual_vgg16 is None) != (self.perceptual_lpips is None):
            raise ValueError("give both --perceptual_vgg16 and --perceptual_lpips, or neither")
        for name in ("ema_decay", "prior_ema_decay"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"--disc_loss must be hinge or vanilla, got {self.disc_loss!r}")
        if min(self.disc_lecam_weight, self.disc_r1_weight) < 0 or self.disc_r1_interval < 1:
            raise ValueError("--disc_lecam_weight and --disc_r1_weight must be >= 0 and --disc_r1_interval >= 1, got "
                             f"{self.disc_lecam_weight}, {self.disc_r1_weight}, {self.disc_r1_interval}")
        if min(self.prior_prologue_weight, self.prior_visual_weight) < 0 or not 0 <= self.prior_visual_dropout < 1:
            raise ValueError("--prior_prologue_weight and --prior_visual_weight must be >= 0 and --prior_visual_dropout "
                             f"in [0, 1), got {self.prior_prologue_weight}, {self.prior_visual_weight}, "
                             f"{self.prior_visual_dropout}")
        if not self.train_visual and not self.uses_prior:
            raise ValueError("--train_visual false trains the prologue path by the prior's CE alone: set "
                             "--prior_prologue_weight or --prior_visual_weight > 0")
        if self.uses_prior and self.gradient_accumulation_steps > 1:
            raise ValueError("the prior steps once per batch: use --gradient_accumulation_steps 1 with it")
        if self.uses_discriminator and self.gradient_accumulation_steps > 1:
            raise ValueError("the discriminator steps once per batch: use --gradient_accumulation_steps 1 with it")
        if self.uses_discriminator and self.image_size < 2 ** (self.disc_layers + 2):
            raise ValueError(f"--image_size {self.image_size} is too small for a {self.disc_layers}-layer discriminator "
                             f"(needs >= {2 ** (self.disc_layers + 2)}); lower --disc_layers")

    @property
    def uses_discriminator(self) -> bool:
        return self.train_visual and self.disc_start < self.max_train_steps and self.disc_weight > 0

    @property
    def uses_prior(self) -> bool:
        return self.prior_prologue_weight > 0 or self.prior_visual_weight > 0

    def check_model(self, config) -> None:
        prologue = config.model_type == "prologue_tokenizer"
        if self.uses_prior and not (prologue and config.num_prologue_tokens):
            raise ValueError("--prior_prologue_weight / --prior_visual_weight: a prior loss needs a tokenizer with a "
                             f"prologue quantiser, got a {config.model_type} with "
                             f"{getattr(config, 'num_prologue_tokens', 0)} prologue tokens")
        if not self.train_visual and not (prologue and config.is_post):
            raise ValueError("--train_visual false freezes the visual path, so the prologue needs its own encoder: "
                             "give a Prologue-Post tokenizer (prologue_encoder_layers > 0 in --model_config), got "
                             f"a {config.model_type} with {getattr(config, 'prologue_encoder_layers', 0)} prologue "
                             "encoder layers")
        if prologue and config.image_size != self.image_size:
            raise ValueError(f"--image_size {self.image_size} differs from the tokenizer's {config.image_size} (its "
                             f"positions are fixed): set image_size in --model_config too")
        factor = config.downsample_factor
        if self.image_size % factor:
            raise ValueError(f"--image_size {self.image_size} is not divisible by the downsampling factor {factor} of "
                             f"ch_mult {list(config.ch_mult)}")
        if config.model_type == "var_vqvae" and self.image_size // factor != config.patch_nums[-1]:
            raise ValueError(f"--image_size {self.image_size} gives {self.image_size // factor}x{self.image_size // factor} "
                             f"latents, but VAR's patch_nums {config.patch_nums} end at {config.patch_nums[-1]}")


@dataclass
class ExtractCodesArguments(HubArguments, DataArguments):
    """LlamaGen's pre-tokenisation: the ten crops (or centre crop and its flip) of every image, encoded by a VQ."""

    vqvae: str | None = field(default=None, metadata={"help": "LlamaGenVQVAE or PrologueVQVAE folder or Hub id "
                                                             "(required); a Prologue tokenizer writes AR sequences "
                                                             "[prologue] [EOS] [visual]"})
    output_dir: str = "codes"
    crop_range: float = field(default=1.1, metadata={"help": "centre crop to crop_range * image_size first"})
    ten_crop: bool = field(default=True, metadata={"help": "ten crops; false: the centre crop and its flip"})
    random_flip: bool = field(default=True, metadata={"help": "false: leave out the mirrored crops (five, or the centre "
                                                              "crop alone), for data that is not mirror-symmetric"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass and process"})
    shard_size: int = field(default=10000, metadata={"help": "examples per parquet shard"})
    max_examples: int | None = field(default=None, metadata={"help": "stop after this many examples per process"})
    mixed_precision: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is None:
            raise ValueError("--vqvae is required: the tokenizer whose codes to extract")
        for name in ("batch_size", "shard_size", "upload_retries"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_range < 1:
            raise ValueError(f"--crop_range must be >= 1, got {self.crop_range}")
