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
import torch.nn.functional as F

from ..models.int8 import Int8Linear, quantize_int8
from ..models.layers import float_weight, linear_layers

# measured on SmolLM2, held-out perplexity on 8,192 tokens of Shakespeare: alpha 0 (plain per-token)
# +11%, 0.5 +2.6%, 0.6 +1.9%, 0.7 +1.9%, 0.8 +3.5%, 0.85 +3.9%
DEFAULT_ALPHA = 0.7


@torch.no_grad()
def calibrate(module: nn.Module, batches, keep_rows: int = 256, shared: dict | None = None
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (max |input| per input channel, up to `keep_rows` input rows spread
    over the calls)} over the forward passes `batches()` makes (a callable that runs the
    model). With a dict `shared`, it is filled with {layer name: group id}, layers of one
    group reading the very same input tensor (q, k and v; gate and up)."""
    stats: dict[str, list] = {}
    seen: dict = {}
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
                if shared is not None:   # the first call: which layers read this same tensor
                    key = (inp[0].data_ptr(), tuple(inp[0].shape), inp[0]._version)
                    shared[name] = seen.setdefault(key, len(seen))
        hooks.append(m.register_forward_hook(hook))
    try:
        batches()
    finally:
        for h in hooks:
            h.remove()
    return {k: (a, rows) for k, (a, rows) in stats.items()}


def smoothing(module: nn.Module, amax: dict[str, torch.Tensor], alpha: float,
              shared: dict | None = None) -> dict[str, torch.Tensor]:
    """SmoothQuant factors for every calibrated layer (none when alpha is 0). Layers that
    read the same input (`shared`: {name: group}) get one factor from their weights
    together, as SmoothQuant does for q/k/v, so the decoders can fuse them into one int8
    product."""
    if alpha == 0:
        return {}
    layers = linear_layers(module)
    wmax = {n: float_weight(m).detach().float().abs().amax(dim=0) for n, m in layers.items() if n in amax}
    groups: dict = {}
    for n in wmax:
        groups.setdefault((shared or {}).get(n, n), []).append(n)
    out = {}
    for names in groups.values():
        w = torch.stack([wmax[n] for n in names]).amax(dim=0).clamp(min=1e-5)
        a = torch.stack([amax[n] for n in names]).amax(dim=0)
        # a channel (nearly) silent in calibration may not be at run time (a border
        # pixel): its factor is floored as if it reached 1% of the median channel
        a = a.clamp(min=max(0.01 * float(a.median()), 1e-5))
        s = (a ** alpha / w ** (1 - alpha)).clamp(min=1e-5)
        for n in names:
            out[n] = s
    return out


def _FBGEMM_CPU(module) -> bool:
    p = next(module.parameters(), None)
    return "fbgemm" in torch.backends.quantized.supported_engines and (p is None or p.device.type == "cpu")


@torch.no_grad()
def int8_timings(units: dict, rows: tuple = (1,), rounds: int = 7) -> dict:
    """{unit: {row count: (float ms, int8 ms)}} for units {name: (float fn, int8 fn,
    in_features, device)}: one call of each on inputs of each row count in `rows` (1: a
    decode step; more: a prompt read at once, scoring), the units called in the model's
    order in sweeps -- all float, then all int8 -- so each call finds the CPU's caches as
    a pass through the model leaves them (a model larger than the caches streams its
    weights from memory; a small one keeps them there). The fastest of `rounds` sweeps."""
    out = {n: {} for n in units}
    for r in rows:
        xs = {n: torch.randn(r, u[2], generator=torch.Generator().manual_seed(0)).to(u[3]) for n, u in units.items()}
        best = [{n: float("inf") for n in units} for _ in (0, 1)]
        for i in (0, 1):
            for n, u in units.items():          # warm-up (fbgemm packs its weights on the first call)
                u[i](xs[n])
            for _ in range(rounds):
                for n, u in units.items():
                    t0 = time.perf_counter()
                    u[i](xs[n])
                    best[i][n] = min(best[i][n], time.perf_counter() - t0)
        for n in units:
            out[n][r] = (best[0][n] * 1e3, best[1][n] * 1e3)
    return out


def _float_fn(lins: list):
    """How genlab's decoders call float layers that share an input: one kernel call each."""
    ws = [(float_weight(m).detach(), m.bias) for m in lins]
    return lambda x: [F.linear(x, w, b) for w, b in ws]


