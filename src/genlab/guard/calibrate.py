"""Thresholds of the guards that read a model, measured once per model on the input
guard's training examples (guard/data/intent.txt: natural requests and natural attacks,
none of them in the benign evaluation set) and cached in $GENLAB_DATA/guard/:

- the perplexity filter: the highest windowed loss over all of them, plus a margin;
- the self-check: the judge's score (guard/judge.py) that 98% of the benign examples stay
  under, read as messages (input) and as replies (output)."""
from __future__ import annotations

import hashlib
import json

import torch

from ..data.sources import data_root
from ..util.io import write_text_atomic
from .judge import judge_margin, window_nll
from .resources import intent_examples

MARGIN = 0.5    # nats above the most surprising ordinary window
WINDOW = 10


def _key(model) -> str:
    name = str(getattr(model, "path", None) or getattr(model, "name", "model"))
    n = sum(p.numel() for p in model.scoring_module().parameters())
    return hashlib.sha1(f"{name}|{n}|{WINDOW}|{MARGIN}|{len(intent_examples()[1])}".encode()).hexdigest()[:16]


def _cached(model, kind: str, compute, log, what: str) -> dict:
    p = data_root() / "guard" / f"{kind}-{_key(model)}.json"
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (ValueError, OSError):
            pass
    if log:
        log(f"calibrating the {what} on {len(intent_examples()[1])} ordinary messages (once per model; "
            f"cached in {p.parent})")
    d = compute()
    write_text_atomic(p, json.dumps(d, indent=2))
    return d


KEEP_BENIGN = 0.98


def self_check_margins(judge, log=None) -> dict:
    """{"input": margin, "output": margin} for the self-check with this judge."""
    def compute():
        labels, texts = intent_examples()
        benign = [t for lab, t in zip(labels, texts) if lab == 0]
        out = {}
        for stage in ("input", "output"):
            m = torch.tensor([judge_margin(judge, stage, t, "walrus") for t in benign])
            out[stage] = float(torch.quantile(m, KEEP_BENIGN))
        return {**out, "keep_benign": KEEP_BENIGN, "messages": len(benign)}

    return _cached(judge, "self-check-v2", compute, log, "self-check")


def perplexity_threshold(model, log=None) -> float:
    def compute():
        scores = [window_nll(model, t, WINDOW) for t in intent_examples()[1]]
        top = max(scores)
        return {"threshold": top + MARGIN, "max_ordinary": top, "margin": MARGIN, "window": WINDOW,
                "messages": len(scores)}

    return float(_cached(model, "perplexity", compute, log, "perplexity filter")["threshold"])
