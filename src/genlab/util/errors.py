"""The one exception type for user mistakes.

Anything a user can get wrong (a missing file, an unknown dataset, a corrupt checkpoint,
a bad option) raises `GenlabError`. The CLI prints its message as one line on stderr and
exits with code 2; Python callers can catch it. Every other exception is a bug in genlab.
"""


class GenlabError(Exception):
    """A user-facing error: one clear line, no traceback."""

    exit_code = 2


def check(cond, msg: str) -> None:
    """Raise GenlabError(msg) unless `cond` holds: the one argument-check helper."""
    if not cond:
        raise GenlabError(msg)
