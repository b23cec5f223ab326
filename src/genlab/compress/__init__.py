"""Making models cheaper to run: pruning (prune.py), int8 weights (models/int8.py),
knowledge distillation (distill.py), for language models (lm.py) and image generators;
report.py measures the original and the compressed model side by side."""
from __future__ import annotations

from ..errors import GenlabError

# What applies to which kind of model (the error for anything else names these).
APPLIES = {
    "gpt": ("--prune", "--structured", "--finetune-steps", "--quantize int8", "--distill"),
    "hf": ("--prune", "--quantize int8"),
    "vae": ("--prune", "--quantize int8"),
    "gan": ("--prune", "--quantize int8"),
}
KIND_NAMES = {"gpt": "a genlab GPT run", "hf": "a Hugging Face model", "vae": "a VAE run", "gan": "a GAN run"}
QUANTIZE = ("int8",)


def check_options(kind: str, *, prune=None, structured=False, quantize=None, distill=False, student=None,
                  finetune_steps=0, temperature=2.0, alpha=0.9, smooth=None, steps=None, time_budget=None) -> None:
    """One clear error for options that are out of range or do not apply to `kind`."""
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
    if not temperature > 0:
        fail(f"--temperature must be > 0, not {temperature}")
    if not 0 <= alpha <= 1:
        fail(f"--alpha must be in [0, 1], not {alpha}")
    if smooth is not None and not 0 <= smooth < 1:
        fail(f"--smooth must be in [0, 1), not {smooth}")
    asked = [name for name, on in (("--prune", prune is not None and not structured), ("--structured", structured),
                                   ("--finetune-steps", bool(finetune_steps)),
                                   ("--quantize int8", quantize is not None), ("--distill", distill)) if on]
    bad = [a for a in asked if a not in APPLIES[kind]]
    if bad:
        which = "; ".join(f"{KIND_NAMES[k]}: {', '.join(v)}" for k, v in APPLIES.items())
        fail(f"{', '.join(bad)} does not apply to {KIND_NAMES[kind]} (what applies -- {which})")
    if distill and steps is None and time_budget is None:
        fail("--distill needs --steps N or --time-budget SECONDS")
