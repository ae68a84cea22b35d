#!/usr/bin/env python
"""Train a token-wise AR model with next-token prediction, and with ST-AR's self-guidance (arXiv 2509.15185) when the
weights of its terms are > 0, over `datasets` streaming shards with Accelerate: a LlamaGen GPT over a LlamaGen VQ's
codes, or a Prologue AR over a Prologue tokenizer's `[prologue] [EOS] [visual]` sequences (Prologue's phase 3; the
family follows the tokenizer).

    accelerate launch training/train.py                      # the embedded default: configs/default.yaml
    accelerate launch training/train.py --config training/configs/st_ar_b.yaml --train_codes codes/
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train.py ...   # 2 CPU processes

The data is either code shards from `extract_codes.py` or images tokenised on the fly by a frozen `--vqvae`
(trained first with `train_tokenizer.py` when `--tokenizer_config` is given instead). Writes `checkpoint-<step>`
folders, sample grids, and a `STARPipeline` in `<output_dir>/pipeline`.
"""

import copy
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

import train_tokenizer
from st_ar_hf import LlamaGenConfig, LlamaGenForImageGeneration, PrologueConfig, PrologueForImageGeneration
from st_ar_hf.models.llamagen import LLAMAGEN_PRESETS
from st_ar_hf.models.prologue import PROLOGUE_PRESETS
from st_ar_hf.hub import BackgroundUploader
from st_ar_hf.training.arguments import ARTrainingArguments, TokenizerTrainingArguments, parse_arguments, run_script
from st_ar_hf.training.checkpointing import TrainingState, claim_output_dir, resume_run
from st_ar_hf.training.data import (
    ExampleStream, check_codes_tokenizer, check_columns, class_names, crop_views, decode_image, load_image_dataset,
    load_stream, read_codes_info, to_pixel_values, tokenizer_digest,
)
from st_ar_hf.training.losses import STARObjective, update_ema
from st_ar_hf.training.prologue import prior_sequence
from st_ar_hf.training.loop import (
    LogWindow, after_step, class_labels, data_counts, export_pipeline, is_due, label_tensor, load_pretrained,
    make_accelerator, make_optimizer, report_sample_accuracy, skip_step,
)
from st_ar_hf.training.tracking import finish_run, log_metrics

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
logger = get_logger(__name__)


def load_data(args: ARTrainingArguments, accelerator: Accelerator):
    """The raw stream and its label names; codes shards keep their `codes` [views, h*w] column."""
    if args.train_codes is not None:
        is_local = Path(args.train_codes).is_dir() or any(c in args.train_codes for c in "*?")
        dataset = load_stream(data_files=args.train_codes) if is_local else load_stream(args.train_codes, split=args.split)
    else:
        dataset = load_image_dataset(args, accelerator.main_process_first)
    names = class_names(dataset, args.label_column)
    if args.train_codes is not None:
        check_columns(dataset, label_column=args.label_column, train_codes="codes")
        return dataset, names
    check_columns(dataset, label_column=args.label_column, image_column=args.image_column)
    return dataset.decode(False), names  # images are decoded by the transform, which skips broken ones


def build_transform(args: ARTrainingArguments, num_classes: int):
    """raw example -> {"label": [], "views": [V, 3, H, W] pixels or [V, T] codes}; V distinct crops of the ten (five
    without flips)."""

    def label_of(example):
        return label_tensor(example, args.label_column, num_classes)

    def from_codes(example, rng, counts):
        codes = torch.tensor(example["codes"], dtype=torch.long)  # [10 or 2 crops, T]
        if codes.shape[0] < args.num_views:
            raise ValueError(f"--num_views {args.num_views} exceeds the {codes.shape[0]} crops per image in --train_codes")
        return {"label": label_of(example), "views": codes[rng.permutation(codes.shape[0])[: args.num_views]]}

    def from_image(example, rng, counts):
        image = decode_image(example[args.image_column])
        if image is None:
            return None
        crop_size = int(args.image_size * args.crop_range)
        if min(image.size) < crop_size:
            counts["upscaled"] += 1
        crops = crop_views(image, args.image_size, args.crop_range, flip=args.random_flip)
        chosen = [crops[i] for i in rng.permutation(len(crops))[: args.num_views]]
        return {"label": label_of(example), "views": to_pixel_values(chosen)}

    return from_codes if args.train_codes is not None else from_image


