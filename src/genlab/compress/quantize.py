"""int8 quantization with calibration: run a few batches of real (training) data through
the float model, record each Linear layer's largest input per channel, and choose the
SmoothQuant factors

    s_j = max|x_j|^alpha / max|w_:,j|^(1 - alpha)

that divide activation channel j and multiply weight column j (the product is unchanged,
but the activations' outlier channels, which per-token int8 cannot hold, become easier).
alpha = 0 is plain per-token dynamic quantization.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from ..models.int8 import Int8Linear, quantize_int8
from ..models.layers import float_weight, linear_layers

# measured on SmolLM2, held-out perplexity on 8,192 tokens of Shakespeare: alpha 0 (plain per-token)
# +11%, 0.5 +2.6%, 0.6 +1.9%, 0.7 +1.9%, 0.8 +3.5%, 0.85 +3.9%
DEFAULT_ALPHA = 0.7


@torch.no_grad()
def calibrate(module: nn.Module, batches, keep_rows: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (max |input| per input channel, up to `keep_rows` input rows spread
    over the calls)} over the forward passes `batches()` makes (a callable that runs the
    model)."""
    stats: dict[str, list] = {}
    hooks = []
    for name, m in linear_layers(module).items():
        def hook(_m, inp, _out, name=name):
            x = inp[0].detach().float().flatten(0, -2)
            a = x.abs().amax(dim=0)
            rows = x[::max(1, len(x) // keep_rows)][:keep_rows]
            if name in stats:
                stats[name][0] = torch.maximum(stats[name][0], a)
            else:
                stats[name] = [a, rows]
        hooks.append(m.register_forward_hook(hook))
    try:
        batches()
    finally:
        for h in hooks:
            h.remove()
    return {k: (a, rows) for k, (a, rows) in stats.items()}


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


def _FBGEMM_CPU(module) -> bool:
    p = next(module.parameters(), None)
    return "fbgemm" in torch.backends.quantized.supported_engines and (p is None or p.device.type == "cpu")


def _min_ms(fns: list, x: torch.Tensor, rounds: int = 7, target_s: float = 0.002) -> list[float]:
    """The fastest of `rounds` alternating rounds (milliseconds per call) of each fn(x),
    each round repeating the call for about `target_s`."""
    for fn in fns:
        fn(x)
    t0 = time.perf_counter()
    fns[0](x)
    reps = max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-7))))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(x)
            best[i] = min(best[i], (time.perf_counter() - t0) / reps * 1e3)
    return best


@torch.no_grad()
def int8_timings(lin: nn.Module, q: Int8Linear, rows: tuple = (1,)) -> dict:
    """{row count: (float ms, int8 ms)} of one call of the layer on inputs of each row
    count in `rows` (1: a decode step; more: a prompt read at once, scoring), called as
    genlab's decoders call it: the float layer's kernel directly, the int8 layer as a
    module."""
    w, b = float_weight(lin).detach(), lin.bias
    fp = lambda x: torch.nn.functional.linear(x, w, b)  # noqa: E731
    out = {}
    for n in rows:
        x = torch.randn(n, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device)
        out[n] = tuple(_min_ms([fp, q], x))
    return out


def _why(n: int, t: tuple) -> str:
    return f"int8 {t[1] * 1e3:.0f} us vs float {t[0] * 1e3:.0f} us at {n} input row{'s' * (n > 1)}"


def slower_in_int8(lin: nn.Module, q: Int8Linear, rows: tuple = (1,)) -> str | None:
    """Why int8 loses to float on this layer at some row count of `rows` (None: it never
    does)."""
    for n, t in int8_timings(lin, q, rows).items():
        if t[1] > t[0]:
            return _why(n, t)
    return None


def float_note(kept: dict, slower_later: dict | None = None) -> str:
    """What the log says about the layers timing kept in float (and the int8 layers that
    lose only on long inputs)."""
    if not kept:
        note = "; int8 was at least as fast as float on every layer at one input row"
    else:
        first = next(iter(kept.items()))
        note = (f"; {len(kept)} layer{'s' * (len(kept) > 1)} kept in float, where int8 was slower at one input row "
                f"(e.g. {first[0]}: {first[1]}; all in the config's compress.float_layers)")
    if slower_later:
        first = next(iter(slower_later.items()))
        note += (f"; {len(slower_later)} int8 layer{'s' * (len(slower_later) > 1)} faster at one row but slower on "
                 f"large inputs (a long prompt, a big batch; e.g. {first[0]}: {first[1]}; "
                 f"compress.int8_slower_on_large_inputs)")
    return note


@torch.no_grad()
def int8(module: nn.Module, batches=None, alpha: float = DEFAULT_ALPHA, tolerance: float = 1.0,
         timed_rows: tuple | None = None) -> tuple[int, int, dict]:
    """Quantize `module`'s Linear layers to int8 in place (plain per-token int8 without
    `batches`). With calibration batches: smoothing factors from their activation ranges,
    and, per layer, one int8 range per call (faster) instead of one per token wherever
    that keeps the layer's mean relative output error on the calibration tokens within
    `tolerance` times the per-token error (Gaussian tokens: 1.5x; tokens of very
    different sizes: 40x). With `timed_rows` (row counts, such as (1, 256)), every layer
    is timed in float and in int8 at those shapes; it stays float where int8 is slower at
    the first (a decode step: what generation speed is made of), and where it is slower
    only at the others (a long prompt read at once, a big batch) that is recorded, not
    acted on. Returns (layers in int8, int8 layers with per-token ranges, {layer kept
    float: why}, {int8 layer slower on the larger inputs: why})."""
    if batches is None:
        n = quantize_int8(module)
        return n, n, {}, {}
    timed_rows = timed_rows if _FBGEMM_CPU(module) else None   # weight-only int8 elsewhere: nothing to time
    stats = calibrate(module, batches)
    floats = linear_layers(module)
    smooth = smoothing(module, {k: a for k, (a, _) in stats.items()}, alpha)
    per_token, kept, slower_later = {}, {}, {}
    for name, lin in floats.items():
        q = Int8Linear.from_float(lin, smooth.get(name))
        if name in stats:
            x = stats[name][1]
            ref = lin(x)
            xs = x / q.smooth
            # mean relative error per token: a small token rounded away counts as much as a large one
            err = [float(((q.matmul(xs, pt) - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-12)).mean())
                   for pt in (True, False)]
            per_token[name] = int(err[1] > tolerance * err[0])
            q.per_token.fill_(per_token[name])
        if timed_rows:
            times = int8_timings(lin, q, timed_rows)
            first = timed_rows[0]
            if times[first][1] > times[first][0]:
                kept[name] = _why(first, times[first])
            else:
                later = [_why(n, t) for n, t in times.items() if n != first and t[1] > t[0]]
                if later:
                    slower_later[name] = later[0]
    n = quantize_int8(module, skip=set(kept), smooth=smooth)
    for name, q in module.named_modules():
        if isinstance(q, Int8Linear) and name in per_token:
            q.per_token.fill_(per_token[name])
            q._flags = None
    pt = sum(int(m.per_token.item()) for m in module.modules() if isinstance(m, Int8Linear))
    return n, pt, kept, slower_later
