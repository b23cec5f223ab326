"""`genlab.errors.GenlabError` (its home is genlab.util.errors; kept here for callers)."""
from .util.errors import GenlabError, check

__all__ = ["GenlabError", "check"]