def build_model(args: ARTrainingArguments, vqvae, num_classes: int):
    """The AR of the tokenizer's family: a LlamaGen GPT over a LlamaGen VQ's grid, a Prologue AR over a Prologue
    tokenizer's vocabulary layout; from a preset name or a pretrained folder."""
    tokenizer, grid_size = vqvae.config, args.image_size // vqvae.config.downsample_factor
    if tokenizer.model_type == "prologue_tokenizer":
        if args.model not in PROLOGUE_PRESETS:
            return PrologueForImageGeneration.from_pretrained(args.model, **(args.model_config or {}))
        layers, heads, hidden = PROLOGUE_PRESETS[args.model]
        return PrologueForImageGeneration(PrologueConfig(**{
            "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": hidden,
            "visual_vocab_size": tokenizer.codebook_size, "prologue_vocab_size": tokenizer.prologue_codebook_size,
            "num_prologue_tokens": tokenizer.num_prologue_tokens, "num_visual_tokens": grid_size**2,
            "num_classes": num_classes, **(args.model_config or {})}))
    if args.model in LLAMAGEN_PRESETS:
        layers, heads, hidden = LLAMAGEN_PRESETS[args.model]
        config = LlamaGenConfig(**{
            "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_size": hidden,
            "vocab_size": tokenizer.codebook_size, "block_size": grid_size**2, "num_classes": num_classes,
            **(args.model_config or {})})
        return LlamaGenForImageGeneration._from_config(config, attn_implementation=args.attn_implementation)
    return LlamaGenForImageGeneration.from_pretrained(args.model, attn_implementation=args.attn_implementation,
                                                      **(args.model_config or {}))


def tokenize(vqvae, views: torch.Tensor) -> torch.LongTensor:
    """Pixels [B, V, 3, H, W] -> the AR's tokens [B, V, T] (a Prologue tokenizer's: [prologue] [EOS] [visual])."""
    with torch.inference_mode():
        encoded = vqvae.encode(views.flatten(0, 1))
        tokens = prior_sequence(getattr(encoded, "prologue_indices", None), encoded.indices,
                                vqvae.config.codebook_size, getattr(vqvae.config, "prologue_codebook_size", 0))
    return tokens.view(*views.shape[:2], -1).clone()  # a normal tensor, usable by autograd


