"""The docs are tested without running anything heavy: every relative link and `#anchor` resolves; every command line
of a bash/sh/console block uses only flags (and subcommands) its command's parser knows, by name and arity, never
converting a value (placeholders pass); commands quoted inline, and flags quoted alone, name flags that exist; and every
```python runnable block runs against tiny local models. A renamed flag or a moved heading breaks a test, not a reader.
Parsers are caught at their first parse (tests/test_flags.py): no command runs."""

import argparse
import os
import re
import runpy
import shlex
from functools import cache
from pathlib import Path

import pytest

from st_ar_hf.cli import _parser as cli_parser
from st_ar_hf.flags import FlagParser
from tests.test_flags import _Caught, _caught_parser, _leaf_parsers

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "training" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "spaces" / "README.md"]
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
RUNNABLE = "runnable"  # the fence info string's marker: ```python runnable

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n"
                    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.DOTALL | re.MULTILINE)


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------------- markdown


def code_blocks(markdown: str):
    """(info string, body dedented, line of the opening fence) of every fenced block."""
    for match in _FENCE.finditer(markdown):
        indent = len(match["indent"])
        body = "".join(line[indent:] if line[:indent].isspace() else line
                       for line in match["body"].splitlines(keepends=True))
        yield match["info"].strip(), body, markdown.count("\n", 0, match.start()) + 1


def _prose(markdown: str) -> str:
    """`markdown` without fenced blocks and inline code, line numbers kept."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: link syntax and markup dropped, lowercase, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of the headings of `markdown`, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen, result = {}, set()
    for line in _FENCE.sub("", markdown).splitlines():
        match = re.match(r" {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = github_anchor(match[1])
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def links(markdown: str):
    """(line, target) of every inline link and image, and every reference definition, outside code."""
    text = _prose(markdown)
    for match in re.finditer(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        yield text.count("\n", 0, match.start()) + 1, match[1]
    for match in re.finditer(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.MULTILINE):
        yield text.count("\n", 0, match.start()) + 1, match[1]


def link_errors(markdown: str, source: Path) -> list[str]:
    """A line per relative link of `markdown` (the text of the file `source`) whose file or anchor is missing."""
    errors = []
    for line, target in links(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):  # http(s): not fetched
            continue
        path_text, _, anchor = target.partition("#")
        path = (source.parent / path_text).resolve() if path_text else source
        where = f"{source.name}:{line}: {target}"
        if path_text and not path.exists():
            errors.append(f"{where}: no file {path_text}")
        elif anchor and path.suffix == ".md":
            text = markdown if path == source else path.read_text(encoding="utf-8")
            if anchor.lower() not in anchors(text):
                errors.append(f"{where}: no heading with anchor #{anchor} in {path.name}")
    return errors


# ---------------------------------------------------------------------------------------------------- commands


def command_lines(markdown: str):
    """(line, text) of every command of the shell blocks: continuations joined; comments, blank lines and console
    output left out."""
    for info, body, start in code_blocks(markdown):
        language = info.split()[0] if info else ""
        if language not in SHELL_LANGUAGES:
            continue
        console = language == "console"
        pending, first = "", None
        for number, line in enumerate(body.splitlines(), start + 1):
            if not pending:
                if console and not line.startswith("$ "):
                    continue
                line, first = line[2:] if console else line, number
            if line.rstrip().endswith("\\") and not line.lstrip().startswith("#"):
                pending += line.rstrip()[:-1] + " "
                continue
            text, pending = (pending + line).strip(), ""
            if text and not text.startswith("#"):
                yield first, text


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command of a command line (split at ; && || | &), comments, redirections and
    leading VAR=value assignments dropped."""
    lexer = shlex.shlex(text, posix=True)  # no punctuation_chars: a <PLACEHOLDER> stays one word
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, words, redirect = [], [], False
    for token in lexer:
        separated = token.endswith(";") and token != ";"
        token = token.rstrip(";") if separated else token
        if token in {";", "&&", "||", "|", "&"}:
            commands.append(words)
            words = []
        elif redirect:
            redirect = False
        elif re.fullmatch(r"(\d|&)?(>>?|<)(&\d)?", token):  # > file, 2>&1, < file
            redirect = not token.endswith(("&1", "&2"))
        elif not re.fullmatch(r"(\d|&)?>>?\S+", token):  # >file
            words.append(token)
        if separated:
            commands.append(words)
            words = []
    commands.append(words)
    result = []
    for words in commands:
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            result.append(words)
    return result


