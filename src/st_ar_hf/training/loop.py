"""The pieces every training loop repeats: the Accelerator, AdamW with its schedule, the non-finite-loss guard, the log
window, and the atomic export of a `STARPipeline` with its model card and training summary."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from transformers import AutoModel

from .checkpointing import name_unreadable_weights, save_checkpoint
from .tracking import log_image, make_grid

logger = get_logger(__name__)


def make_accelerator(args, output_dir: Path) -> Accelerator:
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )


def load_pretrained(folder: str, argument: str, **kwargs):
    """`AutoModel.from_pretrained(folder, **kwargs)`; when it fails on a local folder with a weights file that does not
    load, a one-line ValueError naming `argument` and the file."""
    try:
        return AutoModel.from_pretrained(folder, **kwargs)
    except Exception:
        if Path(folder).is_dir():
            name_unreadable_weights(Path(folder), argument)
        raise


def var_lin0_factor(step: int, warmup_steps: int, total_steps: int, start_ratio: float, end_ratio: float) -> float:
    """VAR's `lin0` schedule (its `lr_wd_annealing`), as a factor of the peak learning rate at `step` of a schedule of
    `total_steps`: a linear warm-up from `start_ratio` over `warmup_steps`, the peak for 5% of the rest, then a linear
    decay to `end_ratio` at the last step."""
    if step < warmup_steps:
        return start_ratio + (1 - start_ratio) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - 1 - warmup_steps, 1), 1.0)
    if progress < 0.05:
        return 1.0
    return end_ratio + (1 - end_ratio) * (1 - progress) / 0.95


def make_optimizer(args, accelerator, decayed: list, not_decayed: list):
    """AdamW over two parameter groups (weight decay on `decayed` only) and its learning-rate schedule: a diffusers
    scheduler by name, or VAR's `lin0` (`--lr_scheduler lin0`), which may start part-way into a longer schedule
    (`--lr_schedule_offset` of `--lr_schedule_total` steps), as a post-training continues its pre-training's decay.
    Returns (optimizer, scheduler, peak learning rate); with `--scale_lr` the rate is per 256 images of global batch."""
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    learning_rate = args.learning_rate * (global_batch / 256 if args.scale_lr else 1)
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": args.adam_weight_decay}, {"params": not_decayed, "weight_decay": 0.0}],
        lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2))
    if args.lr_scheduler == "lin0":
        offset = getattr(args, "lr_schedule_offset", 0)
        total = getattr(args, "lr_schedule_total", None) or offset + args.max_train_steps
        factor = lambda step: var_lin0_factor(  # noqa: E731  (LambdaLR counts every process's step)
            offset + step // accelerator.num_processes, args.lr_warmup_steps, total, args.lr_start_ratio, args.lr_end_ratio)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor), learning_rate
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    return optimizer, scheduler, learning_rate


def nonfinite_terms(terms: dict[str, torch.Tensor], accelerator) -> list[str] | None:
    """The names of the loss terms that are not finite on any process (every process gets the same answer, so all
    skip the step together), or None."""
    finite = accelerator.reduce(torch.stack([v.detach().isfinite().all() for v in terms.values()]).float(), "sum")
    return [name for name, ok in zip(terms, finite.tolist()) if ok < accelerator.num_processes] or None


def skip_step(state, optimizer, bad_terms: list[str], max_nonfinite_steps: int) -> None:
    """Drops the step's gradients and counts it; stops the run after `max_nonfinite_steps` in a row."""
    optimizer.zero_grad(set_to_none=True)
    state.nonfinite_in_a_row += 1
    logger.warning(f"step {state.global_step + 1}: non-finite {bad_terms}, step skipped "
                   f"({state.nonfinite_in_a_row} in a row)", main_process_only=True)
    if state.nonfinite_in_a_row >= max_nonfinite_steps:
        raise RuntimeError(f"stopping at step {state.global_step + 1}: {state.nonfinite_in_a_row} non-finite "
                           f"losses in a row (last: {bad_terms})")


def is_due(step: int, every: int | None, last_step: int) -> bool:
    """Whether a periodic action (logging, checkpoint, samples) runs at `step`: every `every` steps and at the end."""
    return bool(every) and step % every == 0 or step == last_step


