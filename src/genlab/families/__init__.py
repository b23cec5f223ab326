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
from pathlib import Path

from ..llm.hf import classify, list_models
from ..runs import HUMAN_EVAL, METRICS, RunDir
from ..util.errors import GenlabError, check
from .base import FAMILIES, Family, family_of, load, names, register, registry
from .images import ImageRun

__all__ = ["FAMILIES", "Family", "describe", "describe_model", "family_of", "get", "list_runs", "load",
           "load_model", "names", "register", "registry"]


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


def describe(path) -> dict:
    """What the run at `path` is and what it can do, read from its files (no weights are
    loaded): family, kind (image, text, reward), the verbs it takes, and for image runs
    the dataset, image shape, classes and condition."""
    fam = family_of(path)
    d = RunDir(path)
    cfg = d.read_config()
    rc = fam.run_class
    kind = getattr(rc, "kind", "other")
    out = {"family": fam.name, "title": fam.title, "kind": kind, "verbs": []}
    verbs = out["verbs"]
    if kind == "image":
        data, model = cfg.get("data") or {}, cfg.get("model") or {}
        classes = list(data.get("classes") or []) if model.get("num_classes") else []
        cond = (cfg.get("condition") or {}).get("kind") or ("class" if classes else "none")
        verbs += ["sample", "interpolate"]
        verbs += ["reconstruct"] if rc.reconstruct is not ImageRun.reconstruct else []
        verbs += ["style-mix", "truncation"] if getattr(rc, "truncatable", False) else []
        verbs += ["real-or-fake"]
        out.update(dataset=data.get("dataset"), channels=data.get("channels"), image_size=data.get("image_size"),
                   classes=classes, condition=cond)
    elif hasattr(rc, "stream"):
        verbs += ["generate", "chat", "rank", "game"]
    if hasattr(rc, "score"):
        verbs.append("score")
    if (d.path / METRICS).is_file():
        verbs.append("metrics")
    if (d.path / "report.json").is_file():
        verbs.append("report")
    out["compressed"] = bool(cfg.get("compress"))
    out["human_eval"] = (d.path / HUMAN_EVAL).is_file()
    return out


def list_runs(folder) -> list[dict]:
    """Every run directly inside `folder` ({"name": its folder's name, **describe(run)}),
    then the built-in foundation models that are installed (family "foundation")."""
    root = Path(folder)
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else ():
        if p.is_dir() and RunDir(p).is_run():
            try:
                out.append({"name": p.name, **describe(p)})
            except GenlabError:
                continue   # a run of a family this genlab does not know, or a broken config
    for m in list_models():
        if m.get("installed") and not any(r["name"] == m["name"] for r in out):
            out.append({"name": m["name"], **describe_model(m["name"])})
    return out


def describe_model(name: str) -> dict:
    """describe() for a built-in foundation model (`genlab models` lists them)."""
    m = next((m for m in list_models() if m["name"] == name), None)
    check(m is not None, f"unknown built-in model '{name}'")
    return {"family": "foundation", "title": "foundation model", "kind": "text", "description": m["description"],
            "verbs": ["generate", "chat", "rank", "game"], "compressed": False, "human_eval": False}


for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):  # every family module registers itself
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
