"""Checkpoints that survive interruption, resume without running pickled code, and never mix two runs.

A checkpoint folder holds accelerate's state (models as safetensors; optimiser, scheduler and RNG states, which
accelerate reads back with `torch.load(weights_only=True)`), `training_state.json` (step counters, the run's
id and settings), `<name>.safetensors` for each frozen module of the run (the EMA teacher) and `stream_<process>.json` (each
process's data position). Nothing in it is ever unpickled with code execution.
"""

import fcntl
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast, load, parse_flag_from_env
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "training_state.json"
LOCK_FILE = "run.lock"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pkl", ".pt", ".pth")
logger = logging.getLogger(__name__)
_held_locks: dict[Path, int] = {}  # output folder -> this process's open lock file, held until the process ends


class TrainingState:
    """What a run saves beyond accelerate's state: its step counters, the id that tells its checkpoints from another
    run's, its settings (JSON values, compared on resume), and the frozen modules it keeps outside the optimiser
    (`modules`: name -> module, e.g. the EMA teacher)."""

    def __init__(self, settings: dict | None = None, **modules: torch.nn.Module):
        self.settings, self.modules = settings or {}, modules
        self.global_step, self.nonfinite_in_a_row, self.run_id = 0, 0, uuid.uuid4().hex

    def save(self, folder: Path) -> None:
        counters = {"global_step": self.global_step, "nonfinite_in_a_row": self.nonfinite_in_a_row, "run_id": self.run_id,
                    "settings": self.settings}
        (folder / STATE_FILE).write_text(json.dumps(counters) + "\n")
        for name, module in self.modules.items():
            save_model(module, str(folder / f"{name}.safetensors"))

    def load(self, folder: Path, counters: dict) -> None:
        """`counters`: the parsed `training_state.json` of `folder`."""
        self.global_step, self.nonfinite_in_a_row, self.run_id = (
            counters["global_step"], counters["nonfinite_in_a_row"], counters["run_id"])
        for name, module in self.modules.items():
            try:
                load_model(module, str(folder / f"{name}.safetensors"))
            except (OSError, RuntimeError, SafetensorError) as error:  # missing, truncated, other keys or shapes
                check_weights(folder / f"{name}.safetensors", "--resume_from_checkpoint")
                raise ValueError(f"--resume_from_checkpoint {folder}: {name}.safetensors does not fit this run's "
                                 f"{name} ({str(error).splitlines()[-1].strip()})") from None