def _option(parser, flag: str):
    """(action, error) for `flag` in `parser`: both spellings of a FlagParser's flags; a renamed flag is an error."""
    if flag in parser._option_string_actions:
        return parser._option_string_actions[flag], None
    if isinstance(parser, FlagParser) and flag.startswith("--"):
        dashed = flag.replace("_", "-")
        if dashed in parser.renamed_flags:
            new = parser.renamed_flags[dashed]
            return parser._option_string_actions[new], f"{parser.prog}: {flag} is deprecated: use {new}"
        for known, action in parser._option_string_actions.items():
            if known.replace("_", "-") == dashed:
                return action, None
    return None, f"{parser.prog}: unrecognized argument {flag}"


def _is_flag(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d+(\.\d*)?(e-?\d+)?", word)


def _walk(parser, words: list[str], stop_at_positional=False):
    """Walks `words` through `parser` by flag names and arities only (values are never converted, so placeholders
    pass). Returns (errors, positional words, index where it stopped)."""
    errors, positionals, i = [], [], 0
    while i < len(words):
        word = words[i]
        if word == "--":
            positionals += words[i + 1:]
            return errors, positionals, len(words)
        if not _is_flag(word):
            if stop_at_positional:
                return errors, positionals, i
            positionals.append(word)
            i += 1
            continue
        flag, equals, _ = word.partition("=")
        action, error = _option(parser, flag)
        i += 1
        if error:
            errors.append(error)
        if action is None:  # unknown arity: the words up to the next flag (none, before a script) are its values
            while i < len(words) and not _is_flag(words[i]) and not stop_at_positional:
                i += 1
            continue
        if equals or action.nargs == 0:
            continue
        if action.nargs in (None, "?"):
            count = 1 if action.nargs is None else int(i < len(words) and not _is_flag(words[i]))
        elif isinstance(action.nargs, int):
            count = action.nargs
        elif action.nargs == argparse.REMAINDER:
            count = len(words) - i
        else:  # '*' and '+'
            count = 0
            while i + count < len(words) and not _is_flag(words[i + count]):
                count += 1
        if count and i + count > len(words):
            errors.append(f"{parser.prog}: {flag} expects {count} value(s)")
        i += count
    return errors, positionals, i


def parse_errors(parser, words: list[str]) -> list[str]:
    """Errors argparse would raise for `words` on flag names, subcommands and required positionals; values unchecked."""
    subcommands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if subcommands is not None:  # the parent's flags, then the subcommand, then the subcommand's words
        errors, _, i = _walk(parser, words, stop_at_positional=True)
        if i == len(words):
            return errors + ([f"{parser.prog}: a subcommand is required ({', '.join(subcommands.choices)})"]
                             if subcommands.required else [])
        if words[i] not in subcommands.choices:
            choices = ", ".join(subcommands.choices)
            return errors + [f"{parser.prog}: invalid choice: {words[i]!r} (choose from {choices})"]
        return errors + parse_errors(subcommands.choices[words[i]], words[i + 1:])
    errors, positionals, _ = _walk(parser, words)
    needed, unbounded = 0, False
    for action in parser._actions:
        if action.option_strings:
            continue
        if action.nargs is None or action.nargs == "+":
            needed += 1
        elif isinstance(action.nargs, int):
            needed += action.nargs
        unbounded |= action.nargs in ("*", "+", argparse.REMAINDER)
    accepted = needed + sum(1 for a in parser._actions if not a.option_strings and a.nargs == "?")
    positionals = [word for word in positionals if word != "..."]  # elided arguments
    if len(positionals) < needed:
        errors.append(f"{parser.prog}: missing a required positional ({needed} needed, {len(positionals)} given)")
    elif not unbounded and len(positionals) > accepted:
        errors.append(f"{parser.prog}: unrecognized arguments {' '.join(positionals[accepted:])}")
    return errors


@cache
def script_parser(name: str):
    """The parser of training/<name>, caught at its first parse (tests/test_flags.py's machinery): nothing runs."""
    script = ROOT / "training" / name
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _caught_parser(monkeypatch, lambda: runpy.run_path(str(script), run_name="__main__"))


@cache
def benchmark_parser(name: str):
    """The parser that benchmarks/<name>'s `main()` builds, caught at its first parse (a plain ArgumentParser, so
    test_flags' FlagParser catcher does not apply): nothing is measured."""

    def catch(parser, args=None, namespace=None):
        raise _Caught(parser)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # benchmarks import measure.py
        main = runpy.run_path(str(ROOT / "benchmarks" / name), run_name="benchmark")["main"]
        monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        monkeypatch.setattr("sys.argv", [name])  # the parser's prog
        with pytest.raises(_Caught) as caught:
            main()
    return caught.value.args[0]


@cache
def accelerate_parser():
    from accelerate.commands.launch import launch_command_parser

    return launch_command_parser()


def _training_script(word: str) -> str | None:
    match = re.fullmatch(r"(?:\./)?training/(\w+\.py)", word)
    return match[1] if match and (ROOT / "training" / match[1]).exists() else None


def command_errors(words: list[str]):
    """None when the command is not one we parse (a skip), else the list of its errors."""
    program, args = os.path.basename(words[0]), words[1:]
    if program == "st-ar":
        return parse_errors(cli_parser(), args)
    if re.fullmatch(r"python(3(\.\d+)?)?", program):
        if args[:2] == ["-m", "st_ar_hf.cli"]:
            return parse_errors(cli_parser(), args[2:])
        if args and _training_script(args[0]):
            return parse_errors(script_parser(_training_script(args[0])), args[1:])
        if args and re.fullmatch(r"benchmarks/\w+\.py", args[0]):
            if not (ROOT / args[0]).exists():
                return [f"no benchmark {args[0]}"]
            return parse_errors(benchmark_parser(Path(args[0]).name), args[1:])
        if args and args[0].startswith("training/"):
            return [f"no training script {args[0]}"]
        return None
    if program == "accelerate" and args[:1] == ["launch"]:
        errors, _, i = _walk(accelerate_parser(), args[1:], stop_at_positional=True)
        rest = args[1 + i:]
        if not rest:
            return errors + ["accelerate launch: no script"]
        if _training_script(rest[0]):
            return errors + parse_errors(script_parser(_training_script(rest[0])), rest[1:])
        if rest[0].startswith("training/"):
            return errors + [f"no training script {rest[0]}"]
        return None
    return None


IGNORED = {"cd", "pip", "export", "source", ".", "git", "mkdir", "ls", "echo"}


def check_commands(markdown: str, name: str = "<doc>"):
    """(errors, skipped commands) of the shell blocks of `markdown`."""
    errors, skipped = [], []
    for line, text in command_lines(markdown):
        for words in simple_commands(text):
            if words[0] in IGNORED or words[:3] in (["python", "-m", "pip"],):
                continue
            found = command_errors(words)
            if found is None:
                skipped.append(f"{name}:{line}: {' '.join(words)}")
            else:
                errors += [f"{name}:{line}: {error}" for error in found]
    return errors, skipped


FRAGMENT_ERRORS = ("missing a required positional", "a subcommand is required", " expects ", "no script")


def check_inline_commands(markdown: str, name: str = "<doc>") -> list[str]:
    """Errors of the commands quoted inline (`st-ar push RUN_DIR --repo-id ID`, the benchmark headings): flag names
    and subcommands only, as an inline command is often a fragment (`st-ar push`)."""
    errors, text = [], _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    for match in re.finditer(r"(`+)((?:(?!\1).)+?)\1", text):
        line = text.count("\n", 0, match.start()) + 1
        if " / " in match[2]:  # `st-ar sample / convert / evaluate / push`: names, not a command
            continue
        try:
            commands = simple_commands(match[2].strip())
        except ValueError:  # unbalanced quotes: not a command
            continue
        for words in commands:
            if words[0] in IGNORED or words[0] in ("bash", "sh"):
                continue
            found = command_errors(words) or []
            errors += [f"{name}:{line}: {e}" for e in found if not any(part in e for part in FRAGMENT_ERRORS)]
    return errors


PLACEHOLDER_FLAGS = {"--foo-bar"}  # "every subcommand takes `--foo-bar` and `--foo_bar`"


@cache
def known_flags() -> frozenset[str]:
    """Every flag (dashed, old names too) of `st-ar`, the training scripts, the benchmarks and `accelerate launch`."""
    parsers = [cli_parser(), accelerate_parser(), *(script_parser(p.name) for p in (ROOT / "training").glob("*.py")),
               *(benchmark_parser(p.name) for p in (ROOT / "benchmarks").glob("bench_*.py"))]
    flags = set(PLACEHOLDER_FLAGS)
    for parser in parsers:
        for leaf, _ in _leaf_parsers(parser):
            flags.update(getattr(leaf, "renamed_flags", {}))
            flags.update(flag.replace("_", "-") for flag in leaf._option_string_actions)
    return frozenset(flags)


def unknown_inline_flags(markdown: str, name: str = "<doc>") -> list[str]:
    """Flags quoted alone in prose (`--train_codes`) that no parser knows."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)
    return [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: unknown flag {m[1]}"
            for m in re.finditer(r"`(--[A-Za-z][\w-]*)", text) if m[1].replace("_", "-") not in known_flags()]


# ---------------------------------------------------------------------------------------------------- runnable blocks


def runnable_blocks(markdown: str):
    for info, body, line in code_blocks(markdown):
        words = info.split()
        if words[:1] == ["python"] and RUNNABLE in words[1:]:
            yield line, body


def run_block(body: str, name: str = "<doc>") -> dict:
    namespace = {"__name__": "__doc_block__"}
    exec(compile(body, name, "exec"), namespace)  # noqa: S102 - the docs' own blocks
    return namespace


# ---------------------------------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_relative_link_and_anchor_resolves(doc):
    assert link_errors(doc.read_text(encoding="utf-8"), doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_command_line_uses_flags_its_parser_knows(doc):
    errors, _ = check_commands(doc.read_text(encoding="utf-8"), _doc_id(doc))
    assert errors == []


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_inline_command_uses_flags_its_parser_knows(doc):
    assert check_inline_commands(doc.read_text(encoding="utf-8"), _doc_id(doc)) == []


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_flag_quoted_in_prose_is_a_flag_of_some_command(doc):
    assert unknown_inline_flags(doc.read_text(encoding="utf-8"), _doc_id(doc)) == []


def test_parsed_commands_cover_the_cli_and_the_training_scripts():
    """The walk reaches the commands it should; what it skips (bash scripts, the Space's app.py, pytest) is listed."""
    parsed, skipped = 0, []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        _, skips = check_commands(text, _doc_id(doc))
        parsed += sum(1 for _, line in command_lines(text) for _ in simple_commands(line)) - len(skips)
        skipped += skips
    assert parsed >= 30
    skippable = r": (bash scripts/|python (spaces/)?app\.py|\.venv/bin/python -m pytest )"
    assert all(re.search(skippable, line) for line in skipped), skipped


RUNNABLE_BLOCKS = [(doc, line, body) for doc in DOCS for line, body in runnable_blocks(doc.read_text(encoding="utf-8"))]


def test_some_python_block_is_marked_runnable():
    assert RUNNABLE_BLOCKS


@pytest.mark.parametrize("doc, line, body", RUNNABLE_BLOCKS, ids=[f"{_doc_id(d)}:{n}" for d, n, _ in RUNNABLE_BLOCKS])
def test_runnable_python_block_runs(doc, line, body, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    run_block(body, f"{_doc_id(doc)}:{line}")


# ---------------------------------------------------------------------------------------------------- the checks fail


def test_anchor_follows_githubs_rule():
    assert github_anchor("Scale-wise training and SAR (`train_scalewise.py`, `st_ar_hf.training.sar`)") == \
        "scale-wise-training-and-sar-train_scalewisepy-st_ar_hftrainingsar"
    assert github_anchor("Prologue's three phases") == "prologues-three-phases"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_link_check_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Present heading\n")
    source = tmp_path / "doc.md"
    markdown = ("# Here\n[ok](other.md#present-heading) [ok](#here) [web](https://example.com/x#y) `[code](nope.md)`\n"
                "[gone](missing.md) [moved](other.md#old-heading) [self](#nowhere)\n```\n[in code](nope.md)\n```\n")
    errors = link_errors(markdown, source)
    assert len(errors) == 3, errors
    assert "no file missing.md" in errors[0] and "#old-heading" in errors[1] and "#nowhere" in errors[2]


def test_command_check_reports_unknown_flags_subcommands_and_missing_positionals():
    markdown = """```bash
st-ar sample --model <DIR> --labels 1 2 --num-images-per-label N --output_file g.png   # placeholders pass
st-ar sample --model m --labels 1 --output-file g.png \\
    --no-such-flag 3
st-ar smaple --model m
st-ar push --repo-id org/x
st-ar sample --model m --labels 1 --out g.png
python -m st_ar_hf.cli convert llamagen-vq --checkpoint c.pt --output-dir d --size B
OMP_NUM_THREADS=1 accelerate launch --num_processes 2 training/train.py --output_dir runs/x --not_a_flag
accelerate launch --no-such-accelerate-flag training/train.py
python training/sample_ddp.py --model m --num_samples 8 && bash scripts/demo.sh
```
"""
    errors, skipped = check_commands(markdown)
    assert skipped == ["<doc>:11: bash scripts/demo.sh"]
    expected = [":3: st-ar sample: unrecognized argument --no-such-flag", ":5: st-ar: invalid choice: 'smaple'",
                ":6: st-ar push: missing a required positional", ":7: st-ar sample: --out is deprecated",
                ":8: st-ar convert llamagen-vq: unrecognized argument --size",
                ":9: train.py: unrecognized argument --not_a_flag", ":10: Accelerate launch command",
                ]
    assert len(errors) == len(expected), errors
    for error, part in zip(errors, expected):
        assert part in error, (error, part)
    assert "--no-such-accelerate-flag" in errors[-1]


def test_inline_command_check_reports_unknown_flags_but_not_fragments():
    markdown = ("`st-ar push` and `st-ar push RUN_DIR --repo-id ID` and `st-ar sample --model`, "
                "`python benchmarks/bench_tokenizer.py --batch 2 --no-such-flag`, `st-ar sample --top_k 3 --topk 3`\n")
    errors = check_inline_commands(markdown)
    assert len(errors) == 2, errors
    assert "bench_tokenizer.py: unrecognized argument --no-such-flag" in errors[0]
    assert "st-ar sample: unrecognized argument --topk" in errors[1]


def test_runnable_block_runner_runs_only_marked_blocks_and_raises_their_errors():
    markdown = ("```python runnable\nx = 1 + 1\n```\n```python\nraise SystemExit\n```\n"
                "  ```python runnable\n  y = 1 / 0\n  ```\n")
    blocks = list(runnable_blocks(markdown))
    assert [line for line, _ in blocks] == [1, 7]
    assert run_block(blocks[0][1])["x"] == 2
    with pytest.raises(ZeroDivisionError):
        run_block(blocks[1][1])


def test_prose_flag_check_reports_a_flag_no_parser_knows():
    markdown = "Pass `--train_codes DIR` (or `--train-codes`), `--output-file`, `--out`; not `--train_code`.\n"
    assert unknown_inline_flags(markdown) == ["<doc>:1: unknown flag --train_code"]
