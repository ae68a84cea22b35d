"""`FlagParser`, the parser of `st-ar` and of every training script: each flag parses as `--foo-bar` and as
`--foo_bar`, as transformers' `HfArgumentParser` takes it; help lists the spelling it was added with (dashes for
`st-ar`, underscores for the training scripts, as diffusers' and accelerate's). Renamed flags keep their old names,
which parse with a warning on stderr (as Python 3.13's `deprecated=True`)."""

import argparse
import sys


def _dashed(flag: str) -> str:
    return flag.replace("_", "-")


class FlagParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        self.renamed_flags = {}  # old name, dashed -> the flag that replaced it (set first: `__init__` adds --help)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, old_names: tuple[str, ...] = (), **kwargs):
        """`old_names`: former names of this flag, still parsed (with a warning), not shown in help."""
        action = super().add_argument(*names, **kwargs)
        self.renamed_flags.update({_dashed(old): action.option_strings[0] for old in old_names})
        return action

    def parse_known_args(self, args=None, namespace=None):
        """Rewrites each flag of this parser to the spelling it was added with, then parses; a subcommand's parser
        rewrites its own flags."""
        args = list(sys.argv[1:] if args is None else args)
        spellings = {_dashed(flag): flag for flag in self._option_string_actions}
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is positional
                break
            flag, equals, value = arg.partition("=")
            key = _dashed(flag)
            if flag.startswith("--") and key in self.renamed_flags:
                self._print_message(f"{self.prog}: warning: option '{flag}' is deprecated: use "
                                    f"{self.renamed_flags[key]}\n", sys.stderr)
                args[i] = self.renamed_flags[key] + equals + value
            elif flag.startswith("--") and key in spellings:
                args[i] = spellings[key] + equals + value
        return super().parse_known_args(args, namespace)