def run_id_of(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint`; None for a folder without our training state."""
    try:
        return json.loads((checkpoint / STATE_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints (of the run `run_id` when given), oldest first. A save in progress lives under another
    name and never shows here."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := CHECKPOINT_PATTERN.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if run_id is None or run_id_of(p) == run_id]


def claim_output_dir(output_dir: str | Path, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> None:
    """Locks the folder for this run (`lock_output_dir`). A fresh run (no --resume_from_checkpoint) never starts
    among another run's checkpoints and metrics: it refuses such a folder, or with --overwrite_output_dir deletes them
    first (main process). Call before any work, on every process."""
    output_dir = Path(output_dir)
    lock_output_dir(output_dir)
    if resume_from_checkpoint is not None:
        return
    found = list_checkpoints(output_dir) + [p for p in [output_dir / "metrics.jsonl"] if p.exists()]
    if not found:
        return
    if not overwrite_output_dir:
        raise ValueError(f"--output_dir {output_dir} holds another run ({', '.join(p.name for p in found)}): resume it "
                         "with --resume_from_checkpoint latest, choose another --output_dir, or pass "
                         "--overwrite_output_dir to delete its checkpoints and metrics")
    state = _process_state()
    if state.is_main_process:
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    state.wait_for_everyone()


def lock_output_dir(output_dir: Path) -> None:
    """The main process holds an flock on `output_dir/run.lock`, with its pid written in it, until it exits (the OS
    drops the lock of a process that dies); every process refuses a folder another run holds, naming its pid (the
    main process's answer is broadcast, so no process waits for one that has stopped)."""
    state = _process_state()
    holder = 0  # the pid of the run holding the folder; -1 when it has not written its pid yet
    if state.is_main_process and output_dir.resolve() not in _held_locks:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            written = os.read(lock, 32).decode(errors="replace").strip()
            holder = int(written) if written.isdigit() else -1
            os.close(lock)
        else:
            os.ftruncate(lock, 0)
            os.write(lock, f"{os.getpid()}\n".encode())
            _held_locks[output_dir.resolve()] = lock
    if state.num_processes > 1:
        holder = int(broadcast(torch.tensor([holder], device=state.device)).item())
    if holder:
        raise ValueError(f"--output_dir {output_dir} is in use by another run (pid {holder if holder > 0 else 'unknown'}"
                         f", which holds {output_dir / LOCK_FILE}): wait for it to end or choose another --output_dir")


def _process_state() -> PartialState:
    """The processes' shared state (the process group set up) before the run's Accelerator, as the Accelerator makes
    it: a bare `PartialState()` ignores ACCELERATE_USE_CPU, and on CPU would give every process index 0."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


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


def resume_run(accelerator, output_dir: str | Path, resume_from_checkpoint: str | None, state: TrainingState,
               stream=None, fixed_settings: tuple[str, ...] = ()) -> Path | None:
    """Loads the checkpoint named by --resume_from_checkpoint (None when the run starts fresh) and drops the lines
    of `metrics.jsonl` logged after it, so that the file holds each step of one run once. Settings that differ from
    the checkpoint's run are refused when they shape the model or data (`fixed_settings`), else reported."""
    checkpoint = resolve_checkpoint(output_dir, resume_from_checkpoint)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, state, stream, fixed_settings)
    metrics = Path(output_dir) / "metrics.jsonl"
    if accelerator.is_main_process and metrics.is_file():
        metrics.write_text("".join(line for line in metrics.read_text().splitlines(keepends=True)
                                   if _logged_step(line) <= state.global_step))
    accelerator.wait_for_everyone()
    return checkpoint


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainingState, total_limit: int | None,
                    stream=None) -> Path:
    """`accelerator.save_state` into `checkpoint-{step}.partial` on every process, the run's `TrainingState` (main
    process) and each process's data-stream position, then an atomic rename to `checkpoint-{step}` by the main
    process, then removal of this run's oldest checkpoints beyond `total_limit` (never another run's)."""
    output_dir = Path(output_dir)
    step = state.global_step
    final, partial = output_dir / f"checkpoint-{step}", output_dir / f"checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        state.save(partial)
    if stream is not None:
        (partial / f"stream_{accelerator.process_index}.json").write_text(json.dumps(stream.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir, state.run_id)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: str | Path, state: TrainingState, stream=None,
                    fixed_settings: tuple[str, ...] = ()) -> None:
    """Restores what `save_checkpoint` wrote: models, optimiser, scheduler, RNG, the `TrainingState`, the stream
    position. Before reading any weights: refuses a folder with pickled custom state (older versions, or someone
    else's), compares the run's settings (`_check_settings`), and names a file that does not load with
    `weights_only=True`."""
    checkpoint = Path(checkpoint)
    pickled_state = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*.pkl"))
    if pickled_state or not (checkpoint / STATE_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint {checkpoint} is not a checkpoint of this version: it has "
                         f"{pickled_state or f'no {STATE_FILE}'} (pickled training state is never loaded)")
    counters = _read_counters(checkpoint)
    _check_settings(checkpoint, counters.get("settings", {}), state.settings, fixed_settings)
    for rng_file in checkpoint.glob("random_states_*.pkl"):  # accelerate skips an unreadable one silently
        check_weights(rng_file, "--resume_from_checkpoint")
    try:
        accelerator.load_state(str(checkpoint))
    except Exception:
        name_unreadable_weights(checkpoint, "--resume_from_checkpoint")
        raise
    state.load(checkpoint, counters)
    if stream is not None:
        state_file = checkpoint / f"stream_{accelerator.process_index}.json"
        if not state_file.is_file():
            raise ValueError(f"{checkpoint} has no data-stream state for process {accelerator.process_index} "
                             "(saved with another number of processes?)")
        stream.load_state_dict(json.loads(state_file.read_text()))


def _check_settings(checkpoint: Path, saved: dict, settings: dict, fixed: tuple[str, ...]) -> None:
    """Refuses settings in `fixed` that differ from the checkpoint's run (`saved`), logs the others that differ."""
    changed = {key: (saved[key], value) for key, value in settings.items()
               if key in saved and saved[key] != value and key not in ("resume_from_checkpoint", "overwrite_output_dir")}
    refused = {key: change for key, change in changed.items() if key in fixed}
    if refused:
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: these settings differ from the run that wrote it and "
                         f"shape the model or data: {_describe(refused)}; resume with the run's values or start a new run")
    if changed:
        logger.warning(f"resuming {checkpoint} with settings that differ from its run: {_describe(changed)}; they apply "
                       "from here on, except what the checkpoint restores (optimiser state incl. learning rates, "
                       "scheduler position)")


def _describe(changes: dict) -> str:
    return ", ".join(f"--{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a killed process counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _read_counters(checkpoint: Path) -> dict:
    """The checkpoint's `training_state.json`, checked before it steers anything: counters of their types and ranges,
    and a step that is the one in the folder's name."""
    try:
        counters = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: {STATE_FILE} is not readable JSON ({error})") from None
    if not isinstance(counters, dict):
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: {STATE_FILE} must hold a mapping, got a "
                         f"{type(counters).__name__}")
    named = CHECKPOINT_PATTERN.fullmatch(checkpoint.name)
    step_named = int(named.group(1)) if named else None
    expected = {
        "global_step": (lambda v: _is_count(v) and step_named in (None, v),
                        "an int >= 0" + (f", the {step_named} of the folder's name" if named else "")),
        "nonfinite_in_a_row": (_is_count, "an int >= 0"),
        "run_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "settings": (lambda v: isinstance(v, dict), "a mapping of settings"),
    }
    for field, (valid, description) in expected.items():
        if field == "settings" and field not in counters:  # older checkpoints
            continue
        if not valid(counters.get(field)):
            got = repr(counters[field]) if field in counters else "nothing"
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: {STATE_FILE} field {field!r}: expected "
                             f"{description}, got {got}")
    return counters


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def check_weights(path: Path, argument: str) -> None:
    """Loads a weights file, as safetensors or with `torch.load(weights_only=True)` (accelerate's, numpy arrays allowed;
    code in a pickle is never run); one that does not load is a one-line ValueError naming `argument` and the file."""
    try:
        load_file(path) if path.suffix == ".safetensors" else load(path, map_location="cpu")
    except Exception as error:  # missing, truncated, a pickle in a .safetensors, a foreign pickle
        how = "as safetensors" if path.suffix == ".safetensors" else "with weights_only=True (code in a pickle is never run)"
        reason = "" if isinstance(error, pickle.UnpicklingError) else f": {(str(error).strip().splitlines() or [''])[0]}"
        raise ValueError(f"{argument} {path} does not load {how} ({type(error).__name__}{reason})") from None


def name_unreadable_weights(folder: Path, argument: str) -> None:
    """After a load from `folder` failed: a one-line ValueError naming its first weights file that does not load
    (`check_weights`); nothing when they all load, and the caller re-raises its error."""
    for path in sorted(folder.iterdir()):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            check_weights(path, argument)
