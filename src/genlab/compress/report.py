"""The compression report: one row per model -- original and compressed, measured in the
same process, on the same inputs -- and the table every `genlab compress` prints.

Latency is the median wall time of a forward pass (a full context window of held-out
tokens for a language model; a batch of latents -> images for a VAE decoder or GAN
generator), after warm-up, at batch 1 and at a larger batch. Generation speed is greedy
decoding with the KV cache at batch 1, as `genlab generate` runs it.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizer import windows
from ..metrics.text import sliding_loss
from ..util.io import write_text_atomic


def file_bytes(path) -> int:
    """Size on disk of a weights file, or of every *.safetensors file in a folder."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("*.safetensors"))
    return p.stat().st_size


@torch.inference_mode()
def paired_latency(fns: list, min_rounds: int = 7, min_seconds: float = 2.0) -> list[float]:
    """Median milliseconds of each fn(), measured in alternating rounds (one call of each
    per round, so drift and noise on a shared machine fall on all of them alike), after
    two warm-up calls each; at least `min_rounds` rounds and `min_seconds`."""
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_rounds or (time.perf_counter() - start < min_seconds and len(times[0]) < 200):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _generated(tm, prompt_ids: list, n_tokens: int) -> int:
    g = torch.Generator().manual_seed(0)
    return sum(1 for _ in tm._token_ids(list(prompt_ids), n_tokens, 0.0, None, None, g, True))


def tokens_per_second(tms: list, prompt_ids: list, n_tokens: int, min_rounds: int = 3,
                      min_seconds: float = 4.0) -> list[float]:
    """Greedy generation speed (tokens/s at batch 1, KV cache) of each TextModel, the
    median of alternating runs (at least `min_rounds`, and `min_seconds` in all) after a
    short warm-up."""
    for tm in tms:
        _generated(tm, prompt_ids, 4)
    rates = [[] for _ in tms]
    start = time.perf_counter()
    while len(rates[0]) < min_rounds or (time.perf_counter() - start < min_seconds and len(rates[0]) < 50):
        for r, tm in zip(rates, tms):
            t0 = time.perf_counter()
            n = _generated(tm, prompt_ids, n_tokens)
            r.append(n / (time.perf_counter() - t0))
    return [statistics.median(r) for r in rates]


def lm_rows(entries: list[tuple], ids: np.ndarray, window: int, batch: int, gen_tokens: int) -> list[dict]:
    """Measure language models side by side. entries: (name, text model, module, weights
    path, parameter count), the module being forward(idx) -> (logits, _)."""
    x1, _ = windows(ids, [0], window)
    starts = np.linspace(0, len(ids) - window - 1, batch).astype(np.int64).tolist()
    xb, _ = windows(ids, starts, window)
    rows = []
    for name, tm, module, weights, params in entries:
        module.eval()
        loss, n = sliding_loss(module, ids, window, stride=window, batch=batch)
        rows.append({"model": name, "params": params, "disk_bytes": file_bytes(weights), "batch": batch,
                     "window": window, "val_loss": loss, "perplexity": math.exp(loss), "eval_tokens": n})
    mods = [e[2] for e in entries]
    lat1 = paired_latency([lambda m=m: m(x1) for m in mods])
    latb = paired_latency([lambda m=m: m(xb) for m in mods])
    tps = tokens_per_second([e[1] for e in entries], ids[:16].tolist(), gen_tokens)
    for r, a, b, t in zip(rows, lat1, latb, tps):
        r.update(latency_b1_ms=a, latency_batch_ms=b, tokens_per_s=t)
    return rows


