#!/usr/bin/env python
"""Train a scale-wise transformer (VAR, FlexVAR) by teacher forcing, or post-train one with SAR (arXiv 2512.06421,
`--sigma > 0`), over `datasets` streaming shards with Accelerate.

    accelerate launch training/train_scalewise.py --config training/configs/sar_embedded.yaml   # the embedded demo
    accelerate launch --num_processes 8 training/train_scalewise.py --config training/configs/flexvar_d16.yaml \
        --dataset ILSVRC/imagenet-1k
    accelerate launch --num_processes 8 training/train_scalewise.py --config training/configs/sar_d16.yaml \
        --model converted/flexvar-d16 --dataset ILSVRC/imagenet-1k --push_to_hub --hub_model_id org/sar-d16

Images are tokenised on the fly by the frozen tokenizer (VAR's residual VQVAE, or FlexVAR's VQ at each scale of the
step's schedule). Writes `checkpoint-<step>` folders, sample grids, and a `STARPipeline` in `<output_dir>/pipeline`.
"""

from pathlib import Path

import PIL.Image
import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModel

import train_tokenizer
from st_ar_hf import FlexVARConfig, FlexVARForImageGeneration, VARConfig, VARForImageGeneration
from st_ar_hf.hub import BackgroundUploader
from st_ar_hf.training.arguments import (
    ScaleWiseTrainingArguments, TokenizerTrainingArguments, parse_arguments, run_script,
)
from st_ar_hf.training.checkpointing import TrainingState, claim_output_dir, resume_run
from st_ar_hf.training.data import (
    ExampleStream, check_columns, class_names, decode_image, load_image_dataset, to_pixel_values,
)
from st_ar_hf.training.loop import (
    LogWindow, after_step, class_labels, data_counts, export_pipeline, is_due, label_tensor, load_pretrained,
    make_accelerator, make_optimizer, skip_step,
)
from st_ar_hf.training.sar import ScaleWiseObjective, encode_scales, flexvar_schedule
from st_ar_hf.training.tracking import finish_run, log_metrics

logger = get_logger(__name__)
MODEL_CLASSES = {"var": (VARConfig, VARForImageGeneration), "flexvar": (FlexVARConfig, FlexVARForImageGeneration)}
NO_DECAY = ("position_embeddings", "position_grid", "scale_embeddings", "start_embedding", "query_log_scale")


def load_tokenizer(args: ScaleWiseTrainingArguments, output_dir: Path):
    """--vqvae, the tokenizer of the pipeline given as --model, or one trained first with --tokenizer_config."""
    if args.vqvae is None and (Path(args.model) / "model_index.json").is_file():
        args.vqvae = str(Path(args.model) / "vqvae")
    elif args.vqvae is None and args.tokenizer_config is not None:  # resumable, in these processes
        args.vqvae = str(output_dir / "tokenizer" / "vqvae")
        if not Path(args.vqvae).is_dir():
            train_tokenizer.main(parse_arguments(TokenizerTrainingArguments, [
                "--config", args.tokenizer_config, "--output_dir", str(output_dir / "tokenizer")]), end_training=False)
    elif args.vqvae is None:
        raise ValueError("training needs a tokenizer: --vqvae, a pipeline folder as --model, or --tokenizer_config")
    return load_pretrained(args.vqvae, "--vqvae")


def build_model(args: ScaleWiseTrainingArguments, vqvae, num_classes: int):
    """A preset from scratch, sized for the tokenizer, or a pretrained transformer (a pipeline's or a folder)."""
    overrides = args.model_config or {}
    if args.is_preset:
        family, depth = args.model.split("-", 1)
        config_class, model_class = MODEL_CLASSES[family]
        config = config_class.from_preset(depth, **{
            "vocab_size": vqvae.config.codebook_size, "codebook_embed_dim": vqvae.config.codebook_embed_dim,
            "num_classes": num_classes, **overrides})
        return model_class._from_config(config, attn_implementation=args.attn_implementation)
    folder = Path(args.model) / "transformer" if (Path(args.model) / "model_index.json").is_file() else Path(args.model)
    model = AutoModel.from_pretrained(folder, attn_implementation=args.attn_implementation, **overrides)
    if model.config.model_type not in MODEL_CLASSES:
        raise ValueError(f"--model {args.model}: a {model.config.model_type} model, not a scale-wise (var, flexvar) one")
    return model


def weight_decay_groups(model) -> tuple[list, list]:
    """VAR's split: (decayed, not decayed), no decay for biases, 1-d tensors, positions, the start token, the
    attention scale."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            skip = parameter.ndim < 2 or name.endswith("bias") or any(key in name for key in NO_DECAY)
            (not_decayed if skip else decayed).append(parameter)
    return decayed, not_decayed


def build_transform(args: ScaleWiseTrainingArguments, num_classes: int):
    """raw example -> {"label": [], "pixel_values": [3, H, W]}: VAR's short side to crop_ratio * size, a random crop."""
    resized = round(args.crop_ratio * args.image_size)

    def transform(example, rng, counts):
        image = decode_image(example[args.image_column])
        if image is None:
            return None
        if min(image.size) < args.image_size:
            counts["upscaled"] += 1
        scale = resized / min(image.size)
        image = image.resize((max(resized, round(image.width * scale)), max(resized, round(image.height * scale))),
                             PIL.Image.LANCZOS)
        left, top = rng.integers(0, image.width - args.image_size + 1), rng.integers(0, image.height - args.image_size + 1)
        image = image.crop((left, top, left + args.image_size, top + args.image_size))
        if args.random_flip and rng.random() < 0.5:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        return {"label": label_tensor(example, args.label_column, num_classes), "pixel_values": to_pixel_values([image])[0]}

    return transform


