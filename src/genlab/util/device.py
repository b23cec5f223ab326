"""Which torch device a --device name means on this machine (auto: a CUDA GPU, else
Apple's MPS, else the CPU); a device the machine lacks is a clear error."""
from __future__ import annotations

import torch

from .errors import check


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str | None = "auto") -> torch.device:
    """The torch device for --device NAME."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    if isinstance(name, torch.device):
        return name
    ok = name in ("cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    check(ok, f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)")
    if name.startswith("cuda"):
        check(torch.cuda.is_available(), f"--device {name}: no CUDA GPU is available here")
        if ":" in name:
            check(int(name[5:]) < torch.cuda.device_count(),
                  f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if name == "mps":
        check(_mps(), "--device mps: Apple's MPS backend is not available here")
    return torch.device(name)
