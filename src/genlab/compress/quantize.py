"""int8 quantization with calibration: run a few batches of real (training) data through
the float model, record each Linear layer's largest input per channel, and choose the
SmoothQuant factors

    s_j = max|x_j|^alpha / max|w_:,j|^(1 - alpha)

that divide activation channel j and multiply weight column j (the product is unchanged,
but the activations' outlier channels, which per-token int8 cannot hold, become easier).
alpha = 0 is plain per-token dynamic quantization.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.int8 import float_weight, linear_layers, quantize_int8

DEFAULT_ALPHA = 0.8   # measured on SmolLM2: 0 -> +11% perplexity, 0.7 -> +2.1%, 0.8 -> +0.3%, 0.9 -> +2.6%


@torch.no_grad()
def activation_absmax(module: nn.Module, batches) -> dict[str, torch.Tensor]:
    """{layer name: max |input| per input channel} over the forward passes `batches()`
    makes (a callable that runs the model)."""
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in linear_layers(module).items():
        def hook(_m, inp, _out, name=name):
            a = inp[0].detach().float().abs().flatten(0, -2).amax(dim=0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        hooks.append(m.register_forward_hook(hook))
    try:
        batches()
    finally:
        for h in hooks:
            h.remove()
    return amax


def smoothing(module: nn.Module, amax: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """SmoothQuant factors for every calibrated layer (none when alpha is 0)."""
    if alpha == 0:
        return {}
    out = {}
    for name, m in linear_layers(module).items():
        if name in amax:
            w = float_weight(m).detach().float().abs().amax(dim=0).clamp(min=1e-5)
            # a channel (nearly) silent in calibration may not be at run time (a border
            # pixel): its factor is floored as if it reached 1% of the median channel
            a = amax[name].clamp(min=max(0.01 * float(amax[name].median()), 1e-5))
            out[name] = (a ** alpha / w ** (1 - alpha)).clamp(min=1e-5)
    return out


def int8(module: nn.Module, batches=None, alpha: float = DEFAULT_ALPHA) -> int:
    """Quantize `module`'s Linear layers to int8 in place, smoothed with factors
    calibrated on `batches()` (plain per-token int8 without it). Returns the number of
    layers replaced."""
    smooth = smoothing(module, activation_absmax(module, batches), alpha) if batches is not None else {}
    return quantize_int8(module, smooth=smooth)
