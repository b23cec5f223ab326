"""Pictures: image grids (PNG) and loss plots. Knows nothing of models or runs."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .util.dist import writer
from .util.io import atomic_path, write_bytes_atomic


def grid_array(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 (H', W') or (H', W', 3) grid image."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad) * 0.5
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    arr = (grid * 255).round().to(torch.uint8).numpy()
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def png_bytes(images: torch.Tensor, nrow: int | None = None, scale: int = 2, pad: int = 2) -> bytes:
    """A PNG grid as bytes; `scale` enlarges small images for viewing."""
    arr = grid_array(images, nrow, pad=pad)
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(images: torch.Tensor) -> bytes:
    """(N, C, H, W) in [0, 1] -> a float32 .npy file's bytes, shape (N, H, W) or (N, H, W, C)."""
    x = images.detach().float().clamp(0, 1).cpu()
    arr = x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int = 2, pad: int = 2) -> Path:
    """Write a PNG grid atomically; `scale` enlarges small images for viewing."""
    path = Path(path)
    write_bytes_atomic(path, png_bytes(images, nrow, scale=scale, pad=pad))
    return path


def save_array(images: torch.Tensor, path) -> Path:
    """(N, C, H, W) in [0, 1] -> float32 .npy of shape (N, H, W) or (N, H, W, C)."""
    path = Path(path)
    write_bytes_atomic(path, npy_bytes(images))
    return path


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib  # heavy (~0.5 s): only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def save_loss_plot(records: list[dict], path, keys=("train_loss", "test_loss"), title: str = "",
                   labels: dict | None = None, ylabel: str = "loss", x: str = "epoch",
                   kinds: tuple = ("epoch",)) -> Path | None:
    """Plot losses from metrics records: `keys` against `x` (epoch, or iter for language
    models), from the records of the given `kinds`. (Under torchrun rank 0 alone draws it.)"""
    if not writer():
        return None
    labels = labels or {}
    plt = _pyplot()

    rows = [r for r in records if x in r and r.get("kind", "epoch") in kinds]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for k in keys:
        pts = [(r[x], r[k]) for r in rows if k in r]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) <= 50 else None,
                    label=labels.get(k, k.replace("_", " ")))
    ax.set_xlabel("iteration" if x == "iter" else x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def save_heatmap(values, rows: list, cols: list, path, title: str = "", labels=None, vmax: float = 1.0,
                 xlabel: str = "", ylabel: str = "") -> Path:
    """A table of rates as a heatmap: values[i][j] in [0, vmax] (None: an empty cell), with
    each cell's text from labels[i][j] (default: the value as a percentage)."""
    plt = _pyplot()

    arr = np.array([[np.nan if v is None else float(v) for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(cols) + 2.5), max(2.5, 0.45 * len(rows) + 1.8)), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(arr), cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=55, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=8)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            if np.isnan(arr[i, j]):
                continue
            text = labels[i][j] if labels else f"{arr[i, j]:.0%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if arr[i, j] > 0.6 * vmax else "black")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    return _save_figure(fig, path)
