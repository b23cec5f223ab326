"""argparse flags from `Opt` declarations (util/options.py): an option is declared once,
beside the config it fills, and the CLI reads its flag, type, help and check from there.
Every flag defaults to None ("not given"), so the Python API's defaults and recipes decide,
and `--resume` can tell a flag that repeats the run's value from one that changes it."""
from __future__ import annotations

import argparse
import sys

from ..util.options import Opt


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would also print the usage)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def sub(parent, dest: str, metavar: str):
    """Required sub-commands of `parent`, parsed with the one-line-error Parser."""
    s = parent.add_subparsers(dest=dest, metavar=metavar, parser_class=Parser)
    s.required = True
    return s


def command(subparsers, name: str, help: str, description: str | None = None, epilog: str | None = None):
    return subparsers.add_parser(name, help=help, description=description or help, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add(parser, opts, defaults: dict | None = None) -> None:
    """Add a flag (or positional argument) for each Opt that has one. `defaults` gives
    flags that default to a value instead of None (a verb's own default)."""
    defaults = defaults or {}
    for o in opts:
        if not o.cli:
            continue
        add_one(parser, o, defaults.get(o.name))


def add_one(parser, o: Opt, default=None) -> None:
    if o.positional:
        parser.add_argument(o.name, metavar=o.metavar, help=o.help or None)
        return
    if o.type is bool:
        if o.flag_name.startswith("--no-"):
            parser.add_argument(o.flag_name, dest=o.name, action="store_false", default=None, help=o.help)
        elif o.negate:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(o.flag_name, dest=o.name, action="store_true", default=None, help=o.help)
            group.add_argument(o.negate, dest=o.name, action="store_false", help=o.negate_help)
        else:
            parser.add_argument(o.flag_name, dest=o.name, action="store_true", default=default, help=o.help)
        return
    kw = {"dest": o.name, "default": default, "help": o.help or None, "metavar": o.metavar}
    if o.type in (int, float):
        kw["type"] = o.parse
    if o.choices is not None:
        kw["choices"] = list(o.choices)
        kw.pop("metavar")
    if o.required:
        kw["required"] = True
    parser.add_argument(o.flag_name, **kw)


def given(args, opts) -> dict:
    """{name: value} of the options the command line gave (None: not given)."""
    return {o.name: getattr(args, o.name) for o in opts
            if o.cli and getattr(args, o.name, None) is not None}


def note(msg: str) -> None:
    print(f"genlab: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"genlab: note: {msg}", file=sys.stderr, flush=True)


def exit_code(run) -> int:
    """130 when training stopped on Ctrl-C (the run is saved), else 0."""
    return 130 if (getattr(run, "summary", None) or {}).get("stopped") == "interrupt" else 0
