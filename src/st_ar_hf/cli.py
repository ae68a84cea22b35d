"""`st-ar` command line: `st-ar convert llamagen-vq|llamagen-gpt|var-vqvae|var|flexvar|prologue-tokenizer|prologue-ar
...`, `st-ar sample ...`, `st-ar evaluate ...`, `st-ar push ...`."""

import argparse
import json
import shutil
import os
import sys
from pathlib import Path

import torch
from PIL import Image

from .flags import FlagParser
from .models.llamagen import LLAMAGEN_PRESETS

# kind -> the official files it reads; the generators also write a STARPipeline when given their tokenizer
CONVERT_KINDS = {
    "llamagen-vq": "LlamaGen VQ tokenizer (vq_ds16_c2i.pt, vq_ds8_c2i.pt)",
    "llamagen-gpt": "LlamaGen class-conditional GPT (c2i_B_256.pt, c2i_XL_384.pt, ...)",
    "var-vqvae": "VAR's multi-scale residual VQVAE (vae_ch160v4096z32.pth)",
    "var": "VAR transformer (var_d16.pth ... var_d36.pth)",
    "flexvar": "FlexVAR transformer (FlexVARd16-epo179.pth, ...) or SAR's (SARd16-epo179.pth, ...)",
    "prologue-tokenizer": "Prologue or 2D tokenizer folder (prologue-b-tokenizer/, 2d-tokenizer/, ...)",
    "prologue-ar": "Prologue AR folder (ar-prologue-b-b/, ar-2d-base/, ...); needs its tokenizer",
}
GENERATORS = ("llamagen-gpt", "var", "flexvar", "prologue-ar")
MODEL_FILES = ("config.json", "model_index.json", "model.safetensors")  # an --output-dir holding one holds a model
# converter argument -> its flag: a converter's error that starts with an argument's name is about that flag
CONVERTER_FLAGS = {"size": "--size", "num_attention_heads": "--num-attention-heads", "block_size": "--block-size"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def _parser() -> FlagParser:
    parser = FlagParser(prog="st-ar", description="st-ar-hf: LlamaGen / ST-AR on the Hugging Face stack")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an official checkpoint to a model or pipeline directory")
    kinds = convert.add_subparsers(dest="kind", required=True)
    for kind, help_text in CONVERT_KINDS.items():
        sub = kinds.add_parser(kind, help=help_text)
        sub.add_argument("--checkpoint", required=True, help="the official file (loaded with weights_only=True), or for "
                         "Prologue the official accelerate folder of safetensors")
        sub.add_argument("--output-dir", required=True, old_names=("--output",), help="directory to write "
                         "(config.json, model.safetensors, README.md; a STARPipeline directory when a tokenizer is given)")
        sub.add_argument("--overwrite", action="store_true", help="replace a model or pipeline already in --output-dir "
                         "(the new one is written aside, in <output-dir>.partial, then renamed into place)")
        if kind in GENERATORS:  # a Prologue AR's vocabulary layout comes from its tokenizer: one is required
            tokenizer = sub.add_mutually_exclusive_group(required=kind == "prologue-ar")
            tokenizer.add_argument("--vqvae", "--tokenizer", dest="vqvae",
                                   help="a converted tokenizer directory: write a STARPipeline with it")
            tokenizer.add_argument("--vqvae-checkpoint", "--tokenizer-checkpoint", dest="vqvae_checkpoint",
                                   help="the official tokenizer file (Prologue: folder): convert it and write a "
                                   "STARPipeline (FlexVAR: FlexVAE.pth)")
        if kind.startswith("prologue"):
            sub.add_argument("--weights", choices=["ema", "raw"], help="which weights of the folder; default the official "
                             "evaluation's: the tokenizer's EMA, the AR's raw")
        if kind == "llamagen-gpt":
            sub.add_argument("--size", choices=sorted(LLAMAGEN_PRESETS), help="preset giving the head count")
            sub.add_argument("--num-attention-heads", type=_positive_int, help="head count for checkpoints matching no preset")
            sub.add_argument("--block-size", type=_positive_int, help="image tokens: 256 for 256px checkpoints, 576 "
                             "for 384px; default: read off the checkpoint's freqs_cis when it has one, else 256")
        if kind in ("var", "var-vqvae", "flexvar"):
            sub.add_argument("--patch-nums", type=int, nargs="+", help="the (trained) scale schedule; default VAR's 256 px "
                             "one (for VAR transformers: read off the checkpoint, 256 px or 512 px)")

    sample = commands.add_parser("sample", help="sample class-conditional images into a PNG grid")
    sample.add_argument("--model", required=True, help="a STARPipeline directory or Hub repo id")
    sample.add_argument("--labels", nargs="+", required=True, help="class ids or names (quote names with spaces)")
    sample.add_argument("--num-images-per-label", type=_positive_int, default=1)
    sample.add_argument("--guidance-scale", type=float, nargs="+",
                        help="default: the family's (LlamaGen 2.0; VAR 1.5 and FlexVAR 2.5, their cfg; Prologue the "
                        "paper's split CFG for the model). Prologue: S, S POWER or S_PROLOGUE S_VISUAL POWER")
    sample.add_argument("--cfg-interval", type=int, default=-1, help="LlamaGen only")
    sample.add_argument("--temperature", type=float, nargs="+",
                        help="default 1.0 (Prologue without guidance: the paper's); Prologue: T or T_PROLOGUE T_VISUAL")
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--scales", type=int, nargs="+", help="VAR / FlexVAR scale schedule (FlexVAR: any)")
    sample.add_argument("--more-smooth", action="store_true", help="VAR's Gumbel smoothing")
    sample.add_argument("--seed", type=int, default=0, help="image i is drawn with seed + i, alone reproducible")
    sample.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sample.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    sample.add_argument("--compile", action="store_true", help="torch.compile the decoding step")
    sample.add_argument("--output-file", required=True, old_names=("--out",),
                        help=f"image file for the grid, one row per label ({', '.join(IMAGE_SUFFIXES)})")

    evaluate = commands.add_parser("evaluate", help="FID, sFID, IS, precision and recall of an ADM-format sample batch, and its sample accuracy")
    evaluate.add_argument("--samples", required=True, help=".npz with uint8 [N, H, W, 3] images under arr_0")
    evaluate.add_argument("--reference", required=True, help="reference batch in the same format and resolution")
    evaluate.add_argument("--feature-network", choices=["inception", "efficientnet-lite0"],
                          help="default: ADM's Inception-v3 when its weights are found, else EfficientNet-Lite0 (warned)")
    evaluate.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or torch-fidelity's "
                          "weights-inception-2015-12-05-6726825d.pth; default $ST_AR_INCEPTION_WEIGHTS or torch's hub cache")
    evaluate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    evaluate.add_argument("--batch-size", type=_positive_int, default=64)
    evaluate.add_argument("--spatial-pool", type=_positive_int, metavar="K", help="average-pool the sFID features to a "
                          "K x K grid (7 K^2 dimensions): for sets smaller than the 1372 (EfficientNet) or 2023 (Inception) "
                          "dimensions of the full map, where sFID is otherwise marked unreliable")
    classifier = evaluate.add_mutually_exclusive_group()
    classifier.add_argument("--classifier-train", metavar="DATA", help="also report sample accuracy (the class in "
                            "--samples' arr_1 against a CNN's reading): train the CNN on DATA, an .npz (arr_0 images, arr_1 "
                            "labels) or parquet shards with image/label columns (e.g. runs/data/mnist5k/train-*.parquet)")
    classifier.add_argument("--classifier", metavar="DIR", help="a classifier saved by --save-classifier")
    evaluate.add_argument("--classifier-test", metavar="DATA", help="held-out split for the classifier's own accuracy "
                          "(required with --classifier-train)")
    evaluate.add_argument("--save-classifier", metavar="DIR", help="save the trained classifier (safetensors) for reuse")
    evaluate.add_argument("--output-file", old_names=("--out",), help="also write the results to this JSON file")

    push = commands.add_parser("push", help="upload a training run's pipeline (or tokenizer) with its card to the Hub")
    push.add_argument("run_dir", metavar="RUN_DIR", help="a training output dir (its pipeline/ or vqvae/ is uploaded) "
                      "or a saved STARPipeline / LlamaGenVQVAE dir")
    push.add_argument("--repo-id", required=True, help="org/name, created if needed")
    push.add_argument("--eval-results", action="append", default=[], metavar="FILE",
                      help="results JSON of `st-ar evaluate --output-file` for the card's model-index (repeatable); "
                      "default: RUN_DIR/evaluation.json when present")
    push.add_argument("--eval-dataset", help="Hub data set of the reference batch; default: the training data set")
    push.add_argument("--base-model", help="Hub id of the weights the run started from; default: from the run")
    push.add_argument("--private", action="store_true")
    push.add_argument("--commit-message")
    push.add_argument("--include-checkpoints", action="store_true",
                      help="also upload RUN_DIR/checkpoint-* (optimiser, EMA teacher, random states) under checkpoints/")
    return parser