def image_rows(entries: list[tuple], latent_dim: int, batch: int) -> list[dict]:
    """Measure image generators side by side. entries: (name, decode(z) -> images,
    quality dict, weights path, parameter count)."""
    g = torch.Generator().manual_seed(0)
    z1, zb = torch.randn(1, latent_dim, generator=g), torch.randn(batch, latent_dim, generator=g)
    lat1 = paired_latency([lambda d=e[1]: d(z1) for e in entries])
    latb = paired_latency([lambda d=e[1]: d(zb) for e in entries])
    return [{"model": name, "params": params, "disk_bytes": file_bytes(weights), "latency_b1_ms": a,
             "latency_batch_ms": b, "batch": batch, **quality}
            for (name, _, quality, weights, params), a, b in zip(entries, lat1, latb)]


# -- the table -----------------------------------------------------------------------------

QUALITY = {"val_loss": ("val loss", "{:.4f}"), "perplexity": ("perplexity", "{:.3f}"),
           "test_loss": ("test loss", "{:.2f}"), "fid": ("FID", "{:.2f}")}


def _size(b: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def _speed(ratio: float, word: str = "") -> str:
    """A speed ratio (new / old); below 1 it is flagged, not just shown."""
    return f"{ratio:.2f}x{word}" if ratio >= 1 else f"**{ratio:.2f}x: SLOWER**"


def slower(rows: list[dict]) -> list[str]:
    """The measures on which the compressed model (last row) is slower than the original."""
    a, b = rows[0], rows[-1]
    out = [f"latency at batch {k}" for k, key in ((1, "latency_b1_ms"), (a["batch"], "latency_batch_ms"))
           if b[key] > a[key]]
    if "tokens_per_s" in a and "tokens_per_s" in b and b["tokens_per_s"] < a["tokens_per_s"]:
        out.append("generation (tokens/s)")
    return out


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows, with the last row's ratio to the first beneath."""
    quality = [k for k in QUALITY if all(k in r for r in rows)]
    heads = ["model", "params", "size on disk", "latency b=1", f"latency b={rows[0]['batch']}"]
    if all("tokens_per_s" in r for r in rows):
        heads.append("tokens/s")
    heads += [QUALITY[k][0] for k in quality]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", _size(r["disk_bytes"]), f"{r['latency_b1_ms']:.2f} ms",
                 f"{r['latency_batch_ms']:.1f} ms"]
        if "tokens/s" in heads:
            cells.append(f"{r['tokens_per_s']:.1f}")
        cells += [QUALITY[k][1].format(r[k]) for k in quality]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        cells = ["change", f"{b['params'] / a['params']:.2f}x", f"{a['disk_bytes'] / b['disk_bytes']:.2f}x smaller",
                 _speed(a['latency_b1_ms'] / b['latency_b1_ms'], " speed-up"),
                 _speed(a['latency_batch_ms'] / b['latency_batch_ms'], " speed-up")]
        if "tokens/s" in heads:
            cells.append(_speed(b['tokens_per_s'] / a['tokens_per_s']))
        cells += [f"{(b[k] - a[k]) / abs(a[k]):+.2%}" for k in quality]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def threads_note() -> str:
    return f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}"


def write_report(out: Path, rows: list[dict], extra: dict) -> dict:
    """Write report.json (every figure) and report.md (the table) into `out`."""
    text = table(rows)
    slow = slower(rows) if len(rows) >= 2 else []
    if slow:
        text += "\n\n**The compressed model is slower than the original** in " + ", ".join(slow) + " on this machine."
    for key, title in (("float_layers", "Kept in float, since int8 was slower there"),
                       ("int8_slower_on_large_inputs", "In int8, though slower than float on large inputs")):
        layers = extra.get(key) or {}
        if layers:
            listed = [f"{n}: {why}" for n, why in list(layers.items())[:12]]
            more = f" (and {len(layers) - 12} more: report.json)" if len(layers) > 12 else ""
            text += f"\n\n{title} ({len(layers)} layers{more}):\n" + "\n".join(f"- {x}" for x in listed)
    rep = {**extra, "rows": rows, "table": text, "slower": slow, "out": str(out)}
    write_text_atomic(out / "report.json", json.dumps(rep, indent=2))
    write_text_atomic(out / "report.md", text + "\n")
    return rep
