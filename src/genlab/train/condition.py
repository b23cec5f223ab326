"""Conditions of training images, in the form the networks take them.

A conditional generator is trained on (image, condition) pairs and generates for a
condition drawn from the data. `Conditioner` is that one interface for the three kinds:

- `none`: no condition;
- `class`: the image's label;
- `text`: one of the image's captions, drawn afresh each time the image is seen, as its
  MiniLM embedding (computed once per unique caption, encoders/text.py) or as word ids
  for the learned encoder.

The loop hands a task `targets()[idx]` for the batch's images (labels, or the images'
indices for text); the task calls `real(y)` for the batch's conditions, `draw(b)` for
conditions of generated images, and, for text, `mismatch` for the matching-aware
discriminator's negatives (Reed et al., 2016: a real image with another image's caption).
Every random draw uses the global torch RNG (or a given generator), so a resumed run draws
what the uninterrupted one would have.
"""
from __future__ import annotations

import torch

from ..data import ImageData, data_root
from ..encoders.text import LEARNED_DIM, EmbeddingStore, WordVocab
from ..util.errors import GenlabError, check

KINDS = ("none", "class", "text")


class Conditioner:
    kind = "none"

    def targets(self, data: ImageData):
        return None

    def real(self, y):
        """(condition for the model, a key telling conditions apart) of a real batch."""
        return None, None

    def draw(self, b: int, device, generator: torch.Generator | None = None):
        return None, None

    def grid(self, n: int):
        return None

    def test_conditions(self, data: ImageData):
        """One condition per test image (for the test ELBO)."""
        return None

    def mismatch(self, c, key):
        """(other images' conditions, weight 1 where the condition really differs)."""
        return None, None


class ClassCondition(Conditioner):
    kind = "class"

    def __init__(self, num_classes: int):
        self.k = num_classes

    def targets(self, data):
        return data.train_y

    def real(self, y):
        return y, y

    def draw(self, b, device, generator=None):
        if generator is not None:
            y = torch.randint(0, self.k, (b,), generator=generator)
        else:
            y = torch.randint(0, self.k, (b,), device=device)
        return y, y

    def grid(self, n):
        return torch.arange(n) % self.k

    def test_conditions(self, data):
        return data.test_y


class TextCondition(Conditioner):
    """`table`: one row per unique caption (MiniLM embeddings, or word ids); `start` /
    `count`: where each training image's caption ids begin in `ids` and how many it has."""

    kind = "text"

    def __init__(self, table: torch.Tensor, ids: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                 labels: torch.Tensor | None, test_first: torch.Tensor, grid_images: torch.Tensor):
        self.table, self.ids, self.start, self.count = table, ids, start, count
        self.labels, self.test_first, self.grid_images = labels, test_first, grid_images
        self._dev = None

    def _on(self, device):
        if self._dev != torch.device(device):
            self._dev = torch.device(device)
            for k in ("table", "ids", "start", "count", "labels"):
                v = getattr(self, k)
                if v is not None:
                    setattr(self, k, v.to(self._dev))

    def targets(self, data):
        return torch.arange(len(data.train_x))

    def _caption(self, idx, generator=None):
        if generator is not None:
            u = torch.rand(len(idx), generator=generator).to(self._dev)
        else:
            u = torch.rand(len(idx), device=self._dev)
        j = self.start[idx] + (u * self.count[idx]).long()
        return self.ids[j]

    def real(self, y):
        self._on(y.device)
        cap = self._caption(y)
        key = self.labels[y] if self.labels is not None else cap
        return self.table[cap], key

    def draw(self, b, device, generator=None):
        self._on(device)
        n = len(self.start)
        if generator is not None:
            idx = torch.randint(0, n, (b,), generator=generator).to(self._dev)
            cap = self._caption(idx, generator)
        else:
            idx = torch.randint(0, n, (b,), device=self._dev)
            cap = self._caption(idx)
        key = self.labels[idx] if self.labels is not None else cap
        return self.table[cap], key

    def grid(self, n):
        self._on("cpu")
        idx = self.grid_images[torch.arange(n) % len(self.grid_images)]
        return self.table[self.ids[self.start[idx]]]

    def test_conditions(self, data):
        self._on("cpu")
        return self.table[self.test_first]

    def mismatch(self, c, key):
        perm = torch.roll(torch.arange(len(c), device=c.device), 1)
        return c[perm], (key != key[perm]).to(torch.float32)


def caption_table(data: ImageData):
    """(unique captions, caption ids of each training image as (ids, start, count), the
    first caption id of each test image)."""
    train, test = data.captions("train"), data.captions("test")
    check(all(train) and all(test), f"{data.name}: every image needs at least one caption")
    texts = sorted({c for cs in train for c in cs} | {cs[0] for cs in test})
    index = {t: i for i, t in enumerate(texts)}
    flat, start, count = [], [], []
    for cs in train:
        start.append(len(flat))
        count.append(len(cs))
        flat += [index[c] for c in cs]
    return (texts, torch.tensor(flat), torch.tensor(start), torch.tensor(count),
            torch.tensor([index[cs[0]] for cs in test]))


def text_spec(data: ImageData, encoder: str) -> dict:
    """What config.json keeps of a text condition: the encoder, and for the learned one its
    vocabulary (the training captions' words)."""
    if encoder == "learned":
        texts = {c for cs in data.captions("train") for c in cs}
        vocab = WordVocab.build(sorted(texts))
        return {"kind": "text", "encoder": "learned", "dim": LEARNED_DIM, "vocab": vocab.words}
    return {"kind": "text", "encoder": "minilm", "dim": 384}


def make_conditioner(spec: dict | None, data: ImageData, num_classes: int = 0, log=None) -> Conditioner:
    """The conditioner of a run's condition spec (config["condition"]); without one, the
    class when the model has classes (runs from before text conditioning)."""
    kind = (spec or {}).get("kind") or ("class" if num_classes else "none")
    if kind == "none":
        return Conditioner()
    if kind == "class":
        return ClassCondition(num_classes)
    if kind != "text":
        raise GenlabError(f"unknown condition kind '{kind}' ({', '.join(KINDS)})")
    texts, flat, start, count, test_first = caption_table(data)
    if spec.get("encoder") == "learned":
        table = WordVocab(spec["vocab"]).encode(texts)
    else:
        table = EmbeddingStore(data_root() / "text-embeddings").embed(texts, log=log)
    labels = data.train_y if data.train_y is not None else None
    if labels is not None and data.num_classes:
        grid_images = torch.stack([torch.nonzero(labels == k)[0, 0] for k in range(data.num_classes)
                                   if (labels == k).any()])
    else:
        grid_images = torch.arange(min(8, len(data.train_x)))
    return TextCondition(table, flat, start, count, labels, test_first, grid_images)
