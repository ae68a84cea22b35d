"""What every family's converter shares: reading an official checkpoint without running pickled code, renaming its
keys with a table that must cover every key, loading strictly, and saving with a model card."""

import os
import re
import zipfile
from pathlib import Path

import torch

from ..model_cards import converted_model_card


def load_state_dict(checkpoint: str | os.PathLike | dict, kind: str, wrappers=(("model",),),
                    dropped: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """An official checkpoint (path or dict) -> its flat state dict of tensors.

    Files load with `torch.load(weights_only=True)`: a foreign pickle fails instead of running. The first of
    `wrappers` (key paths such as ("trainer", "var_wo_ddp")) found in the file is unwrapped, DDP and torch.compile
    prefixes are stripped, and keys ending in one of `dropped` (buffers that carry no weights) are left out.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if path.is_dir():
            raise ValueError(f"checkpoint {str(path)!r} is a folder, not a {kind} file (Prologue's checkpoints are "
                             f"folders: `st-ar convert prologue-tokenizer` / `prologue-ar`)")
        if not path.is_file():
            raise ValueError(f"checkpoint {str(path)!r} is not a file")
        _check_zip_checksums(path)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # empty or truncated file, foreign pickle, not a torch file at all
            detail = str(error).splitlines()[0] if str(error).strip() else "empty or truncated file"
            raise ValueError(
                f"checkpoint {str(path)!r} is not a readable PyTorch weights file (loaded with weights_only=True, "
                f"no code executed): {type(error).__name__}: {detail}"
            ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint must hold a state dict, got {type(checkpoint).__name__}")
    for wrapper in wrappers:
        inner = checkpoint
        for key in wrapper:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if isinstance(inner, dict):
            checkpoint = inner
            break
    state_dict = {}
    for key, value in checkpoint.items():
        key = str(key).removeprefix("module.").removeprefix("_orig_mod.")
        if key.endswith(dropped):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: not a {kind} state dict")
        state_dict[key] = value
    return state_dict


def _check_zip_checksums(path: Path) -> None:
    """A torch zip file's entries against their CRC-32: torch.load reads damaged tensor data without noticing."""
    if not zipfile.is_zipfile(path):
        return  # a legacy or foreign file: torch.load judges it
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as error:  # a damaged directory fails in many ways (BadZipFile, UnicodeDecodeError, ...)
        raise ValueError(f"checkpoint {str(path)!r} is a damaged zip archive: {type(error).__name__}: {error}") from None
    if damaged is not None:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: its entry {damaged} fails its CRC-32 check (a damaged "
                         f"download or copy?)")


def rename_keys(state_dict: dict, key_map: list[tuple[str, str]], kind: str) -> dict:
    """Applies every (pattern, replacement) of `key_map` in turn to each key; a key no pattern matches is an error."""
    renamed = {}
    for key, value in state_dict.items():
        new_key, matched = key, False
        for pattern, replacement in key_map:
            new_key, count = re.subn(pattern, replacement, new_key)
            matched |= count > 0
        if not matched:
            raise ValueError(f"checkpoint key {key!r} is not part of a {kind} checkpoint")
        renamed[new_key] = value
    return renamed


def require(state_dict: dict, key: str, kind: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"checkpoint has no {key!r}: not a {kind} checkpoint")
    return state_dict[key]


def count_indexed(state_dict: dict, pattern: str) -> int:
    """The number of distinct values of `pattern`'s first group among the keys (e.g. layers)."""
    return len({match.group(1) for key in state_dict if (match := re.match(pattern, key))})


def load_strict(model, state_dict: dict):
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # missing, unexpected or mis-shaped keys
        raise ValueError(f"checkpoint does not fit the inferred {type(model).__name__}: {error}") from None


def save_converted(model, output_dir, source, kind: str):
    """`save_pretrained` plus the converted-model card (`kind`: a key of `model_cards.CONVERTED`)."""
    model.save_pretrained(output_dir)
    source_name = f"`{Path(source).name}`" if isinstance(source, (str, os.PathLike)) else "a state dict"
    converted_model_card(model, source_name, kind).save(Path(output_dir) / "README.md")
