"""Text encoders shared by every part of genlab that reads sentences: the reward model,
text-conditioned generators and the guardrails (minilm.py)."""
from .minilm import EMBEDDER, Embedder

__all__ = ["EMBEDDER", "Embedder"]
