"""LoRA through `peft`: W + (alpha / r) B A on the chosen linear layers (the lecture's
"low-rank matrices to represent the change to the weights"), in PEFT's own format so
other tools load genlab's adapters."""
from __future__ import annotations

import warnings

from ..util.errors import GenlabError

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


def lora_wrap(model, lora: dict):
    """`model` wrapped by peft with the LoRA settings `lora` (r, alpha, dropout, target_modules)."""
    from peft import LoraConfig, get_peft_model  # heavy: only when LoRA is used
    tm = lora["target_modules"]
    if isinstance(tm, str) and tm != "all-linear":
        tm = [t.strip() for t in tm.split(",") if t.strip()]
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=tm, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft notes the fan_in_fan_out of GPT-2's Conv1D
            return get_peft_model(model, cfg)
    except ValueError as e:
        raise GenlabError(f"--target-modules {lora['target_modules']}: {str(e).splitlines()[0][:200]}") from None