class LogWindow:
    """The loss terms and images since the last log: `add` after each micro-batch, `end_step` once per optimizer
    step (its one host sync), `logs` at a log step."""

    def __init__(self, accumulation_steps: int):
        self.accumulation_steps = accumulation_steps
        self.step_terms, self.step_images = {}, 0
        self.reset()

    def reset(self) -> None:
        self.totals, self.images, self.steps, self.start = {}, 0, 0, time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        """One micro-batch's terms (summed as the mean over the step's micro-batches, on the device) and its images."""
        for name, value in terms.items():
            self.step_terms[name] = self.step_terms.get(name, 0.0) + value.detach().float() / self.accumulation_steps
        self.step_images += images

    def end_step(self, accelerator) -> list[str] | None:
        """Closes the step's micro-batches: the names of the terms that were not finite in one of them on any process
        (every process gets the same answer, so all skip the step together), or None, and then the step's terms join
        the window."""
        bad_terms = nonfinite_terms(self.step_terms, accelerator)
        if bad_terms is None:
            for name, value in self.step_terms.items():
                self.totals[name] = self.totals.get(name, 0.0) + value
            self.images += self.step_images
            self.steps += 1
        self.step_terms, self.step_images = {}, 0
        return bad_terms

    def logs(self, accelerator) -> dict[str, float]:
        """`loss/<term>` means over the window's optimizer steps and all processes, and the global images/s."""
        logs = {f"loss/{name}": accelerator.reduce(value, "mean").item() / max(self.steps, 1)
                for name, value in self.totals.items()}
        logs["throughput/images_per_s"] = self.images * accelerator.num_processes / (time.perf_counter() - self.start)
        return logs


def data_counts(accelerator, stream) -> dict[str, float]:
    """The stream's skipped (undecodable) and upscaled images so far, summed over the processes (a collective)."""
    counts = accelerator.reduce(torch.tensor([stream.counts["skipped"], stream.counts["upscaled"]], device=accelerator.device),
                                "sum").tolist()
    return {"data/skipped_images": counts[0], "data/upscaled_images": counts[1]}


def after_step(args, accelerator, state, stream, model, vqvae, id2label: dict, uploader, output_dir: Path) -> None:
    """What follows an optimiser step when it is due: a checkpoint, a sample grid, an intermediate export."""
    step = state.global_step
    if is_due(step, args.checkpointing_steps, args.max_train_steps):
        save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit, stream)
    if accelerator.is_main_process and is_due(step, args.validation_steps, args.max_train_steps):
        grid = sample_grid(args, accelerator.unwrap_model(model), vqvae, id2label)
        log_image(accelerator, "samples", grid, step, output_dir / "samples")
    if args.export_steps and step % args.export_steps == 0 and step < args.max_train_steps:
        export_pipeline(args, accelerator, model, vqvae, id2label, output_dir / f"pipeline-{step}", stream, uploader, step)


def class_labels(names: list[str] | None, num_classes: int | None) -> dict[int, str]:
    """id2label of a run: the dataset's ClassLabel names, within `--num_classes` when given."""
    num_classes = num_classes or (len(names) if names else None)
    if num_classes is None:
        raise ValueError("the label column is not a ClassLabel: give --num_classes")
    if names is not None and len(names) > num_classes:
        raise ValueError(f"the dataset has {len(names)} classes but --num_classes is {num_classes}")
    return {i: (names[i] if names else str(i)) for i in range(num_classes)}


def label_tensor(example: dict, label_column: str, num_classes: int) -> torch.Tensor:
    """An example's label as a 0-d tensor; a label outside the model's classes is an error naming the column."""
    label = int(example[label_column])
    if not 0 <= label < num_classes:
        raise ValueError(f"--label_column {label_column!r} holds {label}, outside the model's {num_classes} classes")
    return torch.tensor(label)