def _evaluate(args) -> str:
    from .evaluation import check_spatial_pool, evaluate_generation, feature_network, load_adm_statistics, load_image_batch
    from .sample_accuracy import load_labels, sample_accuracy

    if args.output_file:
        _check_output_file(args.output_file, "--output-file", (".json",))
    _check_device(args.device)
    if bool(args.classifier_train) != bool(args.classifier_test):
        raise ValueError("--classifier-train and --classifier-test go together (a train and a held-out split)")
    if args.save_classifier and not args.classifier_train:
        raise ValueError("--save-classifier saves the classifier that --classifier-train trains: give it too")
    if args.save_classifier:
        _check_new_folder(args.save_classifier, "--save-classifier")
    samples, reference = load_image_batch(args.samples, "--samples"), load_image_batch(args.reference, "--reference")
    for flag, images in (("--samples", samples), ("--reference", reference)):
        if len(images) < 2:
            raise ValueError(f"{flag} holds {len(images)} image(s): the statistics need at least 2")
    statistics = load_adm_statistics(args.samples), load_adm_statistics(args.reference, "--reference")
    network = feature_network(args.feature_network, args.inception_weights).to(args.device)
    check_spatial_pool(network, samples, args.spatial_pool)  # before the classifier trains
    classifier = _sample_classifier(args, samples) if args.classifier or args.classifier_train else None
    results = evaluate_generation(samples, reference, network, args.batch_size, *statistics, args.spatial_pool)
    if classifier is not None:
        results.update(sample_accuracy(classifier, samples, load_labels(args.samples, len(samples))),
                       classifier=args.classifier or f"CNN trained on {args.classifier_train}")
    text = json.dumps(results, indent=2)
    print(text, flush=True)  # before the file: a failing write loses nothing
    if args.output_file:
        Path(args.output_file).write_text(text + "\n")
        return f"wrote {args.output_file}"
    return ""


