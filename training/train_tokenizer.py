#!/usr/bin/env python
"""Train a VQ tokenizer with Accelerate over `datasets` streaming shards: LlamaGen's `LlamaGenVQVAE` (also FlexVAR's
tokenizer, which quantises each scale's area-downsampled latent with it), VAR's multi-scale residual `VARVQVAE`, or
Prologue's `PrologueVQVAE` with its joint AR prior (phase 1; `st_ar_hf.training.prologue`).

    accelerate launch training/train_tokenizer.py --config training/configs/tokenizer_default.yaml
    accelerate launch training/train_tokenizer.py --config training/configs/vq16.yaml --dataset ILSVRC/imagenet-1k \
        --output_dir runs/vq16 --perceptual_vgg16 vgg16.pth --perceptual_lpips vgg.pth

LlamaGen's objective: reconstruction (L2 or L1) + perceptual (LPIPS-VGG, when its weights are given) + codebook +
commitment (+ entropy) + disc_weight * hinge (or vanilla) generator loss from `disc_start` on, with a PatchGAN
discriminator trained by its own Adam (LeCam and R1 optional, as Prologue's); Adam (0.9, 0.95) for the tokenizer,
optional EMA. Prologue adds the prior's CE (sub-step A, its weights constant) and the prior's own AdamW step on the
detached codes (sub-step B, beside the discriminator's); the prologue's code usage per position is logged and the
prior exported to `<output_dir>/prior`. With `--train_visual false` (Prologue-Post) only the prior's sub-steps train
the prologue encoder.
Writes `checkpoint-<step>` folders, reconstruction grids (inputs above outputs), held-out PSNR / SSIM / codebook
usage, and the tokenizer in `<output_dir>/vqvae`, which `train.py`, `extract_codes.py` and `STARPipeline` accept.
"""

import copy
import json
import shutil
import time
from pathlib import Path

import PIL.Image
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from transformers import AutoModel

from st_ar_hf import (
    LlamaGenVQVAE, LlamaGenVQVAEConfig, PrologueVQVAE, PrologueVQVAEConfig, VARVQVAE, VARVQVAEConfig,
)
from st_ar_hf.models.llamagen import LLAMAGEN_VQ_PRESETS
from st_ar_hf.models.prologue import PROLOGUE_TOKENIZER_PRESETS
from st_ar_hf.hub import BackgroundUploader
from st_ar_hf.metrics import psnr, ssim
from st_ar_hf.model_cards import tokenizer_model_card
from st_ar_hf.training.arguments import TokenizerTrainingArguments, run_script
from st_ar_hf.training.checkpointing import TrainingState, check_weights, claim_output_dir, resume_run, save_checkpoint
from st_ar_hf.training.data import (
    ExampleStream, center_crops, check_columns, decode_image, load_image_dataset, load_stream, random_crop_arr,
    to_pixel_values,
)
from st_ar_hf.training.losses import update_ema
from st_ar_hf.training.prologue import PrologueCodeCounts, ProloguePriorObjective, make_prior
from st_ar_hf.training.loop import make_accelerator, nonfinite_terms, skip_step
from st_ar_hf.training.tracking import finish_run, log_image, log_metrics, make_grid
from st_ar_hf.training.vq_losses import GAN_LOSSES, LPIPS, LeCamRegularizer, PatchGANDiscriminator, r1_penalty

logger = get_logger(__name__)
RECONSTRUCTION_LOSSES = {"l2": F.mse_loss, "l1": F.l1_loss,
                         "l1+l2": lambda output, target: F.l1_loss(output, target) + F.mse_loss(output, target)}


def build_transform(args: TokenizerTrainingArguments):
    def transform(example, rng, counts):
        image = decode_image(example[args.image_column])
        if image is None:
            return None
        if min(image.size) < args.image_size:
            counts["upscaled"] += 1
        image = random_crop_arr(image, args.image_size, rng, args.min_crop_fraction)
        if args.random_flip and rng.random() < 0.5:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        return {"pixel_values": to_pixel_values([image])[0]}

    return transform


def build_model(args: TokenizerTrainingArguments):
    if args.model in LLAMAGEN_VQ_PRESETS:
        return LlamaGenVQVAE(LlamaGenVQVAEConfig(**{"ch_mult": LLAMAGEN_VQ_PRESETS[args.model], **(args.model_config or {})}))
    if args.model == "var-vqvae":
        return VARVQVAE(VARVQVAEConfig(**(args.model_config or {})))
    if args.model in PROLOGUE_TOKENIZER_PRESETS:
        return PrologueVQVAE(PrologueVQVAEConfig.from_preset(args.model, **(args.model_config or {})))
    return AutoModel.from_pretrained(args.model, **(args.model_config or {}))


