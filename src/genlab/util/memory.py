"""Memory: how much is left, and refusing up front work that needs more than that (a
clear error instead of the kernel's out-of-memory kill)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import GenlabError


def available_memory() -> int:
    """Bytes of memory left for a new allocation (MemAvailable; $GENLAB_MEMORY_LIMIT caps it)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    cap = os.environ.get("GENLAB_MEMORY_LIMIT")
    if cap:
        avail = min(avail, int(float(cap)))
    return avail


def check_memory(need: int, what: str, hint: str = "close other programs, or use a smaller model") -> None:
    """Refuse, before loading or allocating anything, work that needs more memory than is left."""
    have = available_memory()
    if need > have:
        raise GenlabError(f"{what} needs about {need / 2**30:.1f} GiB of memory but only "
                          f"{have / 2**30:.1f} GiB is free ({hint})")


def tensor_bytes(obj, depth: int = 3) -> int:
    """Bytes held by the tensors of the torch modules reachable from `obj` through its
    attributes (a run, a language model wrapper, a guarded model; `depth` levels down),
    each storage counted once: what keeping `obj` loaded costs."""
    seen: set = set()
    total = 0

    def visit(o, d):
        nonlocal total
        if isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                key = (t.untyped_storage().data_ptr(), t.device.type)
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
            return
        if d == 0 or isinstance(o, (str, bytes, int, float, bool, type(None))):
            return
        if isinstance(o, dict):
            for v in o.values():
                visit(v, d - 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v, d - 1)
        elif hasattr(o, "__dict__"):
            for v in vars(o).values():
                visit(v, d - 1)
    visit(obj, depth)
    return total