def _sample_classifier(args, samples):
    """The `SampleClassifier` of `st-ar evaluate`: loaded from --classifier, or trained on --classifier-train at the
    samples' resolution (and saved to --save-classifier); the samples' labels are checked first."""
    from .sample_accuracy import (check_labels_are_classes, fit_sample_classifier, load_labelled_images, load_labels,
                                  load_sample_classifier)

    labels = load_labels(args.samples, len(samples))
    if args.classifier:
        classifier = load_sample_classifier(args.classifier, "--classifier")
        check_labels_are_classes(labels, classifier.num_classes, f"--samples {args.samples}")
        return classifier
    size = samples.shape[1]
    train = load_labelled_images(args.classifier_train, size, "--classifier-train")
    test = load_labelled_images(args.classifier_test, size, "--classifier-test")
    check_labels_are_classes(labels, int(max(train[1].max(), test[1].max())) + 1, f"--samples {args.samples}")
    classifier = fit_sample_classifier(*train, *test)
    if args.save_classifier:  # written aside, then renamed into place: never a half-written or replaced folder
        folder = Path(args.save_classifier)
        staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        classifier.save_pretrained(staging)
        try:
            staging.rename(folder)  # replaces an empty folder only
        except OSError:
            raise ValueError(f"--save-classifier {folder} was filled meanwhile: the classifier is in {staging}") from None
    return classifier


