"""What a conditional generator reads its condition through.

`TextEmbedding` turns a text condition into one vector of unit RMS (length sqrt(dim)):
a sentence embedding (B, dim) -- MiniLM's, computed outside the model -- passes through,
normalised; word ids (B, L) of the learned encoder (0 pads) become the mean of word
vectors trained with the model. `condition_vector` is the same for any condition: a class
label becomes its one-hot vector. A vector already in the model's space (e.g. a point on
the line between two prompts' embeddings) passes through either.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class TextEmbedding(nn.Module):
    def __init__(self, dim: int, vocab_size: int = 0):
        super().__init__()
        self.dim = dim
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0) if vocab_size else None

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if not c.is_floating_point():
            if self.words is None:
                raise ValueError("this model reads sentence embeddings, not word ids")
            c = self.words(c)
        return F.normalize(c, dim=-1) * math.sqrt(self.dim)


def condition_vector(c: torch.Tensor, num_classes: int, text: TextEmbedding | None) -> torch.Tensor:
    """The condition as a float vector: the text embedding, or a label's one-hot vector."""
    if text is not None:
        return text(c)
    return c if c.is_floating_point() else F.one_hot(c, num_classes).float()
