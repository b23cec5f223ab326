"""The family registry: one plug-in module per model family in this folder (vae, gan, lm,
finetune -- Hugging Face models and fine-tuning --, reward ...). Each module registers its
`Family` subclass with @register (base.py); this package imports every module it holds,
so adding a family is adding one file: no other file learns its name.

    fam = get("vae")                 # the plug-in
    run = fam.train(out="runs/v", epochs=1)
    run = load("runs/v")             # any run directory -> its family's run class
    lm = load_model("smollm2")       # any language model: a run, a built-in, a HF directory
"""
from __future__ import annotations

import importlib
import pkgutil

from ..llm.hf import classify
from ..util.errors import GenlabError, check
from .base import FAMILIES, Family, family_of, load, names, register, registry

__all__ = ["FAMILIES", "Family", "family_of", "get", "load", "load_model", "names", "register", "registry"]


def get(name: str) -> Family:
    check(name in FAMILIES,
          f"unknown model family '{name}' (available: {', '.join(names(True))})")
    return FAMILIES[name]


def load_model(spec: str, log=print, device: str | None = "cpu"):
    """Any language model: a genlab run whose family makes text, or whatever a family
    opens from a spec that is not a run (a built-in foundation model, a Hugging Face
    directory or Hub id, a PEFT adapter)."""
    kind, where = classify(spec)
    if kind == "run":
        run = load(where, device=device)
        if not hasattr(run, "stream"):
            raise GenlabError(f"{where}: {family_of(where).a_run}; generate, chat and fine-tuning work on "
                              "language-model runs (for images use genlab sample)")
        return run
    for fam in registry():
        opened = fam.open_spec(kind, where, spec, log, device=device) if hasattr(fam, "open_spec") else None
        if opened is not None:
            return opened
    raise GenlabError(f"{spec}: no family of this genlab opens it")


for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):  # every family module registers itself
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