def main(args: ARTrainingArguments) -> None:
    output_dir = Path(args.output_dir)
    claim_output_dir(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    codes_info = read_codes_info(args.train_codes, args.vqvae) if args.train_codes is not None else None
    if codes_info is not None:  # the tokenizer that made the codes (checked once loaded), at their size
        args.vqvae = args.vqvae or codes_info["vqvae"]
        if codes_info["image_size"] != args.image_size:
            raise ValueError(f"--image_size {args.image_size} differs from the {codes_info['image_size']} px of "
                             f"--train_codes")
    elif args.vqvae is None:  # train a tokenizer first (resumable), in these processes, with its own Accelerator
        args.vqvae = str(output_dir / "tokenizer" / "vqvae")
        if not Path(args.vqvae).is_dir():
            train_tokenizer.main(parse_arguments(TokenizerTrainingArguments, [
                "--config", args.tokenizer_config, "--output_dir", str(output_dir / "tokenizer")]), end_training=False)

    accelerator = make_accelerator(args, output_dir)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    vqvae = load_pretrained(args.vqvae, "--vqvae").to(accelerator.device).eval().requires_grad_(False)
    if vqvae.config.model_type not in ("llamagen_vqvae", "prologue_tokenizer"):
        raise ValueError(f"--vqvae holds a {vqvae.config.model_type}: train.py trains token-wise models over LlamaGen "
                         f"or Prologue tokenizers (scale-wise models: train_scalewise.py)")

    # Data: this process's share of the stream; never passed through accelerator.prepare (no double split)
    dataset, names = load_data(args, accelerator)
    id2label = class_labels(names, args.num_classes)
    num_classes = len(id2label)
    stream = ExampleStream(dataset, build_transform(args, num_classes), args.train_batch_size, args.seed,
                           accelerator.process_index, accelerator.num_processes, args.shuffle_buffer,
                           args.shuffle_input_shards, args.max_skipped_in_a_row, args.data_source)

    # Student, teacher, objective
    grid_size = args.image_size // vqvae.config.downsample_factor
    student = build_model(args, vqvae, num_classes)
    args.check_model(student.config, vqvae.config)
    if args.train_codes is not None:  # a Prologue tokenizer's codes are [prologue] [EOS] [visual] sequences
        features = dataset.features or {}
        length = features["codes"].shape[1] if "codes" in features else len(next(iter(dataset))["codes"][0])
        if length != student.config.block_size:
            raise ValueError(f"--train_codes hold sequences of {length} tokens, but a {student.config.model_type} model "
                             f"over this --vqvae models {student.config.block_size} (codes of another tokenizer?)")
        if codes_info is not None:
            check_codes_tokenizer(f"--train_codes {args.train_codes} (codes_info.json)", codes_info, args.vqvae,
                                  tokenizer_digest(vqvae))
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    student.train()
    objective = STARObjective(
        student.config.hidden_size, args.ar_weight, args.mim_weight, args.step_weight, args.view_weight,
        args.mask_ratio, args.contrastive_layer or student.config.num_hidden_layers // 2, args.num_positions,
        args.temperature, args.projector_hidden_size, args.ar_pass)
    teacher = None
    if objective.uses_teacher:  # the EMA copy: no dropout, no gradients, outside the exported model
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("the EMA teacher needs the full student weights on every process; FSDP shards them. "
                             "Use DDP for ST-AR, or FSDP with --mim_weight 0 --step_weight 0 --view_weight 0")
        teacher = copy.deepcopy(student).to(accelerator.device).eval().requires_grad_(False)

    # Optimiser: AdamW, weight decay on tensors with ndim >= 2 (LlamaGen), lr per 256 images when scale_lr
    parameters = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer, lr_scheduler, learning_rate = make_optimizer(
        args, accelerator, [p for p in parameters if p.ndim >= 2], [p for p in parameters if p.ndim < 2])
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    if objective.projector is not None:  # DDP refuses a module without trainable parameters
        objective = accelerator.prepare(objective)
    state = TrainingState(vars(args), **({"teacher": teacher} if teacher is not None else {}))

    checkpoint = resume_run(accelerator, output_dir, args.resume_from_checkpoint, state, stream, args.RESUME_FIXED)
    if checkpoint is not None:
        logger.info(f"resumed from {checkpoint} at step {state.global_step}")
    if accelerator.is_main_process:
        accelerator.init_trackers("st-ar", config={k: v for k, v in vars(args).items() if not isinstance(v, dict)})
    uploader = (BackgroundUploader(args.hub_model_id or output_dir.name, args.hub_private_repo, args.upload_retries)
                if args.push_to_hub and accelerator.is_main_process else None)

    num_parameters = sum(p.numel() for p in accelerator.unwrap_model(student).parameters())
    logger.info("***** Running training *****")
    weights = accelerator.unwrap_model(objective).weights
    logger.info(f"  objective: {'ST-AR' if args.self_guided else 'next-token (LlamaGen baseline)'}, weights {weights}")
    logger.info(f"  model: {num_parameters:,} parameters, {grid_size}x{grid_size} tokens, {num_classes} classes")
    logger.info(f"  batch: {args.train_batch_size} images x {args.num_views} views per process, global {global_batch} images")
    logger.info(f"  steps: {args.max_train_steps} (from {state.global_step}), lr {learning_rate:g}")

    # Train!
    batches = iter(stream)
    window = LogWindow(args.gradient_accumulation_steps)
    bar = tqdm(total=args.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    while state.global_step < args.max_train_steps:
        for _ in range(args.gradient_accumulation_steps):
            batch = next(batches)
            views, labels = batch["views"].to(accelerator.device), batch["label"].to(accelerator.device)
            tokens = tokenize(vqvae, views) if args.train_codes is None else views  # [B, V, T]
            with accelerator.accumulate(student, objective), accelerator.autocast():
                terms = objective(student, teacher, tokens, labels, gather=accelerator.gather if
                                  accelerator.num_processes > 1 else None,
                                  image_offset=accelerator.process_index * tokens.shape[0])
                accelerator.backward(terms["loss"])  # a non-finite micro-batch's gradients are dropped below
            window.add(terms, tokens.shape[0])
        if (bad_terms := window.end_step(accelerator)) is not None:
            skip_step(state, optimizer, bad_terms, args.max_nonfinite_steps)
            continue
        grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if teacher is not None:
            update_ema(teacher, student, args.ema_decay)
        state.global_step += 1
        state.nonfinite_in_a_row = 0
        bar.update(1)

        step = state.global_step
        if is_due(step, args.log_steps, args.max_train_steps):
            logs = window.logs(accelerator)
            used = torch.bincount(tokens.flatten(), minlength=accelerator.unwrap_model(student).config.vocab_size).float()
            logs.update({
                "grad_norm": float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
                "throughput/tokens_per_s": logs["throughput/images_per_s"] * args.num_views * tokens.shape[-1],
                "tokens/batch_code_usage": (used > 0).float().mean().item(),
                "tokens/batch_perplexity": torch.exp(torch.special.entr(used / used.sum()).sum()).item(),
                **data_counts(accelerator, stream),
            })
            log_metrics(accelerator, logs, step, output_dir / "metrics.jsonl")
            bar.set_postfix(loss=f"{logs['loss/loss']:.4f}")
            window.reset()
        after_step(args, accelerator, state, stream, student, vqvae, id2label, uploader, output_dir)

    # Export the student (not the teacher, projector or optimiser) as a STARPipeline
    export_pipeline(args, accelerator, student, vqvae, id2label, output_dir / "pipeline", stream, uploader, state.global_step)
    if args.sample_accuracy_per_class and accelerator.is_main_process:
        results = report_sample_accuracy(args, accelerator.unwrap_model(student), vqvae, id2label, output_dir)
        per_class = ", ".join(f"{id2label[c]} {a:.0%}" for c, a in results["per_class"].items())
        print(f"sample accuracy {results['sample_accuracy']:.1%} at guidance {args.validation_guidance_scale}, top-p "
              f"{args.validation_top_p} ({per_class}) by a digit CNN reading {results['classifier_held_out_accuracy']:.1%} "
              f"of the test digits; grid: {output_dir / 'samples' / f'samples-{state.global_step:07d}.png'}", flush=True)
    if uploader is not None:
        uploader.wait()
    finish_run(accelerator)



if __name__ == "__main__":
    run_script(main, ARTrainingArguments, default_config=str(DEFAULT_CONFIG))