def sample_grid(args, model, vqvae, id2label) -> PIL.Image.Image:
    """One row per class (up to `validation_max_classes`), `validation_images_per_class` images seeded by their
    position, sampled with `validation_guidance_scale`; the model is back in training mode afterwards."""
    from st_ar_hf.pipelines import STARPipeline

    model.eval()
    pipe = STARPipeline(transformer=model, vqvae=vqvae, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    labels = sorted(id2label)[: args.validation_max_classes]
    num = args.validation_images_per_class
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(labels) * num)]
    images = pipe(labels, num_images_per_label=num, guidance_scale=args.validation_guidance_scale,
                  top_p=args.validation_top_p, generator=generators, output_type="np").images
    model.train()
    return make_grid(images, columns=num, scale=max(1, 64 // images.shape[1]), row_labels=[id2label[i] for i in labels])


def report_sample_accuracy(args, model, vqvae, id2label: dict, output_dir: Path) -> dict:
    """The end of a run on the embedded digits: `sample_accuracy_per_class` samples per class at the validation
    guidance, read by a digit CNN trained on the train split (`st_ar_hf.sample_accuracy`, its test-split accuracy
    beside it); written to `output_dir/sample_accuracy.json`."""
    from st_ar_hf.pipelines import STARPipeline
    from st_ar_hf.sample_accuracy import fit_sample_classifier, load_labelled_images, sample_accuracy

    model.eval()
    pipe = STARPipeline(transformer=model, vqvae=vqvae, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    labels = np.repeat(sorted(id2label), args.sample_accuracy_per_class)
    generators = [torch.Generator().manual_seed(args.seed + 1_000_000 + i) for i in range(len(labels))]
    images = pipe(labels.tolist(), guidance_scale=args.validation_guidance_scale, top_p=args.validation_top_p,
                  generator=generators, output_type="np").images
    model.train()
    samples = (images * 255).round().astype(np.uint8)  # [N, S, S, 3]
    data = Path(args.embedded_dataset_dir)
    classifier = fit_sample_classifier(*load_labelled_images(str(data / "train-*.parquet"), args.image_size, "train"),
                                       *load_labelled_images(str(data / "test-*.parquet"), args.image_size, "test"))
    results = {**sample_accuracy(classifier, samples, labels), "guidance_scale": args.validation_guidance_scale,
               "top_p": args.validation_top_p, "samples_per_class": args.sample_accuracy_per_class}
    partial = output_dir / "sample_accuracy.json.partial"
    partial.write_text(json.dumps(results, indent=2) + "\n")
    partial.replace(output_dir / "sample_accuracy.json")
    return results


def training_summary(accelerator, model, stream, step: int, args) -> dict:
    """What the exported card and `training_summary.json` record: steps, the images and data digest of every process,
    whether the processes ended with identical weights, and the run's arguments (a collective: every process calls)."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    digests = accelerator.gather(torch.tensor([stream.digest, stream.counts["examples"]], device=accelerator.device))
    checksums = accelerator.gather(checksum[None].to(accelerator.device))
    return {
        "steps": step, "images_per_process": digests.view(-1, 2)[:, 1].tolist(),
        "data_digest_per_process": digests.view(-1, 2)[:, 0].tolist(),
        "weights_identical_across_processes": bool((checksums == checksums[0]).all()),
        "arguments": dict(vars(args)),
    }


def export_pipeline(args, accelerator, model, vqvae, id2label: dict, directory: Path, stream, uploader, step: int) -> None:
    """Writes the trained transformer (unwrapped; no teacher, projector or optimiser) and its tokenizer as a
    `STARPipeline` with its model card and `training_summary.json` beside `directory`, renames it into place (a reader
    never sees half a pipeline) and queues its upload. A collective: every process calls it."""
    from st_ar_hf.model_cards import pipeline_model_card
    from st_ar_hf.pipelines import STARPipeline

    unwrapped = accelerator.unwrap_model(model)
    summary = training_summary(accelerator, unwrapped, stream, step, args)
    if accelerator.is_main_process:
        pipe = STARPipeline(transformer=unwrapped, vqvae=vqvae, id2label=id2label)
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipe.save_pretrained(partial)  # diffusers writes no card; ours replaces the plain one with training facts
        repo_id = uploader.repo_id if uploader is not None else None  # the card's usage snippet loads it
        pipeline_model_card(pipe, remote_code=True, training=summary, repo_id=repo_id).save(partial / "README.md")
        (partial / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
        if uploader is not None:
            uploader.upload(directory, commit_message=f"{directory.name} of {args.output_dir}")
    accelerator.wait_for_everyone()


__all__ = ["LogWindow", "after_step", "class_labels", "data_counts", "export_pipeline", "is_due", "label_tensor", "load_pretrained", "make_accelerator", "make_optimizer",
           "nonfinite_terms", "report_sample_accuracy", "sample_grid", "skip_step", "training_summary", "var_lin0_factor"]
