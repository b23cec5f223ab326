"""Tokenizers for language models, saved in the run directory as tokenizer.json, and the
corpus encoded once into a memory-mapped token array.

    char  one token per character; the vocabulary is every character of the corpus
          (training and held-out documents: the alphabet, not their content). Text with a
          character outside it is refused with a message naming the characters.
    bpe   byte-level BPE trained with Hugging Face `tokenizers` on the training split
          (--vocab-size, default 512 + 256 bytes); any text encodes, nothing is refused.

Encoded corpora are cached under $GENLAB_DATA/encoded/ as uint16 (uint32 when the
vocabulary exceeds 65,535) .bin files and opened with numpy.memmap.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import GenlabError
from ..util.io import write_bytes_atomic, write_json_atomic
from .sources import data_root

TOKENIZER_FILE = "tokenizer.json"
KINDS = ("char", "bpe")


class CharTokenizer:
    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # code point -> id lookup for fast encoding of long texts (-1: not in the vocabulary)
        top = max(ord(c) for c in self.chars) + 1
        self._table = np.full(top, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    @classmethod
    def train(cls, texts) -> "CharTokenizer":
        return cls(sorted(set("".join(texts))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list:
        return sorted(set(text) - set(self.stoi))

    def encode(self, text: str) -> list:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.where(cps < len(self._table), self._table[np.minimum(cps, len(self._table) - 1)], -1)
        if (ids < 0).any():
            bad = self.unknown(text)
            shown = ", ".join(repr(c) for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
            raise GenlabError(f"text has {len(bad)} character(s) outside this char-level model's "
                              f"vocabulary of {self.vocab_size}: {shown} (they are refused, "
                              "not mapped or skipped; remove them or use a bpe model)")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme) from Hugging Face `tokenizers`."""
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, texts, vocab_size: int = 768) -> "BPETokenizer":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def unknown(self, text: str) -> list:
        return []

    def encode(self, text: str) -> list:
        return self.tok.encode(text).ids

    def encode_array(self, text: str) -> np.ndarray:
        # Encode line by line (keeping the newlines): the same ids, batched and parallel.
        lines = text.splitlines(keepends=True)
        out = self.tok.encode_batch(lines) if lines else []
        return np.fromiter((i for e in out for i in e.ids), dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def to_json(self) -> dict:
        return {"kind": "bpe", "tokenizer": json.loads(self.tok.to_str())}


def train_tokenizer(kind: str, corpus, vocab_size: int | None = None):
    if kind == "char":
        if vocab_size is not None:
            raise GenlabError("--vocab-size is for --tokenizer bpe (a char vocabulary is the corpus's characters)")
        return CharTokenizer.train(t for _, t in corpus.docs)
    if kind == "bpe":
        vocab_size = 768 if vocab_size is None else vocab_size
        if not 257 <= vocab_size <= 2**20:
            raise GenlabError(f"--vocab-size must be between 257 and {2**20} (256 bytes + merges), not {vocab_size}")
        return BPETokenizer.train([t for _, t in corpus.split_docs("train")], vocab_size)
    raise GenlabError(f"unknown tokenizer '{kind}' (available: {', '.join(KINDS)})")


def save_tokenizer(tok, run_path) -> None:
    write_json_atomic(Path(run_path) / TOKENIZER_FILE, tok.to_json())


def load_tokenizer(run_path):
    p = Path(run_path) / TOKENIZER_FILE
    try:
        d = json.loads(p.read_text())
        if d["kind"] == "char":
            return CharTokenizer(d["chars"])
        if d["kind"] == "bpe":
            return BPETokenizer(Tokenizer.from_str(json.dumps(d["tokenizer"])))
        raise ValueError(f"unknown kind {d['kind']!r}")
    except FileNotFoundError:
        raise GenlabError(f"{p}: missing (a language-model run keeps its tokenizer here)") from None
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise GenlabError(f"{p}: corrupt tokenizer file ({type(e).__name__}: {e})") from None


def tokenizer_fingerprint(tok) -> str:
    return hashlib.sha256(json.dumps(tok.to_json(), sort_keys=True).encode()).hexdigest()


def encoded_corpus(corpus, tok, log=None) -> dict:
    """{"train": memmap, "val": memmap} of token ids, encoded once and cached on disk."""
    folder = data_root() / "encoded" / f"{corpus.fingerprint[:16]}-{tokenizer_fingerprint(tok)[:16]}"
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    out = {}
    for split in ("train", "val"):
        p = folder / f"{split}.bin"
        meta = folder / f"{split}.json"
        n = None
        if p.is_file() and meta.is_file():
            try:
                m = json.loads(meta.read_text())
                if m["tokens"] * np.dtype(dtype).itemsize == p.stat().st_size and m["dtype"] == np.dtype(dtype).name:
                    n = m["tokens"]
            except (ValueError, KeyError):
                pass
        if n is None:  # not cached yet, or a damaged cache: encode (again)
            if log:
                log(f"encoding the {split} split of {corpus.name} ({tok.kind} tokenizer) ...")
            ids = tok.encode_array(corpus.text(split))
            write_bytes_atomic(p, ids.astype(dtype).tobytes())
            write_json_atomic(meta, {"tokens": int(len(ids)), "dtype": np.dtype(dtype).name,
                                     "corpus": corpus.name, "tokenizer": tok.kind})
            n = int(len(ids))
        out[split] = np.memmap(p, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    return out


def windows(data: np.ndarray, starts, block: int):
    """(inputs, targets) int64 tensors (len(starts), block): the windows of encoded `data`
    at `starts`, and the same windows shifted by one token (what comes next)."""
    x = torch.from_numpy(np.stack([data[i:i + block].astype(np.int64) for i in starts]))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + block].astype(np.int64) for i in starts]))
    return x, y
