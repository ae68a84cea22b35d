"""Metrics and image grids for the trackers and the output folder, and the end of a run."""

import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from accelerate.state import AcceleratorState


def make_grid(images: np.ndarray, columns: int, padding: int = 2, scale: int = 1,
              row_labels: list[str] | None = None) -> PIL.Image.Image:
    """[N, H, W, 3] floats in [0, 1] -> one PIL image of ceil(N / columns) rows on a white background, each image
    enlarged `scale` times (nearest neighbour, so that small images stay legible), with `row_labels` (one per row)
    written in a margin on the left."""
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    num, height, width, _ = images.shape
    rows = -(-num // columns)
    grid = np.ones((rows * (height + padding) + padding, columns * (width + padding) + padding, 3), dtype=np.float32)
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    grid = PIL.Image.fromarray((grid * 255).round().astype(np.uint8))
    if not row_labels:
        return grid
    font = PIL.ImageFont.load_default(size=max(10, min(height // 3, 16)))
    margin = max(int(font.getlength(label)) for label in row_labels) + 2 * padding + 4
    labelled = PIL.Image.new("RGB", (grid.width + margin, grid.height), "white")
    labelled.paste(grid, (margin, 0))
    draw = PIL.ImageDraw.Draw(labelled)
    for row, label in enumerate(row_labels[:rows]):
        draw.text((margin - padding - 2, padding + row * (height + padding) + height // 2), label, fill="black",
                  font=font, anchor="rm")
    return labelled


def log_metrics(accelerator, logs: dict, step: int, metrics_file: str | Path) -> None:
    """To the trackers, and one JSON line per log step in `metrics_file` (main process)."""
    accelerator.log(logs, step=step)
    if accelerator.is_main_process:
        with Path(metrics_file).open("a") as f:
            f.write(json.dumps({"step": step, **logs}) + "\n")


def log_image(accelerator, name: str, image: PIL.Image.Image, step: int, save_dir: str | Path | None = None) -> None:
    """Logs to tensorboard and wandb when they are active, and saves `{save_dir}/{name}-{step:07d}.png`."""
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        image.save(Path(save_dir) / f"{name}-{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({name: wandb.Image(image)}, step=step)


def finish_run(accelerator, keep_process_group: bool = False) -> None:
    """`accelerator.end_training()` (trackers closed, process group destroyed), then a pause with the GIL released.
    With `keep_process_group` (a run that is a first stage of another in the same processes, which makes an
    Accelerator of its own, possibly in another precision) the trackers are closed and the process group kept.

    PyTorch's Gloo process group joins its worker threads in its destructor, which runs with the GIL held when the
    last DDP wrapper is freed (as the script's `main` returns); a worker still freeing the tensors of the last
    collective waits for that GIL, and both processes hang forever (seen in 1 of ~50 two-process runs here, with
    the stacks `Reducer::~Reducer -> ~ProcessGroupGloo -> thread::join` and `~AsyncBarrierWork -> decref_pyobject
    -> gil_scoped_acquire`). The pause lets the workers finish first."""
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
        AcceleratorState._reset_state()  # keeps the process group (PartialState)
        return
    accelerator.end_training()
    if accelerator.num_processes > 1:
        time.sleep(0.5)
