"""Making models cheaper to run: pruning (prune.py), int8 weights (quantize.py,
models/int8.py), knowledge distillation (distill.py), for genlab's GPT and Hugging Face
language models (lm.py) and image generators (images.py); report.py measures the original
and the compressed model side by side.

    import genlab
    rep = genlab.compress("runs/lm", out="runs/lm-int8", quantize="int8")
    print(rep["table"])
"""
from __future__ import annotations

from ..families import FAMILIES, family_of
from ..families.images import ImageRun
from ..families.lm import LMRun
from ..llm.hf import classify
from ..util.errors import GenlabError
from .images import compress_images
from .lm import compress_gpt_run, compress_hf_model
from .quantize import DEFAULT_ALPHA

GPT_METHODS = ("--prune", "--structured", "--finetune-steps", "--quantize int8", "--distill")
HF_METHODS = ("--prune", "--quantize int8")
IMAGE_METHODS = ("--prune", "--quantize int8")
GPT_RUN, HF_MODEL = "a genlab GPT run", "a Hugging Face model"
QUANTIZE = ("int8",)
INT8_LAYERS = ("faster", "all")


def _applies() -> dict:
    """{what: methods} for every kind of model compress takes (the error names these)."""
    images = {f"a {f.title} run": IMAGE_METHODS for f in FAMILIES.values() if issubclass(f.run_class, ImageRun)}
    return {GPT_RUN: GPT_METHODS, HF_MODEL: HF_METHODS, **images}


def check_options(what: str, *, prune=None, structured=False, quantize=None, distill=False, student=None,
                  finetune_steps=0, temperature=2.0, alpha=0.9, smooth=None, steps=None, time_budget=None) -> None:
    """One clear error for options that are out of range or do not apply to `what`."""
    def fail(msg):
        raise GenlabError(msg)

    if prune is not None and not (isinstance(prune, (int, float)) and 0 < prune < 1):
        fail(f"--prune must be a fraction strictly between 0 and 1 (e.g. 0.5), not {prune}")
    if quantize is not None and quantize not in QUANTIZE:
        fail(f"--quantize {quantize}: unknown (available: {', '.join(QUANTIZE)})")
    if structured and prune is None:
        fail("--structured needs --prune AMOUNT (the fraction of heads and neurons to remove)")
    if not (isinstance(finetune_steps, int) and finetune_steps >= 0):
        fail(f"--finetune-steps must be a whole number >= 0, not {finetune_steps}")
    if finetune_steps and prune is None:
        fail("--finetune-steps recovers from pruning: give --prune too")
    if distill and not student:
        fail('--distill needs --student SPEC, e.g. --student "layers=2,dim=128"')
    if student and not distill:
        fail("--student is for --distill")
    if (steps is not None or time_budget is not None) and not distill:
        fail("--steps and --time-budget are for --distill (pruning recovers with --finetune-steps)")
    if prune is None and quantize is None and not distill:
        fail("nothing to do: give --prune AMOUNT, --quantize int8 and/or --distill --student SPEC")
    if time_budget is not None and not time_budget > 0:
        fail(f"--time-budget must be > 0 seconds, not {time_budget}")
    if not temperature > 0:
        fail(f"--temperature must be > 0, not {temperature}")
    if not 0 <= alpha <= 1:
        fail(f"--alpha must be in [0, 1], not {alpha}")
    if smooth is not None and not 0 <= smooth < 1:
        fail(f"--smooth must be in [0, 1), not {smooth}")
    asked = [name for name, on in (("--prune", prune is not None and not structured), ("--structured", structured),
                                   ("--finetune-steps", bool(finetune_steps)),
                                   ("--quantize int8", quantize is not None), ("--distill", distill)) if on]
    applies = _applies()
    bad = [a for a in asked if a not in applies[what]]
    if bad:
        which = "; ".join(f"{k}: {', '.join(v)}" for k, v in applies.items())
        fail(f"{', '.join(bad)} does not apply to {what} (what applies -- {which})")
    if distill and steps is None and time_budget is None:
        fail("--distill needs --steps N or --time-budget SECONDS")


def compress(model: str, out, *, prune: float | None = None, structured: bool = False,
             quantize: str | None = None, distill: bool = False, student: str | None = None,
             finetune_steps: int = 0, steps: int | None = None, time_budget: float | None = None,
             temperature: float = 2.0, alpha: float = 0.9, lr: float | None = None, smooth: float | None = None,
             int8_layers: str = "faster", eval_tokens: int | None = None, batch: int | None = None, gen_tokens: int = 64,
             fid_samples: int = 2000, seed: int = 0, overwrite: bool = False, progress=None,
             log=print) -> dict:
    """Prune, quantize (int8) and/or distil `model` -- a genlab GPT run, `smollm2` or a
    Hugging Face directory, an image run (VAE, GAN) -- into `out`, then measure the original
    and the compressed model side by side. Returns the report: {"rows": [...], "table": str}
    (also written to out/report.json and out/report.md)."""
    smooth = DEFAULT_ALPHA if smooth is None else smooth
    if int8_layers not in INT8_LAYERS:
        raise GenlabError(f"--int8-layers {int8_layers}: unknown (faster or all)")
    timed = int8_layers == "faster"
    if lr is not None and not lr > 0:
        raise GenlabError(f"--lr must be > 0, not {lr}")
    opts = dict(prune=prune, structured=structured, quantize=quantize, distill=distill, student=student,
                finetune_steps=finetune_steps, temperature=temperature, alpha=alpha, smooth=smooth, steps=steps,
                time_budget=time_budget)
    kind, where = classify(model)
    if kind == "run":
        fam = family_of(where)
        run_class = fam.run_class
        if issubclass(run_class, ImageRun):
            check_options(f"a {fam.title} run", **opts)
            return compress_images(where, out, prune=prune, quantize=quantize, smooth=smooth, timed=timed,
                                   batch=batch or 256,
                                   fid_samples=fid_samples, overwrite=overwrite, log=log)
        if not issubclass(run_class, LMRun):
            hint = " (merge a fine-tuning run first: genlab merge)" if hasattr(run_class, "merge") else ""
            images = ", ".join(f.name for f in FAMILIES.values() if issubclass(f.run_class, ImageRun))
            raise GenlabError(f"{where}: {fam.a_run}; compress takes genlab GPT runs, image runs ({images}) "
                              f"and Hugging Face models{hint}")
        check_options(GPT_RUN, **opts)
        run_opts = dict(opts, lr=lr, seed=seed, timed=timed, overwrite=overwrite, eval_tokens=eval_tokens, batch=batch,
                        gen_tokens=gen_tokens)
        return compress_gpt_run(where, out, opts=run_opts, progress=progress, log=log)
    if kind == "adapter":
        raise GenlabError(f"{where}: a LoRA adapter; merge it into its base first (genlab merge), then compress that")
    check_options(HF_MODEL, **opts)
    return compress_hf_model(model, out, opts=dict(opts, timed=timed, overwrite=overwrite, eval_tokens=eval_tokens,
                                                   batch=batch, gen_tokens=gen_tokens), log=log)

