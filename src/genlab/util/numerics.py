"""A guard against a silent precision bug in the oneMKL that PyTorch's CPU wheels bundle.

ATen hands contiguous float unary ops (tanh, exp, log, sqrt, sin, erf, ...) to MKL's vector
math library (VML), one chunk per intra-op thread. oneMKL 2024.2 picks each VML function's
kernel lazily, on its first call; when that first call runs on several threads at once, one
thread can run a low-accuracy kernel for its whole chunk (errors of ~1e-4 instead of one ulp:
pytorch/pytorch#188792, fixed in oneMKL 2025). On a 2-core machine this hit nearly half of all
fresh processes: the same `genlab sample --seed 5` gave different images from one run to the
next, because the generator's last tanh was wrong on half of the batch.

`warm_vml()` calls every VML-backed op once on a single element, on this thread alone, so each
kernel is chosen before any concurrent use. It costs well under a millisecond.
"""
from __future__ import annotations

import torch

_VML_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10", "log1p",
            "log2", "sin", "sqrt", "tan", "tanh", "trunc")
_warm = False


def warm_vml() -> None:
    """Resolve MKL VML's kernel choice for each float unary op single-threaded (once per process)."""
    global _warm
    if _warm:
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in _VML_OPS:
            getattr(torch, name)(x)
    _warm = True
