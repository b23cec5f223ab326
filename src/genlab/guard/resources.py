"""The text genlab ships for the game: secret words, the benign requests and the input
guard's training examples (guard/data/*.txt, one item per line, # comments)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data"


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


@lru_cache(maxsize=None)
def secret_words() -> tuple:
    return tuple(_lines("secrets.txt"))


@lru_cache(maxsize=None)
def benign_requests() -> tuple:
    return tuple(_lines("benign.txt"))


@lru_cache(maxsize=None)
def intent_examples() -> tuple[list, list]:
    """(labels: 1 attack / 0 benign, texts) of the input guard's training set."""
    labels, texts = [], []
    for ln in _lines("intent.txt"):
        kind, _, text = ln.partition("\t")
        labels.append(1 if kind == "attack" else 0)
        texts.append(text.strip())
    return labels, texts
