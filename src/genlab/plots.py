"""Pictures: image grids (PNG) and loss plots. Knows nothing of models or runs."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .util.io import atomic_path


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


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int = 2, pad: int = 2) -> Path:
    """Write a PNG grid atomically; `scale` enlarges small images for viewing."""
    arr = grid_array(images, nrow, pad=pad)
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def save_array(images: torch.Tensor, path) -> Path:
    """(N, C, H, W) in [0, 1] -> float32 .npy of shape (N, H, W) or (N, H, W, C)."""
    x = images.detach().float().clamp(0, 1).cpu()
    arr = x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr.astype(np.float32))
    return path


def save_loss_plot(records: list[dict], path, keys=("train_loss", "test_loss"), title: str = "",
                   labels: dict | None = None, ylabel: str = "loss", x: str = "epoch",
                   kinds: tuple = ("epoch",)) -> Path | None:
    """Plot losses from metrics records: `keys` against `x` (epoch, or iter for language
    models), from the records of the given `kinds`."""
    labels = labels or {}
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib  # heavy (~0.5 s): only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
