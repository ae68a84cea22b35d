"""Checkpoints that survive interruption, resume, and pipeline export."""

import json
import re
import shutil
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


class TrainingProgress:
    """The step counters saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    def __init__(self):
        self.global_step, self.nonfinite_in_a_row = 0, 0

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "nonfinite_in_a_row": self.nonfinite_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.global_step, self.nonfinite_in_a_row = state["global_step"], state["nonfinite_in_a_row"]


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. A save in progress lives under another name and never shows here."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := CHECKPOINT_PATTERN.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint in output_dir (None if there is none yet); a path -> itself."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a folder")
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None, stream=None) -> Path:
    """`accelerator.save_state` into `checkpoint-{step}.partial` on every process, plus each process's data-stream
    position (`stream_{process_index}.json`: accelerate saves registered objects from the main process only), then
    an atomic rename to `checkpoint-{step}` by the main process, then removal of the oldest beyond `total_limit`."""
    output_dir = Path(output_dir)
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f"checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if stream is not None:
        (partial / f"stream_{accelerator.process_index}.json").write_text(json.dumps(stream.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: str | Path, stream=None) -> None:
    """Restores what `save_checkpoint` wrote: models, optimiser, scheduler, RNG, registered objects, stream position."""
    accelerator.load_state(str(checkpoint))
    if stream is not None:
        state_file = Path(checkpoint) / f"stream_{accelerator.process_index}.json"
        if not state_file.is_file():
            raise ValueError(f"{checkpoint} has no data-stream state for process {accelerator.process_index} "
                             "(saved with another number of processes?)")
        stream.load_state_dict(json.loads(state_file.read_text()))