def _units(floats: dict, qs: dict, shared: dict) -> dict:
    """Timing units: a layer alone, or the layers reading one input (q/k/v, gate/up), in
    float one call each and in int8 as the one fused product the decoders make of them."""
    groups: dict = {}
    for name in floats:
        groups.setdefault(shared.get(name, name), []).append(name)
    units = {}
    for names in groups.values():
        lins, ints = [floats[n] for n in names], [qs[n] for n in names]
        q = Int8Linear.concat(ints) if Int8Linear.fusable(ints) else (ints[0] if len(ints) == 1 else None)
        w = float_weight(lins[0])
        units[tuple(names)] = (_float_fn(lins), q if q is not None else (lambda x, ints=ints: [m(x) for m in ints]),
                               w.shape[1], w.device)
    return units


def _why(n: int, t: tuple) -> str:
    return f"int8 {t[1] * 1e3:.0f} us vs float {t[0] * 1e3:.0f} us at {n} input row{'s' * (n > 1)}"


def slower_in_int8(lin: nn.Module, q: Int8Linear, rows: tuple = (1,)) -> str | None:
    """Why int8 loses to float on this one layer at some row count of `rows` (None: it
    never does)."""
    for n, t in int8_timings(_units({"layer": lin}, {"layer": q}, {}), rows)[("layer",)].items():
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
         timed_rows: tuple | None = None) -> tuple[int, int, dict, dict]:
    """Quantize `module`'s Linear layers to int8 in place (plain per-token int8 without
    `batches`). With calibration batches: smoothing factors from their activation ranges,
    and, per layer, one int8 range per call (faster) instead of one per token wherever
    that keeps the layer's mean relative output error on the calibration tokens within
    `tolerance` times the per-token error (Gaussian tokens: 1.5x; tokens of very
    different sizes: 40x). With `timed_rows` (row counts, such as (1, 256)), every layer
    is timed in float and in int8 at those shapes, in sweeps through the model (see
    int8_timings); it stays float where int8 is slower at
    the first (a decode step: what generation speed is made of), and where it is slower
    only at the others (a long prompt read at once, a big batch) that is recorded, not
    acted on. Returns (layers in int8, int8 layers with per-token ranges, {layer kept
    float: why}, {int8 layer slower on the larger inputs: why})."""
    if batches is None:
        n = quantize_int8(module)
        return n, n, {}, {}
    timed_rows = timed_rows if _FBGEMM_CPU(module) else None   # weight-only int8 elsewhere: nothing to time
    shared: dict = {}
    stats = calibrate(module, batches, shared=shared)
    floats = linear_layers(module)
    smooth = smoothing(module, {k: a for k, (a, _) in stats.items()}, alpha, shared)
    per_token, kept, slower_later, qs = {}, {}, {}, {}
    for name, lin in floats.items():
        q = qs[name] = Int8Linear.from_float(lin, smooth.get(name))
        if name in stats:
            x = stats[name][1]
            ref = lin(x)
            xs = x / q.smooth
            # mean relative error per token: a small token rounded away counts as much as a large one
            err = [float(((q.matmul(xs, pt) - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-12)).mean())
                   for pt in (True, False)]
            per_token[name] = int(err[1] > tolerance * err[0])
            q.per_token.fill_(per_token[name])
            q._flags = None
    if timed_rows:
        for name, group in shared.items():   # one activation range rule per shared input, so they fuse
            mates = [n for n, g in shared.items() if g == group and n in per_token]
            if name in per_token and mates:
                per_token[name] = max(per_token[n] for n in mates)
                qs[name].per_token.fill_(per_token[name])
                qs[name]._flags = None
        first = timed_rows[0]
        for names, times in int8_timings(_units(floats, qs, shared), timed_rows).items():
            what = "" if len(names) == 1 else f" ({' + '.join(n.rsplit('.', 1)[-1] for n in names)}, one input)"
            if times[first][1] > times[first][0]:
                for name in names:
                    kept[name] = _why(first, times[first]) + what
            else:
                later = [_why(n, t) + what for n, t in times.items() if n != first and t[1] > t[0]]
                for name in names if later else ():
                    slower_later[name] = later[0]
    del qs
    n = quantize_int8(module, skip=set(kept), smooth=smooth)
    for name, q in module.named_modules():
        if isinstance(q, Int8Linear) and name in per_token:
            q.per_token.fill_(per_token[name])
            q._flags = None
    pt = sum(int(m.per_token.item()) for m in module.modules() if isinstance(m, Int8Linear))
    return n, pt, kept, slower_later
