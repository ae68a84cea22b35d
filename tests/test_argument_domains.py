"""Every setting of every training script declares its domain, and a value outside it is refused when parsed, with a
message naming the flag, the value and the domain: no run starts on `--learning_rate nan` or `--lr_end_ratio -1`."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from st_ar_hf.training import arguments
from st_ar_hf.training.arguments import (
    ANY, Anything, Choice, DataArguments, MixedPrecision, Range, ScaleWiseTrainingArguments, _flag_type, domain_of,
    parse_arguments,
)

ROOT = Path(__file__).resolve().parents[1]


def _script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments_classes() -> list[type]:
    """Every arguments dataclass: the library's and those the training scripts define."""
    modules = [arguments] + [_script_module(path.stem) for path in sorted((ROOT / "training").glob("*.py"))
                             if "(DataArguments)" in path.read_text()]
    return sorted({cls for module in modules for cls in vars(module).values()
                   if isinstance(cls, type) and issubclass(cls, DataArguments)}, key=lambda cls: cls.__name__)


CLASSES = _arguments_classes()
# the least each class needs besides the setting under test (a data source, a model or tokenizer to start from)
REQUIRED = {"ARTrainingArguments": ["--tokenizer_config", "t.yaml"], "ExtractCodesArguments": ["--vqvae", "v"],
            "AttentionArguments": ["--model", "m"], "LinearProbeArguments": ["--model", "m"]}


def _required(cls) -> list[str]:
    return ["--embedded_dataset_dir", "x", *REQUIRED.get(cls.__name__, [])]


def _outside(domain, kind) -> list:
    """Values of type `kind` just outside `domain`."""
    if isinstance(domain, MixedPrecision):
        return ["fp8", "bogus"] + ([] if torch.cuda.is_available() else ["fp16"])
    if isinstance(domain, Choice):
        return ["bogus"]
    values = [float("nan"), float("inf"), float("-inf")] if kind is float else []
    step = 1 if kind is int else 0.5
    if domain.low is not None:
        values.append(kind(domain.low) if domain.open_low else kind(domain.low - step))
    if domain.high is not None:
        values.append(kind(domain.high) if domain.open_high else kind(domain.high + step))
    if domain.multiple_of is not None:
        values.append(kind(max(domain.low or 0, domain.multiple_of) + 1))
    return values


SETTINGS = [pytest.param(cls, f, typing.get_type_hints(cls)[f.name], id=f"{cls.__name__}.{f.name}")
            for cls in CLASSES for f in dataclasses.fields(cls)]


def test_every_class_of_every_script_is_walked():
    assert [cls.__name__ for cls in CLASSES] == [
        "ARTrainingArguments", "AttentionArguments", "DataArguments", "ExtractCodesArguments", "LinearProbeArguments",
        "RunArguments", "ScaleWiseTrainingArguments", "TokenizerTrainingArguments"]


@pytest.mark.parametrize(("cls", "f", "annotation"), SETTINGS)
def test_every_setting_refuses_each_value_outside_its_domain_naming_flag_value_and_domain(cls, f, annotation):
    kind = _flag_type(annotation)
    domain = domain_of(f, annotation)  # raises for a setting declared without a domain
    parse_arguments(cls, _required(cls))  # the defaults lie inside
    if kind is bool:
        with pytest.raises(SystemExit):  # argparse: "expected true or false"
            parse_arguments(cls, _required(cls) + [f"--{f.name}=maybe"])
        return
    if isinstance(domain, Anything):
        assert kind in (str, dict), f"{f.name}: only free text and JSON overrides take any value, not {kind.__name__}"
        return
    values = _outside(domain, kind)
    assert values, f.name
    for value in values:
        message = rf"^--{f.name} must be {re.escape(domain.describe(kind))}, got {re.escape(repr(value))}$"
        with pytest.raises(ValueError, match=message):
            parse_arguments(cls, _required(cls) + [f"--{f.name}={value}"])  # = keeps -inf a value


def test_a_setting_without_a_domain_is_refused_when_built():
    @dataclasses.dataclass
    class Undeclared(DataArguments):
        width: int = 3

    with pytest.raises(TypeError, match="setting width declares no domain"):
        Undeclared(embedded_dataset_dir="x")


def test_config_files_are_checked_as_flags_are(tmp_path):
    config = tmp_path / "sar.yaml"
    config.write_text("embedded_dataset_dir: x\nlr_end_ratio: -1\n")
    with pytest.raises(ValueError, match=r"^--lr_end_ratio must be in \[0, 1\], got -1$"):
        parse_arguments(ScaleWiseTrainingArguments, ["--config", str(config)])


def test_negative_end_learning_rate_stops_train_scalewise_before_training():
    """`--lr_end_ratio -1` once ran its last steps at learning rates down to -1e-3 and exited 0."""
    run = subprocess.run([sys.executable, str(ROOT / "training" / "train_scalewise.py"), "--embedded_dataset_dir", "x",
                          "--lr_end_ratio", "-1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error: --lr_end_ratio must be in [0, 1], got -1.0" in run.stderr


@pytest.mark.parametrize(("domain", "kind", "inside", "outside"), [
    (Range(0, open_low=True), float, [1e-9, 1e30], [0.0, -1.0, float("nan"), float("inf")]),
    (Range(0, 1, open_high=True), float, [0.0, 0.999], [1.0, -0.1, float("nan")]),
    (Range(4, multiple_of=4), int, [4, 256], [0, 17, 18]),
    (Choice("l1", "l2"), str, ["l1"], ["L1", None]),
    (ANY, str, ["", "runs/x"], []),
])
def test_domains_admit_their_values_only(domain, kind, inside, outside):
    assert all(domain.admits(value) for value in inside) and not any(domain.admits(value) for value in outside)


def test_mixed_precision_depends_on_the_machine():
    assert MixedPrecision().admits("fp16") == torch.cuda.is_available()
    assert not MixedPrecision().admits("fp8")
