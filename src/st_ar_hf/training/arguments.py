"""Training arguments: dataclasses read from a YAML file (`--config`) and overridden on the command line.

Every field is a command-line flag of the same name, spelt `--output_dir` or `--output-dir`. A YAML key that is not a
field is an error, so a typo never silently falls back to a default. Every field but a bool declares its domain beside
it (`setting(default, domain)`), checked when the arguments are built, so no run starts on a value outside it.
"""

import argparse
import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..flags import FlagParser
from .losses import AR_PASSES
from .sar import RolloutSampling, check_flexvar_schedule


@dataclass(frozen=True)
class Range:
    """Finite numbers from `low` to `high` (None: unbounded; `open_*`: the bound excluded), multiples of `multiple_of`."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    multiple_of: int | None = None

    def admits(self, value) -> bool:
        return (math.isfinite(value)
                and (self.low is None or value > self.low or value == self.low and not self.open_low)
                and (self.high is None or value < self.high or value == self.high and not self.open_high)
                and (self.multiple_of is None or value % self.multiple_of == 0))

    def describe(self, kind: type) -> str:
        if self.high is None:
            bounds = f"{'>' if self.open_low else '>='} {self.low}" + ("" if kind is int else " and finite")
        else:
            bounds = f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        return f"a multiple of {self.multiple_of} and {bounds}" if self.multiple_of else bounds


class Choice:
    """One of the listed values."""

    def __init__(self, *values):
        self.values = values

    def admits(self, value) -> bool:
        return value in self.values

    def describe(self, kind: type) -> str:
        if len(self.values) == 2:
            return " or ".join(map(str, self.values))
        return "one of " + ", ".join(map(str, self.values))


class Anything:
    """Free text (paths, ids, names checked where they are opened) and JSON overrides (checked by the model config)."""

    def admits(self, value) -> bool:
        return True

    def describe(self, kind: type) -> str:
        return "any value"


class MixedPrecision:
    """accelerate's precisions that this machine runs (on a CPU, accelerate trains fp16 silently in fp32); fp8 needs
    transformer_engine or torchao, which the project does not use. bf16 support is read from the compute capability:
    `torch.cuda.is_bf16_supported` allocates on GPU 0 in every process."""

    def admits(self, value) -> bool:
        if value == "fp16":
            return torch.cuda.is_available()
        if value == "bf16":
            return not torch.cuda.is_available() or torch.cuda.get_device_capability(0)[0] >= 8
        return value == "no"

    def describe(self, kind: type) -> str:
        return "no, fp16 (on a CUDA GPU) or bf16 (on a CPU or a GPU of compute capability >= 8)"


ANY = Anything()
COUNT = Range(1)  # sizes, step intervals, limits
NON_NEGATIVE = Range(0)  # loss weights, weight decay, step counts where 0 is off
POSITIVE = Range(0, open_low=True)
FRACTION_BELOW_ONE = Range(0, 1, open_high=True)  # EMA decays, Adam betas, dropout, label smoothing
NONZERO_FRACTION = Range(0, 1, open_low=True)  # top-p (1.0: off), crop fractions
# diffusers' SchedulerType names that get_scheduler builds from these arguments (piecewise_constant needs step rules)
DIFFUSERS_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def setting(default, domain, help: str | None = None):
    """A field whose value must lie in `domain` (`Range`, `Choice`, `MixedPrecision` or `ANY`); None, where the
    annotation allows it, means "the default" and is always admitted."""
    return field(default=default, metadata={"domain": domain, "help": help})


def domain_of(f: dataclasses.Field, annotation):
    """The declared domain of field `f`; a bool takes either value."""
    if _flag_type(annotation) is bool:
        return ANY
    if "domain" not in f.metadata:
        raise TypeError(f"setting {f.name} declares no domain: define it with setting(default, domain)")
    return f.metadata["domain"]


def check_domains(args) -> None:
    """Refuses the first value outside its field's domain, naming the flag, the value and the domain."""
    hints = typing.get_type_hints(type(args))
    for f in dataclasses.fields(args):
        value, domain = getattr(args, f.name), domain_of(f, hints[f.name])
        if value is None and type(None) in typing.get_args(hints[f.name]):
            continue
        if not domain.admits(value):
            raise ValueError(f"--{f.name} must be {domain.describe(_flag_type(hints[f.name]))}, got {value!r}")


