"""The language-model half of `genlab compress` (api.py re-exports it): compress a genlab
GPT run or a Hugging Face model, then load the original and the compressed model from
disk and measure both in this process (report.py), writing report.json / report.md.

    import genlab
    rep = genlab.compress("runs/lm", out="runs/lm-int8", quantize="int8")
    print(rep["table"])
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .compress import check_options
from .compress.quantize import DEFAULT_ALPHA
from .compress.lm import HF_INT8_KEY, check_gpt_source, compress_gpt, compress_hf, count_weights
from .compress.report import lm_rows, threads_note, write_report
from .errors import GenlabError
from .runs import RunDir


def _check(cond, msg):
    if not cond:
        raise GenlabError(msg)


def model_kind(spec: str) -> tuple[str, object]:
    """("gpt" | "hf" | "vae" | "gan", where) for a MODEL argument of genlab compress."""
    from .llm.hf import classify
    kind, where = classify(spec)
    if kind == "run":
        fam = RunDir(where).read_config().get("family")
        kinds = {"lm": "gpt", "vae": "vae", "gan": "gan"}
        _check(fam in kinds, f"{where}: a '{fam}' run; compress takes genlab GPT, VAE and GAN runs and Hugging "
                             "Face models" + (" (merge a fine-tuning run first: genlab merge)" if fam == "finetune" else ""))
        return kinds[fam], where
    _check(kind != "adapter", f"{where}: a LoRA adapter; merge it into its base first (genlab merge), then compress that")
    return "hf", spec


def _prepare_out(out, src, overwrite: bool) -> Path:
    out = Path(out)
    _check(out.resolve() != Path(src).resolve(), f"--out {out}: the same directory as the model; choose another")
    if out.exists():
        _check(out.is_dir(), f"{out}: exists and is not a directory")
        _check(overwrite or not any(out.iterdir()), f"{out}: exists and is not empty (use --overwrite or another --out)")
    return out


def compress_lm(spec: str, out, *, kind: str, where, prune=None, structured=False, quantize=None,
                distill=False, student=None, finetune_steps=0, steps=None, time_budget=None,
                temperature=2.0, alpha=0.9, lr=None, smooth=DEFAULT_ALPHA, eval_tokens=None, batch=None,
                gen_tokens=64, seed=0, overwrite=False, progress=None, log=print) -> dict:
    check_options(kind, prune=prune, structured=structured, quantize=quantize, distill=distill, student=student,
                  finetune_steps=finetune_steps, temperature=temperature, alpha=alpha, smooth=smooth,
                  steps=steps, time_budget=time_budget)
    if kind == "hf":
        _check(getattr(_hf_config(where), HF_INT8_KEY, None) is None or quantize is None,
               f"{spec}: already quantized to int8; compress the model it came from")
    if kind == "gpt":
        check_gpt_source(where, RunDir(where).read_config(), quantize=quantize, prune=prune, distill=distill,
                         student=student)
    out = _prepare_out(out, where, overwrite)
    if kind == "gpt":
        run = RunDir(out)
        run.prepare_new(overwrite=overwrite)
        for stale in ("tokenizer.json", "last.safetensors", "report.json", "report.md"):
            if (run.path / stale).exists():
                (run.path / stale).unlink()
        compress_gpt(Path(where), run, prune=prune, structured=structured, quantize=quantize, distill=distill,
                     student=student, finetune_steps=finetune_steps, steps=steps, time_budget=time_budget,
                     temperature=temperature, alpha=alpha, lr=lr, smooth=smooth, seed=seed, progress=progress,
                     log=log)
    else:
        if out.exists() and any(out.iterdir()):
            _check((out / "genlab-compress.json").is_file(),
                   f"{out}: not a model genlab compress wrote; --overwrite replaces only those")
            shutil.rmtree(out)
        try:
            compress_hf(spec, out, prune=prune, quantize=quantize, smooth=smooth, log=log)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return measure_lm(spec, out, kind=kind, eval_tokens=eval_tokens, batch=batch, gen_tokens=gen_tokens, log=log)


def _hf_config(spec):
    from .llm.hf import hf_dir
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(hf_dir(spec, log=lambda *a: None))


def _held_out_ids(tm, kind: str, eval_tokens: int) -> tuple[np.ndarray, str]:
    """Held-out token ids to score: the run's held-out split for a genlab GPT; the
    Shakespeare held-out plays, in the model's own tokens, for a Hugging Face model."""
    from .data.text import load_corpus
    if kind == "gpt":
        from .lmrun import _run_data
        corp, data = _run_data(tm.dir, tm.config, tm.tokenizer)
        return np.asarray(data["val"][:eval_tokens]), f"{corp.name} held-out"
    corp = load_corpus("shakespeare", quiet=True)
    from .llm.hf import _encode
    text = corp.text("val")[: eval_tokens * 8]
    return np.asarray(_encode(tm.tokenizer, text)[:eval_tokens]), "shakespeare held-out"


def measure_lm(spec: str, out, *, kind: str, eval_tokens=None, batch=None, gen_tokens: int = 64,
               log=print) -> dict:
    """Load the original (`spec`) and the compressed model (`out`) from disk and measure
    both side by side."""
    from .llm.finetune import load_text_model
    from .llm.hf import CausalLM
    out = Path(out)
    eval_tokens = eval_tokens or (32768 if kind == "gpt" else 8192)
    batch = batch or (16 if kind == "gpt" else 8)
    entries = []
    for name, where in (("original", spec), ("compressed", str(out))):
        tm = load_text_model(where, log=lambda *a: None)
        if kind == "gpt":
            module, window, weights = tm.model, tm.block_size, Path(where) / "model.safetensors"
        else:
            module, window, weights = CausalLM(tm.model), min(tm.context, 256), _weights_dir(where)
        entries.append((name, tm, module, weights, count_weights(tm.model)))
    ids, source = _held_out_ids(entries[0][1], kind, eval_tokens)
    log(f"measuring on {len(ids):,} tokens of {source} (windows of {window}); latency at batch 1 and "
        f"{batch}, and greedy generation of {gen_tokens} tokens, the two models alternating ({threads_note()})")
    rows = lm_rows(entries, ids, window, batch, gen_tokens)
    return write_report(out, rows, {"model": spec, "source": source})


def _weights_dir(spec: str) -> Path:
    from .llm.hf import hf_dir
    return Path(hf_dir(spec, log=lambda *a: None))