def main(args: ScaleWiseTrainingArguments, end_training: bool = True) -> None:
    """`end_training=False` leaves the process group up for a second stage in these processes."""
    output_dir = Path(args.output_dir)
    claim_output_dir(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.pretrain_config is not None and not Path(args.model).is_dir():  # pre-train first (resumable)
        main(parse_arguments(ScaleWiseTrainingArguments, ["--config", args.pretrain_config]), end_training=False)
        if not Path(args.model).is_dir():
            raise ValueError(f"--pretrain_config {args.pretrain_config} did not write --model {args.model}")
    vqvae = load_tokenizer(args, output_dir)
    accelerator = make_accelerator(args, output_dir)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    vqvae = vqvae.to(accelerator.device).eval().requires_grad_(False)

    # Data: this process's share of the stream; never passed through accelerator.prepare (no double split)
    dataset = load_image_dataset(args, accelerator.main_process_first)
    check_columns(dataset, label_column=args.label_column, image_column=args.image_column)
    names = class_names(dataset, args.label_column)

    # Model and objective
    model = build_model(args, vqvae, args.num_classes or (len(names) if names else 0))
    config = model.config
    if names is not None and len(names) > config.num_classes:
        raise ValueError(f"the dataset has {len(names)} classes but the model --model {args.model} has {config.num_classes}")
    id2label = class_labels(names, config.num_classes)
    args.check_model(config, vqvae.config)
    stream = ExampleStream(dataset.decode(False), build_transform(args, config.num_classes), args.train_batch_size,
                           args.seed, accelerator.process_index, accelerator.num_processes, args.shuffle_buffer,
                           args.shuffle_input_shards, args.max_skipped_in_a_row, args.data_source)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    objective = ScaleWiseObjective(config, args.sigma, args.rollout_scales, args.rollout_targets, args.label_smoothing,
                                   args.rollout_sampling_settings)

    optimizer, lr_scheduler, learning_rate = make_optimizer(args, accelerator, *weight_decay_groups(model))
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state = TrainingState(vars(args))
    checkpoint = resume_run(accelerator, output_dir, args.resume_from_checkpoint, state, stream, args.RESUME_FIXED)
    if checkpoint is not None:
        logger.info(f"resumed from {checkpoint} at step {state.global_step}")
    if accelerator.is_main_process:
        accelerator.init_trackers("st-ar-scalewise", config={k: v for k, v in vars(args).items() if not isinstance(v, dict)})
    uploader = (BackgroundUploader(args.hub_model_id or output_dir.name, args.hub_private_repo, args.upload_retries)
                if args.push_to_hub and accelerator.is_main_process else None)

    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running scale-wise training *****")
    logger.info(f"  objective: {f'SAR, sigma {args.sigma}, rollout {args.rollout_scales}' if args.sigma else 'teacher forcing'}")
    logger.info(f"  model: {config.model_type}, {accelerator.unwrap_model(model).num_parameters():,} parameters, "
                f"schedule {config.patch_nums} ({'random per step' if args.random_scales else 'fixed'})")
    logger.info(f"  batch: {args.train_batch_size} images per process, global {global_batch}")
    logger.info(f"  steps: {args.max_train_steps} (from {state.global_step}), peak lr {learning_rate:g}")

    # Train!
    batches = iter(stream)
    window = LogWindow(args.gradient_accumulation_steps)
    bar = tqdm(total=args.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    while state.global_step < args.max_train_steps:
        for _ in range(args.gradient_accumulation_steps):
            batch = next(batches)
            pixels, labels = batch["pixel_values"].to(accelerator.device), batch["label"].to(accelerator.device)
            scales = flexvar_schedule(config.patch_nums) if args.random_scales else config.patch_nums
            with torch.no_grad():
                maps = encode_scales(vqvae, config.model_type, pixels, scales)
            with accelerator.accumulate(model), accelerator.autocast():
                terms = objective(model, vqvae, maps, labels)
                accelerator.backward(terms["loss"])  # a non-finite micro-batch's gradients are dropped below
            window.add(terms, pixels.shape[0])
        if (bad_terms := window.end_step(accelerator)) is not None:
            skip_step(state, optimizer, bad_terms, args.max_nonfinite_steps)
            continue
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.nonfinite_in_a_row = 0
        bar.update(1)

        step = state.global_step
        if is_due(step, args.log_steps, args.max_train_steps):
            logs = {**window.logs(accelerator), "grad_norm": float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
                    **data_counts(accelerator, stream)}
            log_metrics(accelerator, logs, step, output_dir / "metrics.jsonl")
            bar.set_postfix(loss=f"{logs['loss/loss']:.4f}")
            window.reset()
        after_step(args, accelerator, state, stream, model, vqvae, id2label, uploader, output_dir)

    export_pipeline(args, accelerator, model, vqvae, id2label, output_dir / "pipeline", stream, uploader, state.global_step)
    if uploader is not None:
        uploader.wait()
    finish_run(accelerator, keep_process_group=not end_training)



if __name__ == "__main__":
    run_script(main, ScaleWiseTrainingArguments)