@dataclass
class DataArguments:
    """Where the images come from, and their size."""

    DATA_SOURCES = ("embedded_dataset_dir", "dataset", "train_data_files")  # exactly one is given

    # data: a Hub dataset id, local files in one of the `datasets` builder formats, or the embedded MNIST digits
    embedded_dataset_dir: str | None = setting(None, ANY, "write the embedded MNIST-5k shards here (once) and train on them")
    dataset: str | None = setting(None, ANY, "Hub dataset id, e.g. ILSVRC/imagenet-1k")
    dataset_config: str | None = setting(None, ANY, "configuration name of --dataset")
    train_data_files: str | None = setting(None, ANY, "local shards: a glob, or a folder for imagefolder")
    data_format: str = setting("parquet", Choice("parquet", "webdataset", "imagefolder"), "with --train_data_files")
    split: str = setting("train", ANY)
    image_column: str = setting("image", ANY)
    label_column: str = setting("label", ANY)
    image_size: int = setting(256, Range(4, multiple_of=4), "tokenizers downsample by 4, 8 or 16")
    shuffle_buffer: int = setting(1000, COUNT)
    shuffle_input_shards: int = setting(10, COUNT, "shards mixed into the shuffle buffer at once")
    max_skipped_in_a_row: int = setting(
        1000, COUNT, "stop with an error after this many unusable (undecodable) examples in a row")

    def __post_init__(self):
        check_domains(self)
        sources = [name for name in self.DATA_SOURCES if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one data source of {['--' + n for n in self.DATA_SOURCES]}, got {sources}")

    @property
    def data_source(self) -> str:
        """The data as errors name it, e.g. `--dataset ILSVRC/imagenet-1k`."""
        name = next(name for name in self.DATA_SOURCES if getattr(self, name) is not None)
        return f"--{name} {getattr(self, name)}"


@dataclass
class HubArguments:
    push_to_hub: bool = False
    hub_model_id: str | None = setting(None, ANY, "repo id; default: the output folder's name")
    hub_private_repo: bool = False
    upload_retries: int = setting(3, COUNT)


@dataclass
class RunArguments(HubArguments, DataArguments):
    """What every training script shares: data, optimisation, precision, logging, checkpoints, Hub."""

    # optimisation
    seed: int = setting(0, Range(0, 2**32 - 1))  # numpy's seeds
    train_batch_size: int = setting(32, COUNT, "images per process and step")
    gradient_accumulation_steps: int = setting(1, COUNT)
    max_train_steps: int = setting(1000, COUNT)
    learning_rate: float = setting(1e-4, POSITIVE)
    scale_lr: bool = field(default=False, metadata={"help": "multiply the lr by global batch / 256 (LlamaGen: 1e-4 per 256)"})
    lr_scheduler: str = setting("constant", Choice(*DIFFUSERS_SCHEDULERS), "a diffusers.optimization scheduler")
    lr_warmup_steps: int = setting(0, NON_NEGATIVE)
    adam_beta1: float = setting(0.9, FRACTION_BELOW_ONE)
    adam_beta2: float = setting(0.95, FRACTION_BELOW_ONE)
    adam_weight_decay: float = setting(0.05, NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, POSITIVE)
    mixed_precision: str | None = setting(None, MixedPrecision(), "default: accelerate's config")
    max_nonfinite_steps: int = setting(10, COUNT, "stop after this many non-finite losses in a row")
    # outputs
    output_dir: str = setting("runs/train", ANY)
    report_to: str = setting("tensorboard", Choice("tensorboard", "wandb", "all", "none"))
    log_steps: int = setting(10, COUNT)
    validation_steps: int = setting(500, NON_NEGATIVE, "log a sample grid every N steps (0: only at the end)")
    checkpointing_steps: int = setting(500, COUNT)
    checkpoints_total_limit: int | None = setting(3, COUNT, "checkpoints kept (null: all)")
    resume_from_checkpoint: str | None = setting(None, ANY, "a checkpoint folder or 'latest'")
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "a fresh run deletes another run's checkpoints and metrics in --output_dir"})

    def __post_init__(self):
        super().__post_init__()
        if self.lr_warmup_steps > 0 and self.lr_scheduler == "constant":
            raise ValueError("--lr_warmup_steps needs a scheduler with warmup, e.g. --lr_scheduler constant_with_warmup")


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
        domain = domain_of(f, hints[name])
        help_text = "; ".join(filter(None, [f.metadata.get("help"), None if domain is ANY else domain.describe(kind)]))
        kind = {bool: _to_bool, dict: _json_mapping}.get(kind, kind)
        if type(None) in typing.get_args(hints[name]):  # `--vqvae null` unsets a value a config gave, as YAML's null
            kind = _or_null(kind)
        parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=help_text or None,
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

    train_codes: str | None = setting(None, ANY, "code shards of extract_codes.py: folder, glob or Hub id")
    num_classes: int | None = setting(None, COUNT, "default: the dataset's ClassLabel count")
    crop_range: float = setting(1.1, Range(1), "images: centre crop to crop_range * image_size, then ten crops")
    random_flip: bool = field(default=True, metadata={
        "help": "images: the ten crops include the five of the mirrored image; false for data that is not "
                "mirror-symmetric (digits): five crops"})
    # models
    vqvae: str | None = setting(
        None, ANY, "LlamaGenVQVAE folder or Hub id; with --train_codes, default: the one that made them")
    tokenizer_config: str | None = setting(None, ANY, "without --vqvae: train one first with this train_tokenizer.py YAML")
    model: str = setting("B", ANY, "a preset (B, L, XL, XXL, 3B) or a pretrained LlamaGen folder")
    model_config: dict | None = setting(None, ANY, "LlamaGenConfig overrides, as JSON on the command line")
    attn_implementation: str = setting("sdpa", ANY)
    gradient_checkpointing: bool = False
    # objective: L = ar_weight * L_AR + mim_weight * L_MIM + step_weight * L_step + view_weight * L_view
    ar_weight: float = setting(1.0, NON_NEGATIVE)
    mim_weight: float = setting(1.0, NON_NEGATIVE, "alpha; 0 also drops the attention mask")
    step_weight: float = setting(0.5, NON_NEGATIVE, "beta * 1 (the paper's beta = 0.5, no extra 1/2)")
    view_weight: float = setting(0.5, NON_NEGATIVE, "beta * 1")
    mask_ratio: float = setting(0.25, Range(0, 1, open_low=True, open_high=True),
                                "fraction r of key positions hidden from the student")
    ar_pass: str = setting("masked", Choice(*AR_PASSES),
                           "L_AR's student pass under the mask: masked (one forward, the paper's figure), unmasked (a "
                           "second forward) or split (even sequences masked for L_MIM, odd ones plain for L_AR)")
    contrastive_layer: int | None = setting(
        None, COUNT, "default num_layers // 2 (6 for B; the paper uses 18 for L); at most the model's layers")
    num_positions: int = setting(4, COUNT, "K positions sampled per batch for L_step / L_view")
    num_views: int | None = setting(None, COUNT, "crops per image; default 2 with L_view, else 1")
    temperature: float = setting(0.2, POSITIVE)
    projector_hidden_size: int | None = setting(None, COUNT)
    ema_decay: float = setting(0.9999, FRACTION_BELOW_ONE)
    # validation samples
    validation_images_per_class: int = setting(4, COUNT)
    validation_max_classes: int = setting(16, COUNT)
    validation_guidance_scale: float = setting(2.0, NON_NEGATIVE)
    validation_top_p: float = setting(1.0, NONZERO_FRACTION, "nucleus sampling of the grids and the final samples (1.0: off, "
                                                  "LlamaGen's default)")
    sample_accuracy_per_class: int = setting(0, NON_NEGATIVE,
                                             "at the end, sample N per class at the validation guidance and report the "
                                             "share a digit CNN trained on --embedded_dataset_dir's train split reads "
                                             "as their class (0: off)")
    export_steps: int | None = setting(None, COUNT, "also export (and push) a pipeline every N steps")

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is not None and self.tokenizer_config is not None:
            raise ValueError("give --vqvae or --tokenizer_config, not both")
        if self.vqvae is None and self.tokenizer_config is None and self.train_codes is None:
            raise ValueError("training on images needs --vqvae, or --tokenizer_config to train one first")
        if self.tokenizer_config is not None and self.train_codes is not None:
            raise ValueError("--train_codes come with their tokenizer (codes_info.json or --vqvae): drop --tokenizer_config")
        if self.sample_accuracy_per_class and self.embedded_dataset_dir is None:
            raise ValueError(f"--sample_accuracy_per_class {self.sample_accuracy_per_class}: expected 0, or N > 0 with "
                             "--embedded_dataset_dir (the classifier trains on its labelled digits)")
        if self.num_views is None:
            self.num_views = 2 if self.view_weight > 0 else 1
        if self.view_weight > 0 and self.num_views < 2:
            raise ValueError(f"--view_weight > 0 needs --num_views >= 2, got {self.num_views}")
        crops = 10 if self.random_flip else 5
        if self.num_views > crops:
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

    num_classes: int | None = setting(None, COUNT, "default: the dataset's ClassLabel count")
    crop_ratio: float = setting(1.125, Range(1), "resize the short side to crop_ratio * image_size, then a random "
                                                 "square crop (VAR's mid_reso)")
    random_flip: bool = False
    # models
    model: str = setting("flexvar-d16", ANY,
                         "a preset (var-d16 .. var-d36, flexvar-d16 .. flexvar-d24) to train from scratch, or a "
                         "folder: a STARPipeline (its transformer and tokenizer) or a transformer")
    model_config: dict | None = setting(None, ANY, "VARConfig / FlexVARConfig overrides, as JSON")
    vqvae: str | None = setting(
        None, ANY, "VARVQVAE (VAR) or LlamaGenVQVAE (FlexVAR) folder; default: the pipeline's given as --model")
    tokenizer_config: str | None = setting(
        None, ANY, "without a tokenizer: train one first with this train_tokenizer.py YAML")
    pretrain_config: str | None = setting(
        None, ANY, "when the --model folder does not exist: pre-train it first with this train_scalewise.py YAML")
    attn_implementation: str = setting("sdpa", ANY)
    gradient_checkpointing: bool = False
    # teacher forcing
    random_scales: bool | None = field(default=None, metadata={
        "help": "FlexVAR's random scale schedule per step (default: on for FlexVAR; VAR has one schedule)"})
    label_smoothing: float = setting(0.0, FRACTION_BELOW_ONE)
    # SAR
    sigma: float = setting(0.0, NON_NEGATIVE, "weight of L_CSF; 0 is teacher forcing alone (SAR: 0.01)")
    rollout_scales: str = setting("last", Choice("last", "all"),
                                  "last: the released code's penultimate -> last scale pass; all: every scale, the "
                                  "paper's figure")
    rollout_targets: str = setting("teacher", Choice("teacher", "ground_truth"),
                                   "teacher: the teacher-forced tokens (CSF); ground_truth: the ablation "
                                   "tf_then_single_sf")
    rollout_sampling: bool = field(default=False, metadata={"help": "draw the rollout tokens instead of argmax"})
    rollout_guidance_scale: float | None = setting(None, NON_NEGATIVE, "with rollout_sampling; default 1.2")
    rollout_top_k: int | None = setting(None, NON_NEGATIVE, "with rollout_sampling; default 900")
    rollout_top_p: float | None = setting(None, NONZERO_FRACTION, "with rollout_sampling; default 0.96")
    # VAR's optimisation
    learning_rate: float = setting(1e-4, POSITIVE, "per 256 images with scale_lr (VAR's tblr)")
    scale_lr: bool = True
    max_grad_norm: float = setting(2.0, POSITIVE)
    lr_scheduler: str = setting("lin0", Choice("lin0", *DIFFUSERS_SCHEDULERS),
                                "VAR's lin0, or a diffusers.optimization scheduler")
    lr_start_ratio: float = setting(0.005, Range(0, 1), "lin0: lr at step 0 over the peak (VAR's wp0)")
    lr_end_ratio: float = setting(0.01, Range(0, 1), "lin0: lr at the last step over the peak (VAR's wpe)")
    lr_schedule_offset: int = setting(0, NON_NEGATIVE, "lin0: steps of the schedule done before this run (a "
                                                       "post-training continues its pre-training's decay)")
    lr_schedule_total: int | None = setting(
        None, COUNT, "lin0: the schedule's length in steps; default lr_schedule_offset + max_train_steps")
    # validation samples
    validation_images_per_class: int = setting(4, COUNT)
    validation_max_classes: int = setting(16, COUNT)
    validation_guidance_scale: float = setting(1.5, NON_NEGATIVE)
    validation_top_p: float = setting(1.0, NONZERO_FRACTION)
    export_steps: int | None = setting(None, COUNT, "also export (and push) a pipeline every N steps")

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is not None and self.tokenizer_config is not None:
            raise ValueError("give --vqvae or --tokenizer_config, not both")
        given = [name for name in ("rollout_guidance_scale", "rollout_top_k", "rollout_top_p") if getattr(self, name) is not None]
        if given and not self.rollout_sampling:
            raise ValueError(f"{['--' + n for n in given]} set the sampled rollout: add --rollout_sampling, or drop "
                             "them for the argmax rollout")
        if self.pretrain_config is not None and self.is_preset:
            raise ValueError(f"--pretrain_config writes the pretrained --model folder; --model {self.model!r} is a preset")
        if self.sigma > 0 and self.is_preset:
            raise ValueError(f"SAR (--sigma {self.sigma}) post-trains a pretrained scale-wise model: give --model a "
                             f"converted or trained folder, not the preset {self.model!r}")
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

    model: str = setting("VQ-16", ANY,
                         "a LlamaGen preset (VQ-16, VQ-8; FlexVAR's tokenizer is one), var-vqvae (VAR's residual "
                         "multi-scale VQVAE), a Prologue preset (prologue-b, prologue-l; num_prologue_tokens 0 in "
                         "--model_config is the 2D tokenizer) or a pretrained tokenizer folder")
    model_config: dict | None = setting(None, ANY, "LlamaGenVQVAEConfig / VARVQVAEConfig / PrologueVQVAEConfig "
                                                   "overrides, as JSON")
    reconstruction_loss: str = setting("l2", Choice("l1", "l2", "l1+l2"), "l2 (LlamaGen), l1, or l1+l2 (Prologue)")
    reconstruction_weight: float = setting(1.0, NON_NEGATIVE)
    min_crop_fraction: float = setting(0.8, NONZERO_FRACTION, "random crops cover this to 1.0 of the short side")
    random_flip: bool = True
    train_batch_size: int = setting(16, COUNT)
    adam_weight_decay: float = setting(0.0, NON_NEGATIVE)  # LlamaGen parses --weight-decay for the tokenizer but never uses it
    validation_images: int = setting(8, COUNT)
    # perceptual loss: LPIPS-VGG from local files (none ship in any package here)
    perceptual_weight: float = setting(1.0, NON_NEGATIVE)
    perceptual_vgg16: str | None = setting(None, ANY, "torchvision VGG16 ImageNet weights (.pth/.safetensors)")
    perceptual_lpips: str | None = setting(None, ANY, "the lpips package's vgg.pth (linear layers)")
    # PatchGAN discriminator, hinge loss (LlamaGen: weight 0.5 from step 20000, its own Adam)
    disc_start: int = setting(20000, NON_NEGATIVE)
    disc_weight: float = setting(0.5, NON_NEGATIVE)
    disc_learning_rate: float | None = setting(None, POSITIVE, "default: --learning_rate")
    disc_layers: int = setting(3, COUNT)
    disc_base_channels: int = setting(64, COUNT)
    disc_loss: str = setting("hinge", Choice("hinge", "vanilla"), "hinge (LlamaGen) or vanilla (non-saturating, Prologue)")
    disc_lecam_weight: float = setting(0.0, NON_NEGATIVE, "LeCam regulariser of the discriminator (Prologue: 0.001)")
    disc_r1_weight: float = setting(0.0, NON_NEGATIVE, "R1 penalty of the discriminator (Prologue: 0.01)")
    disc_r1_interval: int = setting(25, COUNT, "R1 on every this many steps, unscaled (Prologue: 25)")
    # Prologue's joint phase: an AR prior whose CE trains the prologue tokens (weights > 0 turn it on)
    train_visual: bool = field(default=True, metadata={
        "help": "false: the patch encoder, visual quantiser and decoder stay frozen and only the prologue path learns, "
                "from the prior's CE alone (Prologue-Post: --model a trained 2D tokenizer folder, --model_config "
                "with num_prologue_tokens and prologue_encoder_layers > 0)"})
    prior_prologue_weight: float = setting(0.0, NON_NEGATIVE, "weight of the prologue + EOS CE (official 3.0)")
    prior_visual_weight: float = setting(0.0, NON_NEGATIVE, "weight of the visual CE (official 3.0)")
    prior_visual_dropout: float = setting(0.5, FRACTION_BELOW_ONE, "share of samples whose visual inputs become EOS")
    prior_model: str = setting("S", ANY, "the prior's PrologueConfig preset")
    prior_config: dict | None = setting(None, ANY, "PrologueConfig overrides (train.sh: 7 layers)")
    prior_learning_rate: float = setting(1e-4, POSITIVE)
    prior_adam_beta2: float = setting(0.99, FRACTION_BELOW_ONE)
    prior_weight_decay: float = setting(0.03, NON_NEGATIVE)
    prior_ema_decay: float | None = setting(None, FRACTION_BELOW_ONE, "EMA of the prior (official half-life 2500 steps: 0.99972)")
    # EMA of the tokenizer weights, exported instead of the raw ones when set (LlamaGen: 0.9999, off by default)
    ema_decay: float | None = setting(None, FRACTION_BELOW_ONE)
    # held-out evaluation: PSNR, SSIM and codebook usage
    eval_data_files: str | None = setting(None, ANY, "held-out shards; with --embedded_dataset_dir its test shard")
    eval_steps: int = setting(0, NON_NEGATIVE, "0: off")
    eval_images: int = setting(256, COUNT)

    def __post_init__(self):
        super().__post_init__()
        if (self.perceptual_vgg16 is None) != (self.perceptual_lpips is None):
            raise ValueError("give both --perceptual_vgg16 and --perceptual_lpips, or neither")
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

    vqvae: str | None = setting(None, ANY, "LlamaGenVQVAE or PrologueVQVAE folder or Hub id (required); a Prologue "
                                           "tokenizer writes AR sequences [prologue] [EOS] [visual]")
    output_dir: str = setting("codes", ANY)
    crop_range: float = setting(1.1, Range(1), "centre crop to crop_range * image_size first")
    ten_crop: bool = field(default=True, metadata={"help": "ten crops; false: the centre crop and its flip"})
    random_flip: bool = field(default=True, metadata={"help": "false: leave out the mirrored crops (five, or the centre "
                                                              "crop alone), for data that is not mirror-symmetric"})
    batch_size: int = setting(32, COUNT, "images per forward pass and process")
    shard_size: int = setting(10000, COUNT, "examples per parquet shard")
    max_examples: int | None = setting(None, COUNT, "stop after this many examples per process")
    mixed_precision: str | None = setting(None, MixedPrecision(), "default: accelerate's config")

    def __post_init__(self):
        super().__post_init__()
        if self.vqvae is None:
            raise ValueError("--vqvae is required: the tokenizer whose codes to extract")
