"""Quieting Hugging Face `transformers` (imported lazily by its callers: importing it costs
seconds, and most genlab commands never need it)."""
from __future__ import annotations

import os


def quiet_transformers() -> None:
    """transformers' own progress bars and advice would drown genlab's one-line messages."""
    import transformers  # heavy: only where a Hugging Face model is really used
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