def _check_new_folder(path: str, flag: str) -> None:
    """Before any work: `path` is a new or empty folder in an existing one; nothing finished is overwritten."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{flag} {path} already holds {'files' if path.is_dir() else 'a file'}: choose a new or "
                         f"empty folder")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {path.parent} does not exist")


def _push(args) -> str:
    from .hub import push_run

    commits = push_run(args.run_dir, args.repo_id, args.eval_results, args.eval_dataset, args.base_model, args.private,
                       args.commit_message, args.include_checkpoints)
    return "\n".join(f"pushed {url}" for url in commits)


def _sample(args) -> str:
    from .hub import load_star_pipeline

    _check_output_file(args.output_file, "--output-file", IMAGE_SUFFIXES)
    _check_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    labels = [int(label) if label.isdigit() else label for label in args.labels]
    pipe = load_star_pipeline(args.model).to(args.device, dtype)
    num_images = len(labels) * args.num_images_per_label
    def number_or_tuple(values):
        return values if values is None or len(values) > 1 else values[0]

    out = pipe(
        labels, num_images_per_label=args.num_images_per_label, guidance_scale=number_or_tuple(args.guidance_scale),
        cfg_interval=args.cfg_interval, temperature=number_or_tuple(args.temperature), top_k=args.top_k, top_p=args.top_p,
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(num_images)],
        compile_decoding=args.compile, scales=args.scales, more_smooth=args.more_smooth,
    )
    width, height = out.images[0].size
    grid = Image.new("RGB", (width * args.num_images_per_label, height * len(labels)))
    for i, image in enumerate(out.images):
        grid.paste(image, ((i % args.num_images_per_label) * width, (i // args.num_images_per_label) * height))
    grid.save(args.output_file)
    return f"wrote {num_images} images ({width}x{height}) to {args.output_file}"


def _convert(args) -> str:
    from .model_cards import converted_base_model, pipeline_model_card
    from .models.llamagen.convert_llamagen import convert_llamagen_gpt, convert_llamagen_vq
    from .models.prologue.convert_prologue import convert_prologue, convert_prologue_tokenizer
    from .models.var.convert_var import convert_flexvar, convert_var, convert_var_vqvae
    from .pipelines import STARPipeline

    output = Path(args.output_dir)
    holds_model = output.is_dir() and any((output / name).exists() for name in MODEL_FILES)
    if output.is_file() or (holds_model and not args.overwrite):
        raise ValueError(f"--output-dir {output} already holds a file or a model: choose another folder or pass "
                         "--overwrite")
    if output.is_dir() and not holds_model and any(output.iterdir()):
        raise ValueError(f"--output-dir {output} holds files but no model: choose a new or empty folder")
    partial = output.with_name(f"{output.name}.partial")  # written there, renamed into place when complete
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    with_tokenizer = args.kind in GENERATORS and bool(args.vqvae or args.vqvae_checkpoint)
    if with_tokenizer:  # read first: a wrong tokenizer fails before the (larger) transformer is read
        vqvae = _load_tokenizer(args)
    output_dir = None if with_tokenizer else partial
    schedule = {"patch_nums": args.patch_nums} if getattr(args, "patch_nums", None) else {}
    try:
        if args.kind == "llamagen-vq":
            model = convert_llamagen_vq(args.checkpoint, output_dir=output_dir)
        elif args.kind == "llamagen-gpt":
            model = convert_llamagen_gpt(args.checkpoint, size=args.size, num_attention_heads=args.num_attention_heads,
                                         block_size=args.block_size, output_dir=output_dir)
        elif args.kind == "var-vqvae":
            model = convert_var_vqvae(args.checkpoint, output_dir=output_dir, **schedule)
        elif args.kind == "var":
            model = convert_var(args.checkpoint, output_dir=output_dir, **schedule)
        elif args.kind == "prologue-tokenizer":
            model = convert_prologue_tokenizer(args.checkpoint, ema=args.weights != "raw", output_dir=output_dir)
        elif args.kind == "prologue-ar":
            model = convert_prologue(args.checkpoint, vqvae, ema=args.weights == "ema")
        else:
            model = convert_flexvar(args.checkpoint, output_dir=output_dir, **schedule)
    except ValueError as error:
        argument, _, rest = str(error).partition(" ")
        raise ValueError(f"{CONVERTER_FLAGS[argument]} {rest}" if argument in CONVERTER_FLAGS
                         else f"--checkpoint: {error}") from None
    written = f"{type(model).__name__} ({model.num_parameters():,} parameters)"
    if with_tokenizer:
        pipe = STARPipeline(transformer=model, vqvae=vqvae)
        pipe.check_components()
        pipe.save_pretrained(partial)
        card = pipeline_model_card(pipe, remote_code=True, base_model=converted_base_model(args.kind))
        card.save(partial / "README.md")  # names the original weights, which `st-ar push` keeps
        written = f"a STARPipeline of {written} and {type(vqvae).__name__}"
    if output.exists():  # an empty folder, or (--overwrite) the model it held
        shutil.rmtree(output)
    partial.rename(output)
    return f"wrote {written} to {args.output_dir}"


def _check_output_file(path: str, flag: str, suffixes: tuple[str, ...]) -> None:
    """Before any work: the folder exists and `path` ends in one of `suffixes`."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file ending in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, expected a file")