def quantizer_terms(out) -> dict[str, torch.Tensor]:
    """LlamaGen's codebook, commitment and entropy terms, or VAR's VQ loss (both terms, averaged over the scales)."""
    if hasattr(out, "vq_loss"):
        return {"vq": out.vq_loss}
    terms = {"codebook": out.codebook_loss, "commitment": out.commitment_loss}
    return terms | ({"entropy": out.entropy_loss} if hasattr(out, "entropy_loss") else {})


def used_codes(out) -> torch.LongTensor:
    """Every code id of the batch, flat (VAR's are a list, one map per scale)."""
    indices = out.indices if isinstance(out.indices, list) else [out.indices]
    return torch.cat([i.flatten() for i in indices])


def load_eval_pixels(args: TokenizerTrainingArguments) -> torch.Tensor | None:
    """Centre crops [N, 3, H, W] of the first `eval_images` held-out images (the embedded dataset's test shard)."""
    files = args.eval_data_files or (args.embedded_dataset_dir and str(Path(args.embedded_dataset_dir) / "test-*.parquet"))
    if not args.eval_steps or files is None:
        return None
    crops = center_crops(load_stream(data_files=files).decode(False), args.image_column, args.image_size)
    return to_pixel_values([image for _, (image, _) in zip(range(args.eval_images), crops)])


