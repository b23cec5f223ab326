"""The text encoders of text-conditioned generators.

- `minilm`: the frozen all-MiniLM-L6-v2 sentence embedder (minilm.py), 384-d. A dataset's
  captions are embedded once per unique caption and kept in an `EmbeddingStore`
  (safetensors, the captions in its metadata, checked on every read), so a second run --
  or a resumed one -- does not run MiniLM over them again.
- `learned`: a word vocabulary (`WordVocab`) whose word vectors the generator trains with
  itself (models/condition.py: `TextEmbedding`), the comparison that shows what a
  pre-trained encoder buys: a word never seen in training is unknown to it.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..util.io import write_bytes_atomic
from .minilm import EMBEDDER, Embedder

ENCODERS = ("minilm", "learned")
MINILM_MAX_TOKENS = 256   # the embedder's limit (longer texts are truncated)
LEARNED_DIM = 64
MAX_WORDS = 32            # the learned encoder reads at most this many words
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordVocab:
    """Words of the training captions; id 0 pads, id 1 is any unknown word."""

    def __init__(self, vocab: list[str]):
        self.words = list(vocab)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts) -> "WordVocab":
        return cls(["<pad>", "<unk>"] + sorted({w for t in texts for w in words(t)}))

    def __len__(self) -> int:
        return len(self.words)

    def too_long(self, text: str) -> bool:
        return len(words(text)) > MAX_WORDS

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), MAX_WORDS) word ids, zero-padded (texts longer than that are cut)."""
        out = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.index.get(w, 1) for w in words(t)][:MAX_WORDS]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long) if ids else out[i, :0]
        return out


_EMBEDDER: Embedder | None = None


def minilm() -> Embedder:
    """The MiniLM embedder, loaded once per process."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = Embedder()
    return _EMBEDDER


def minilm_too_long(texts: list[str]) -> list[str]:
    """The texts MiniLM will truncate (more than its 256 tokens)."""
    tok = minilm().tok
    return [t for t in texts if len(tok(t, add_special_tokens=True)["input_ids"]) > MINILM_MAX_TOKENS]


class EmbeddingStore:
    """MiniLM embeddings of a list of unique texts, cached in `root`: one safetensors file
    per list (named by a hash of the texts, which its metadata holds and every read checks)."""

    def __init__(self, root: Path):
        self.root = Path(root) / "all-minilm-l6-v2"

    def path(self, texts: list[str]) -> Path:
        key = hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:20]
        return self.root / f"{key}.safetensors"

    def embed(self, texts: list[str], log=None) -> torch.Tensor:
        """(len(texts), 384) unit-length embeddings, from the cache when it holds them."""
        p = self.path(texts)
        if p.is_file():
            try:
                t = load_file(str(p))["embeddings"]
                with safe_open(str(p), "pt") as f:
                    cached = json.loads(f.metadata().get("texts", "null"))
                if cached == texts and t.shape == (len(texts), EMBEDDER["dim"]):
                    return t
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
                pass  # damaged: embed again and replace it
        if log is not None:
            log(f"embedding {len(texts):,} captions with all-MiniLM-L6-v2 (once; cached in {self.root})")
        emb = minilm()(texts).contiguous()
        blob = save({"embeddings": emb}, metadata={"texts": json.dumps(texts)})
        write_bytes_atomic(p, blob)
        return emb


__all__ = ["ENCODERS", "EmbeddingStore", "LEARNED_DIM", "MAX_WORDS", "MINILM_MAX_TOKENS", "WordVocab", "minilm",
           "minilm_too_long", "words"]
