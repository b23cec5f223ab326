"""Options declared once: name, type, default, help and validation in one `Opt`, placed
beside the config it fills (a family's training options live in its module). The Python
API validates keyword arguments with it (`Opt.validate`), the CLI builds its flags from it
(`Opt.parse` is the argparse type), so the two can no longer drift apart.

    EPOCHS = Opt("epochs", int, check=at_least(1), label="epochs", help="epochs to train")
    EPOCHS.validate(0)   # GenlabError: epochs must be a whole number >= 1, not 0
    EPOCHS.parse("0")    # argparse.ArgumentTypeError: must be >= 1, not 0
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, Callable

from .errors import GenlabError


def at_least(x) -> tuple[Callable, str]:
    return (lambda v: v >= x), f">= {x}"


def above(x) -> tuple[Callable, str]:
    return (lambda v: v > x), f"> {x}"


def in_range(lo, hi, closed: bool = False) -> tuple[Callable, str]:
    """lo <= v < hi ([lo, hi)), or lo <= v <= hi when `closed`."""
    if closed:
        return (lambda v: lo <= v <= hi), f"in [{lo}, {hi}]"
    return (lambda v: lo <= v < hi), f"in [{lo}, {hi})"


def open_range(lo, hi) -> tuple[Callable, str]:
    """lo < v <= hi."""
    return (lambda v: lo < v <= hi), f"in ({lo}, {hi}]"


@dataclass(frozen=True)
class Opt:
    name: str                          # the keyword argument (and config key)
    type: type = str                   # int, float, str or bool
    default: Any = None                # None: the family's recipe decides
    help: str = ""
    choices: tuple | None = None
    check: tuple | None = None         # (predicate, "the text of what it needs", e.g. ">= 1")
    label: str | None = None           # how errors name it (default: the flag)
    what: str | None = None            # for choices: "unknown {what} 'x' (available: ...)"
    flag: str | None = None            # default: --name-with-dashes
    metavar: str | None = None
    negate: str | None = None          # bool: a second flag that sets False (--unconditional)
    negate_help: str = ""
    positional: bool = False
    required: bool = False
    cli: bool = True                   # False: Python only (e.g. log)

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def label_name(self) -> str:
        return self.label or self.flag_name

    def but(self, **changes) -> "Opt":
        """The same option with some fields changed (a family's own default or help)."""
        return replace(self, **changes)

    # -- the Python API's check --------------------------------------------------------
    def validate(self, v):
        """Raise GenlabError unless `v` (not None) is a valid value; returns it."""
        if v is None:
            return v
        if self.type is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise GenlabError(f"{self.label_name} must be a whole number{self._need(' ')}, not {v}")
        if self.type is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise GenlabError(f"{self.label_name} must be a number{self._need(' ')}, not {v!r}")
        if self.type is bool and not isinstance(v, bool):
            raise GenlabError(f"{self.label_name} must be True or False, not {v!r}")
        if self.choices is not None and v not in self.choices:
            available = ", ".join(map(str, self.choices))
            raise GenlabError(f"unknown {self.what or self.label_name} '{v}' (available: {available})")
        if self.check is not None and not self.check[0](v):
            whole = "a whole number " if self.type is int else ""
            raise GenlabError(f"{self.label_name} must be {whole}{self.check[1]}, not {v}")
        return v

    def _need(self, sep: str) -> str:
        return sep + self.check[1] if self.check else ""

    # -- the CLI's argparse type -------------------------------------------------------
    def parse(self, s: str):
        what = "a whole number" if self.type is int else "a number"
        try:
            v = self.type(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not {what}") from None
        if self.check is not None and not self.check[0](v):
            raise argparse.ArgumentTypeError(f"must be {self.check[1]}, not {s}")
        return v


def validate_all(opts, values: dict) -> dict:
    """Check every given value against its declaration; returns `values`."""
    by_name = {o.name: o for o in opts}
    for k, v in values.items():
        if k in by_name:
            by_name[k].validate(v)
    return values