@torch.no_grad()
def evaluate(vqvae, pixel_values: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Held-out PSNR and SSIM of the reconstructions (images in [0, 1]) and the share of codes in use."""
    scores, used = [], torch.zeros(vqvae.config.codebook_size, dtype=torch.bool)
    for batch in pixel_values.split(batch_size):
        batch = batch.to(vqvae.device)
        out = vqvae(batch)
        reference, reconstruction = batch.add(1).div(2), out.reconstruction.clamp(-1, 1).add(1).div(2)
        scores.append(torch.stack([psnr(reconstruction, reference), ssim(reconstruction, reference)]))
        used[used_codes(out).unique().cpu()] = True
    psnr_mean, ssim_mean = torch.cat(scores, dim=1).mean(1).tolist()
    return {"eval/psnr": psnr_mean, "eval/ssim": ssim_mean, "eval/codebook_usage": used.float().mean().item()}


def main(args: TokenizerTrainingArguments, end_training: bool = True) -> Path:
    """Trains and returns the folder of the exported tokenizer. `end_training=False` leaves the process group up
    (for `train.py`, which trains a tokenizer first in the same processes)."""
    output_dir = Path(args.output_dir)
    claim_output_dir(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(args, output_dir)
    set_seed(args.seed)

    # Data
    dataset = load_image_dataset(args, accelerator.main_process_first)
    check_columns(dataset, image_column=args.image_column)
    stream = ExampleStream(dataset.decode(False), build_transform(args), args.train_batch_size, args.seed,
                           accelerator.process_index, accelerator.num_processes, args.shuffle_buffer,
                           args.shuffle_input_shards, args.max_skipped_in_a_row, args.data_source)
    eval_pixels = load_eval_pixels(args) if accelerator.is_main_process else None

    # Models: the tokenizer (and its EMA), the discriminator, the perceptual network
    vqvae = build_model(args)
    args.check_model(vqvae.config)
    vqvae.train()
    if not args.train_visual:  # Prologue-Post: only the prologue encoder and quantiser learn
        vqvae.requires_grad_(False)
        vqvae.prologue_encoder.requires_grad_(True)
        vqvae.prologue_quantizer.requires_grad_(True)
    ema = None
    if args.ema_decay is not None:
        ema = copy.deepcopy(vqvae).to(accelerator.device).eval().requires_grad_(False)
    perceptual = None
    if args.train_visual and args.perceptual_weight > 0 and args.perceptual_vgg16 is not None:
        try:
            perceptual = LPIPS.from_files(args.perceptual_vgg16, args.perceptual_lpips).to(accelerator.device)
        except Exception:  # a file that does not load is named; other failures keep their error
            check_weights(Path(args.perceptual_vgg16), "--perceptual_vgg16")
            check_weights(Path(args.perceptual_lpips), "--perceptual_lpips")
            raise
    elif args.train_visual and args.perceptual_weight > 0:
        logger.warning("no perceptual network (--perceptual_vgg16 and --perceptual_lpips not given): training "
                       "without the perceptual loss")
    optimizer = torch.optim.AdamW([p for p in vqvae.parameters() if p.requires_grad], lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    vqvae, optimizer, lr_scheduler = accelerator.prepare(vqvae, optimizer, lr_scheduler)
    discriminator = None
    if args.uses_discriminator:
        discriminator = PatchGANDiscriminator(base_channels=args.disc_base_channels, num_layers=args.disc_layers)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_learning_rate or args.learning_rate,
                                          betas=(args.adam_beta1, args.adam_beta2))
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    generator_loss, discriminator_loss = GAN_LOSSES[args.disc_loss]
    lecam = LeCamRegularizer().to(accelerator.device) if discriminator is not None and args.disc_lecam_weight > 0 else None
    prior = prior_ema = None
    if args.uses_prior:  # Prologue's joint prior, its AdamW and EMA, the objective, the prologue's code counts
        tokenizer_config = accelerator.unwrap_model(vqvae).config
        prior, prior_optimizer, prior_ema = make_prior(args, accelerator, tokenizer_config)
        prior_objective = ProloguePriorObjective(args.prior_prologue_weight, args.prior_visual_weight,
                                                 args.prior_visual_dropout)
        prologue_counts = PrologueCodeCounts(tokenizer_config.num_prologue_tokens, tokenizer_config.prologue_codebook_size)
    state = TrainingState(vars(args), **{name: module for name, module in
                                         (("ema", ema), ("prior_ema", prior_ema), ("lecam", lecam)) if module is not None})
    resume_run(accelerator, output_dir, args.resume_from_checkpoint, state, stream, args.RESUME_FIXED)
    if accelerator.is_main_process:
        accelerator.init_trackers("st-ar-tokenizer", config={k: v for k, v in vars(args).items() if not isinstance(v, dict)})
    codebook_size = accelerator.unwrap_model(vqvae).config.codebook_size

    logger.info("***** Running tokenizer training *****")
    logger.info(f"  model: {sum(p.numel() for p in vqvae.parameters()):,} parameters, codebook {codebook_size}")
    logger.info(f"  batch: {args.train_batch_size} per process, steps {args.max_train_steps} (from {state.global_step})")
    logger.info(f"  perceptual: {'LPIPS-VGG' if perceptual is not None else 'off'}; discriminator: "
                f"{f'from step {args.disc_start}' if discriminator is not None else 'off'}")

    # Train!
    batches = iter(stream)
    totals, code_counts, step_start, images_seen = {}, torch.zeros(codebook_size), time.perf_counter(), 0
    bar = tqdm(total=args.max_train_steps, initial=state.global_step, disable=not accelerator.is_local_main_process,
               desc="tokenizer")
    while state.global_step < args.max_train_steps:
        adversarial = discriminator is not None and state.global_step >= args.disc_start
        bad_terms = None
        for _ in range(args.gradient_accumulation_steps):
            pixel_values = next(batches)["pixel_values"].to(accelerator.device)
            with accelerator.accumulate(vqvae), accelerator.autocast():
                out = vqvae(pixel_values) if args.train_visual else vqvae(pixel_values, decode=False)
                terms = {}
                if args.train_visual:
                    reconstruction = out.reconstruction.float()
                    distance = RECONSTRUCTION_LOSSES[args.reconstruction_loss]
                    terms = {"reconstruction": args.reconstruction_weight * distance(reconstruction, pixel_values),
                             **quantizer_terms(out)}
                    if perceptual is not None:
                        terms["perceptual"] = args.perceptual_weight * perceptual(reconstruction, pixel_values).mean()
                    if adversarial:
                        terms["generator_adversarial"] = args.disc_weight * generator_loss(discriminator(reconstruction))
                if prior is not None:  # sub-step A: the prior's CE reaches the encoder through the prologue one-hot
                    terms |= prior_objective.encoder_terms(accelerator.unwrap_model(prior), out.prologue_indices,
                                                           out.indices, out.prologue_one_hot)
                terms["loss"] = sum(terms.values())
                bad_terms = nonfinite_terms(terms, accelerator)  # every process skips the step together
                if bad_terms is not None:
                    break
                accelerator.backward(terms["loss"])
            if adversarial:  # the discriminator's own step on real images and detached reconstructions
                disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator loss left in it
                with_r1 = args.disc_r1_weight > 0 and (state.global_step + 1) % args.disc_r1_interval == 0
                real = pixel_values.detach().requires_grad_(with_r1)
                with accelerator.autocast():
                    real_logits, fake_logits = discriminator(torch.cat([real, reconstruction.detach()])).chunk(2)
                    disc_terms = {"discriminator": discriminator_loss(real_logits, fake_logits)}
                    if lecam is not None:
                        disc_terms["lecam"] = args.disc_lecam_weight * lecam(real_logits, fake_logits)
                    if with_r1:  # in the same forward as the loss (one DDP forward per backward)
                        disc_terms["r1"] = args.disc_r1_weight * r1_penalty(real_logits, real)
                disc_terms = {name: args.disc_weight * value for name, value in disc_terms.items()}
                accelerator.backward(sum(disc_terms.values()))
                terms |= disc_terms
            if prior is not None:  # sub-step B: the prior learns the detached codes
                with accelerator.autocast():
                    terms |= prior_objective.prior_terms(prior, out.prologue_indices, out.indices)
                accelerator.backward(terms["prior"])
                prologue_counts.add(out.prologue_indices)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach() / args.gradient_accumulation_steps
            code_counts += torch.bincount(used_codes(out).cpu(), minlength=codebook_size)
            images_seen += pixel_values.shape[0]
        if bad_terms is not None:
            skip_step(state, optimizer, bad_terms, args.max_nonfinite_steps)
            continue
        grad_norm = accelerator.clip_grad_norm_(vqvae.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if adversarial:
            accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)
        if prior is not None:
            accelerator.clip_grad_norm_(prior.parameters(), args.max_grad_norm)
            prior_optimizer.step()
            prior_optimizer.zero_grad(set_to_none=True)
            if prior_ema is not None:
                update_ema(prior_ema, prior, args.prior_ema_decay)
        if ema is not None:
            update_ema(ema, vqvae, args.ema_decay)
        state.global_step += 1
        state.nonfinite_in_a_row = 0
        bar.update(1)

        step = state.global_step
        if step % args.log_steps == 0 or step == args.max_train_steps:
            num_steps = args.log_steps if step % args.log_steps == 0 else step % args.log_steps
            code_counts = accelerator.reduce(code_counts.to(accelerator.device), "sum").cpu()
            probabilities = code_counts / code_counts.sum()
            logs = {f"loss/{name}": accelerator.reduce(value, "mean").item() / num_steps for name, value in totals.items()}
            logs.update({
                "grad_norm": float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
                "codebook/usage": (code_counts > 0).float().mean().item(),  # over the log window
                "codebook/perplexity": torch.exp(torch.special.entr(probabilities).sum()).item(),
                "throughput/images_per_s": images_seen * accelerator.num_processes / (time.perf_counter() - step_start),
                "data/skipped_images": stream.counts["skipped"], "data/upscaled_images": stream.counts["upscaled"],
            })
            if prior is not None:
                logs.update(prologue_counts.logs(accelerator))
            if eval_pixels is not None and (step % args.eval_steps == 0 or step == args.max_train_steps):
                logs.update(evaluate((ema or accelerator.unwrap_model(vqvae)).eval(), eval_pixels, args.train_batch_size))
                vqvae.train()
            log_metrics(accelerator, logs, step, output_dir / "metrics.jsonl")
            bar.set_postfix(loss=f"{logs['loss/loss']:.4f}", usage=f"{logs['codebook/usage']:.2f}")
            totals, code_counts, step_start, images_seen = {}, torch.zeros(codebook_size), time.perf_counter(), 0
        if step % args.checkpointing_steps == 0 or step == args.max_train_steps:
            save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit, stream)
        if accelerator.is_main_process and (
                (args.validation_steps and step % args.validation_steps == 0) or step == args.max_train_steps):
            shown = pixel_values[: args.validation_images]
            with torch.no_grad():
                reconstruction = (ema or accelerator.unwrap_model(vqvae)).eval()(shown).reconstruction
            vqvae.train()
            pairs = torch.cat([shown, reconstruction.clamp(-1, 1)]).float().add(1).div(2)  # inputs above outputs
            grid = make_grid(pairs.permute(0, 2, 3, 1).cpu().numpy(), columns=shown.shape[0],
                             scale=max(1, 64 // args.image_size))
            log_image(accelerator, "reconstructions", grid, step, output_dir / "samples")

    # Export the tokenizer (the EMA weights when kept; complete folders only: written aside, then renamed)
    final = output_dir / "vqvae"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial = output_dir / "vqvae.partial"
        model = (ema or accelerator.unwrap_model(vqvae)).eval()
        model.save_pretrained(partial)
        summary = {"steps": args.max_train_steps, "arguments": vars(args)}  # `st-ar push` renders the card again from it
        repo_id = (args.hub_model_id or output_dir.name) if args.push_to_hub else None
        tokenizer_model_card(model, training=summary, repo_id=repo_id).save(partial / "README.md")
        (partial / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if prior is not None:  # the joint prior (Prologue-OneStage samples with it); its EMA when kept
            (prior_ema or accelerator.unwrap_model(prior)).save_pretrained(output_dir / "prior")
        if args.push_to_hub:
            uploader = BackgroundUploader(repo_id, args.hub_private_repo, args.upload_retries)
            uploader.upload(final, commit_message=f"tokenizer of {args.output_dir}")
            uploader.wait()
    accelerator.wait_for_everyone()
    finish_run(accelerator, keep_process_group=not end_training)
    return final


if __name__ == "__main__":
    run_script(main, TokenizerTrainingArguments)
