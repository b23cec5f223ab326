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

from ..runs import atomic_path


def file_bytes(path) -> int:
    """Size on disk of a weights file, or of every *.safetensors file in a folder."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("*.safetensors"))
    return p.stat().st_size


@torch.inference_mode()
def latency_ms(fn, min_repeats: int = 5, min_seconds: float = 1.0) -> float:
    """Median milliseconds of fn() over at least `min_repeats` calls and `min_seconds`,
    after two warm-up calls."""
    fn()
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times) * 1e3


def tokens_per_second(tm, prompt_ids: list, n_tokens: int) -> tuple[float, int]:
    """(tokens/s, tokens) of greedy generation at batch 1 with the KV cache."""
    g = torch.Generator().manual_seed(0)
    it = tm._token_ids(list(prompt_ids), 4, 0.0, None, None, g, True)
    for _ in it:   # warm-up (allocations, prepacking)
        pass
    t0 = time.perf_counter()
    n = sum(1 for _ in tm._token_ids(list(prompt_ids), n_tokens, 0.0, None, None, g, True))
    return n / (time.perf_counter() - t0), n


def lm_row(name: str, tm, module, ids: np.ndarray, window: int, batch: int, gen_tokens: int,
           weights_path, params: int) -> dict:
    """Measure a language model: `module` (forward(idx) -> (logits, _)) for latency and
    loss, `tm` (a TextModel) for generation speed."""
    from ..train.lm import sliding_loss, windows
    module.eval()
    x1, _ = windows(ids, [0], window)
    starts = np.linspace(0, len(ids) - window - 1, batch).astype(np.int64).tolist()
    xb, _ = windows(ids, starts, window)
    loss, n = sliding_loss(module, ids, window, stride=window, batch=batch)
    tps, _ = tokens_per_second(tm, ids[:16].tolist(), gen_tokens)
    return {"model": name, "params": params, "disk_bytes": file_bytes(weights_path),
            "latency_b1_ms": latency_ms(lambda: module(x1)),
            "latency_batch_ms": latency_ms(lambda: module(xb)), "batch": batch, "window": window,
            "tokens_per_s": tps, "val_loss": loss, "perplexity": math.exp(loss), "eval_tokens": n}


def image_row(name: str, decode, latent_dim: int, batch: int, quality: dict, weights_path,
              params: int) -> dict:
    """Measure an image generator: `decode(z)` maps latents (B, latent_dim) to images."""
    g = torch.Generator().manual_seed(0)
    z1, zb = torch.randn(1, latent_dim, generator=g), torch.randn(batch, latent_dim, generator=g)
    return {"model": name, "params": params, "disk_bytes": file_bytes(weights_path),
            "latency_b1_ms": latency_ms(lambda: decode(z1)), "latency_batch_ms": latency_ms(lambda: decode(zb)),
            "batch": batch, **quality}


# -- the table -----------------------------------------------------------------------------

QUALITY = {"val_loss": ("val loss", "{:.4f}"), "perplexity": ("perplexity", "{:.3f}"),
           "test_loss": ("test loss", "{:.2f}"), "fid": ("FID", "{:.2f}")}


def _size(b: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


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
                 f"{a['latency_b1_ms'] / b['latency_b1_ms']:.2f}x speed-up",
                 f"{a['latency_batch_ms'] / b['latency_batch_ms']:.2f}x speed-up"]
        if "tokens/s" in heads:
            cells.append(f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x")
        cells += [f"{(b[k] - a[k]) / abs(a[k]):+.2%}" for k in quality]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def threads_note() -> str:
    return f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}"


def write_report(out: Path, rows: list[dict], extra: dict) -> dict:
    """Write report.json (every figure) and report.md (the table) into `out`."""
    text = table(rows)
    rep = {**extra, "rows": rows, "table": text, "out": str(out)}
    with atomic_path(out / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(rep, indent=2))
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text(text + "\n")
    return rep
