"""Every flag of `st-ar` and of every training script parses as `--foo-bar` and as `--foo_bar`, help shows one
spelling, and renamed flags still parse under their old names. Parsers are caught at their first parse: nothing runs."""

import argparse
import re
import runpy
import sys
from pathlib import Path

import pytest

from st_ar_hf.cli import main as cli_main
from st_ar_hf.flags import FlagParser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "training").glob("*.py"))


class _Caught(Exception):
    pass


def _caught_parser(monkeypatch, run) -> FlagParser:
    """The parser that `run()` parses its command line with, caught before the parse."""

    def catch(parser, args=None, namespace=None):
        raise _Caught(parser)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)  # FlagParser's calls it after rewriting
        patch.setattr(sys, "argv", ["prog"])
        patch.syspath_prepend(str(ROOT / "training"))  # scripts import their siblings
        with pytest.raises(_Caught) as caught:
            run()
    parser = caught.value.args[0]
    assert isinstance(parser, FlagParser), f"{type(parser).__name__} is not a FlagParser"
    return parser


def _leaf_parsers(parser, prefix=()):
    """(parser, the subcommands that reach it) of every parser under `parser` without subcommands of its own."""
    commands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not commands:
        yield parser, list(prefix)
    for action in commands:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*prefix, name))


def _value(action) -> list[str]:
    """Command-line values that `action` accepts, other than its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [next(str(choice) for choice in action.choices if choice != action.default)]
    for text in ("3", "0.5", "false", '{"hidden_size": 64}', "x"):
        try:
            (action.type or str)(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            continue
        return [text]
    raise AssertionError(f"no test value for {action.option_strings}")


def _required_argv(parser, tested) -> list[str]:
    """The required flags and positionals of `parser` (one of each required group) but those of `tested`'s group."""
    argv = []
    for action in parser._actions:
        group = next((g for g in parser._mutually_exclusive_groups if action in g._group_actions), None)
        required = action.required or (group is not None and group.required and action is group._group_actions[0])
        if required and action is not tested and not (group is not None and tested in group._group_actions):
            argv += action.option_strings[:1] + _value(action)
    return argv


def _other_spelling(flag: str) -> str:
    return "--" + flag[2:].translate(str.maketrans("-_", "_-"))


def _all_parsers(monkeypatch):
    yield "st-ar", _caught_parser(monkeypatch, lambda: cli_main([]))
    for script in SCRIPTS:
        yield script.name, _caught_parser(monkeypatch, lambda: runpy.run_path(str(script), run_name="__main__"))


def test_every_flag_of_every_command_parses_in_both_spellings_and_help_shows_one(monkeypatch, capsys):
    checked = set()
    for name, top in _all_parsers(monkeypatch):
        for parser, commands in _leaf_parsers(top):
            help_text = parser.format_help()
            for action in parser._actions:
                for flag in action.option_strings:
                    if not flag.startswith("--") or action.help == argparse.SUPPRESS or flag == "--help":
                        continue
                    base = commands + _required_argv(parser, action)
                    given = top.parse_args(base + [flag] + _value(action))
                    other = top.parse_args(base + [_other_spelling(flag)] + _value(action))
                    assert vars(given) == vars(other), (name, commands, flag)
                    assert getattr(given, action.dest) != action.default, (name, commands, flag)  # the flag was read
                    if _other_spelling(flag) != flag:
                        assert not re.search(re.escape(_other_spelling(flag)) + r"(?![\w-])", help_text), (name, flag)
                    checked.add((name, *commands, flag))
    assert "deprecated" not in capsys.readouterr().err  # no warning for either spelling
    for name in ("st-ar", *(script.name for script in SCRIPTS)):
        assert any(key[0] == name for key in checked), name
    assert ("st-ar", "sample", "--num-images-per-label") in checked
    assert ("st-ar", "convert", "prologue-ar", "--vqvae-checkpoint") in checked
    assert ("train.py", "--output_dir") in checked and ("sample_ddp.py", "--output_file") in checked


def test_renamed_flags_still_parse_with_a_warning_and_are_not_in_help(monkeypatch, capsys):
    renamed = {}
    for name, top in _all_parsers(monkeypatch):
        for parser, commands in _leaf_parsers(top):
            for old, new in parser.renamed_flags.items():
                action = parser._option_string_actions[new]
                base = commands + _required_argv(parser, action)
                value = _value(action)
                assert vars(top.parse_args(base + [old] + value)) == vars(top.parse_args(base + [new] + value))
                assert f"warning: option '{old}' is deprecated: use {new}" in capsys.readouterr().err
                assert not re.search(re.escape(old) + r"(?![\w-])", parser.format_help()), (name, old)
                renamed[(name, *commands[:1])] = (old, new)
    assert renamed == {
        ("st-ar", "convert"): ("--output", "--output-dir"),
        ("st-ar", "sample"): ("--out", "--output-file"),
        ("st-ar", "evaluate"): ("--out", "--output-file"),
        ("evaluate_digits.py",): ("--out", "--output_file"),
        ("evaluate_prologue_digits.py",): ("--out", "--output_file"),
        ("sample_ddp.py",): ("--out", "--output_file"),
    }


def test_flag_spellings_are_rewritten_only_before_a_double_dash_and_with_equals_values():
    parser = FlagParser(prog="p")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--output-file", old_names=("--out",))
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--top_k=3", "--out=a.png", "--", "--top_k"])
    assert (args.top_k, args.output_file, args.rest) == (3, "a.png", ["--top_k"])
