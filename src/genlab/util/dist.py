"""Which process this is, as torchrun tells it: RANK, WORLD_SIZE, LOCAL_RANK in the
environment (torch.distributed's own contract). One process when they are absent.
Run files are written by rank 0 alone (runs.py asks `writer()`)."""
from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def writer() -> bool:
    """Whether this process writes run files and prints (rank 0, or the only process)."""
    return rank() == 0
