"""How well a language model predicts held-out text: mean next-token loss (nats), from
which perplexity and bits per character follow. Every token is scored once, with as much
context as the window allows (a sliding window)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.tokenizer import windows


@torch.no_grad()
def sliding_loss(model, data: np.ndarray, block: int, stride: int | None = None, batch: int = 32,
                 device=None, progress=None) -> tuple[float, int]:
    """Mean next-token loss (nats) over `data`, each token predicted once with as much
    context as the window allows: windows of `block` tokens move by `stride` (default
    block/2) and only the tokens not scored by the previous window count.
    Returns (loss, tokens scored)."""
    n = len(data) - 1
    if n < 1:
        raise ValueError("need at least two tokens")
    block = min(block, n)
    stride = max(1, min(stride or block // 2, block))
    starts = list(range(0, max(n - block, 0) + 1, stride))
    if starts[-1] + block < n:
        starts.append(n - block)
    total, count, scored_to = 0.0, 0, 0
    device = device or torch.device("cpu")
    jobs = []  # (start, first position of the window to score)
    for s in starts:
        jobs.append((s, scored_to - s))
        scored_to = s + block
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        x, y = windows(data, [s for s, _ in chunk], block)
        logits, _ = model(x.to(device))
        lp = torch.log_softmax(logits.float(), dim=-1)
        nll = -lp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1)   # (B, block)
        for row, (_, first) in zip(nll, chunk):
            total += float(row[first:].sum())
            count += block - first
        if progress:
            progress(len(chunk))
    return total / count, count


def text_scores(loss: float, tokens: int, chars: int) -> dict:
    """Perplexity and bits per character from a mean loss over `tokens` tokens of `chars` characters."""
    return {"val_loss": loss, "perplexity": math.exp(loss),
            "bits_per_char": loss * tokens / math.log(2) / max(chars, 1), "chars_per_token": chars / tokens}