def _check_device(device: str) -> None:
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "meta":
        raise ValueError("--device meta holds shapes but no data: nothing can run there (use --device cpu or cuda)")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:  # a missing backend or an absent card (cuda:7)
        raise ValueError(f"--device {device} is not usable here: {str(error).splitlines()[0].split('. ')[0]}") from None


def _load_tokenizer(args):
    """The tokenizer of `--vqvae` (a converted directory) or `--vqvae-checkpoint` (an official file)."""
    from safetensors import SafetensorError
    from transformers import AutoModel

    from .models.llamagen.convert_llamagen import convert_llamagen_vq
    from .models.prologue.convert_prologue import convert_prologue_tokenizer
    from .models.var.convert_var import convert_var_vqvae
    from .pipelines.pipeline_star import FAMILIES

    if args.vqvae:
        config_file = Path(args.vqvae) / "config.json"
        if not config_file.is_file():
            raise ValueError(f"--vqvae {args.vqvae}: no config.json, not a converted tokenizer directory")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in ("llamagen_vqvae", "var_vqvae", "prologue_tokenizer"):
            raise ValueError(f"--vqvae {args.vqvae} holds a {model_type!r} model, not a tokenizer")
        expected = FAMILIES[args.kind.removesuffix("-gpt").removesuffix("-ar")].tokenizer_type
        if model_type != expected:
            raise ValueError(f"--vqvae {args.vqvae} holds a {model_type!r} tokenizer, which a {args.kind} model does not "
                             f"decode with (it decodes with a {expected!r} one)")
        try:
            return AutoModel.from_pretrained(args.vqvae, use_safetensors=True)  # never a pickled .bin
        except (SafetensorError, OSError) as error:  # a truncated or half-written model.safetensors, or none
            raise ValueError(f"--vqvae {args.vqvae}: unreadable weights: {str(error).splitlines()[0]}") from None
    # FlexVAE.pth is a LlamaGen VQ
    convert = {"var": convert_var_vqvae, "prologue-ar": convert_prologue_tokenizer}.get(args.kind, convert_llamagen_vq)
    try:
        return convert(args.vqvae_checkpoint)
    except ValueError as error:
        raise ValueError(f"--vqvae-checkpoint: {error}") from None


def run_command(command, args, name: str) -> int:
    """`command(args)`, printing the message it returns; a ValueError (bad input, named) or an OSError (the Hub or
    the disk) ends as one line `{name}: error: ...` on stderr. Returns the exit code: 0, 2 for bad input, 1."""
    try:
        if message := command(args):
            print(message)
    except ValueError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # every huggingface_hub error is an OSError
        print(f"{name}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"convert": _convert, "sample": _sample, "evaluate": _evaluate, "push": _push}
    return run_command(commands[args.command], args, f"st-ar {args.command}")


if __name__ == "__main__":
    sys.exit(main())
