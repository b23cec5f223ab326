"""Compressing language models: a genlab GPT run (prune, structured prune, distil, int8,
fine-tune to recover) and a Hugging Face causal LM such as SmolLM2 (int8, unstructured
prune). Each writes a new model directory the rest of genlab loads like any other:
a genlab run for a GPT, a Hugging Face directory (with int8 tensors when quantized) for
a foundation model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ..data.text import load_corpus
from ..data.tokenizer import load_tokenizer, windows
from ..families import load_model
from ..families.lm import build_gpt, run_data
from ..llm.hf import CausalLM, _encode, hf_dir, load_pretrained
from ..models.gpt import GPT, GPTConfig
from ..models.int8 import Int8Embedding, Int8Linear
from ..runs import RunDir
from ..train.lm import LMTask
from ..train.loop import IterConfig, fit_iters
from ..util.errors import GenlabError, check as _check
from ..util.io import write_text_atomic
from ..util.version import __version__
from .distill import DistillTask, parse_student
from .prune import apply_masks, magnitude_prune, prune_gpt_structured, sparsity
from .quantize import DEFAULT_ALPHA, float_note, int8
from .report import lm_rows, threads_note, write_report

CALIBRATION_WINDOWS = 8   # windows of training text that calibrate int8 smoothing


class _MaskedLMTask(LMTask):
    """Fine-tuning after unstructured pruning: the pruned weights stay zero."""

    def __init__(self, model, data, masks, **kw):
        super().__init__(model, data, **kw)
        self.masks = masks

    def train_step(self) -> float:
        loss = super().train_step()
        apply_masks(self.model, self.masks)
        return loss


def _train(out: RunDir, task, steps: int | None, time_budget: float | None, eval_interval: int,
           seed: int, progress, log) -> dict:
    loop = IterConfig(max_iters=steps, eval_interval=eval_interval, log_interval=max(1, min(50, eval_interval)),
                      seed=seed, time_budget=time_budget, progress=progress)
    return fit_iters(out, task, loop, resume=False, log=log)


def check_gpt_source(src, config: dict, *, quantize=None, prune=None, distill=False, student=None):
    """Refuse, before anything is written, what cannot be done to the run at `src`;
    returns the student's config for --distill (else None)."""
    if config.get("compress", {}).get("quantize"):
        _check(quantize is None, f"{src}: already quantized to int8; compress the run it came from")
        _check(not (prune or distill),
               f"{src}: an int8 model cannot be pruned or distilled further; start from the float run it came from")
    if not distill:
        return None
    teacher = GPTConfig(**{k: v for k, v in config["model"].items() if k != "arch"})
    try:
        scfg = parse_student(student, teacher)
    except ValueError as e:
        raise GenlabError(str(e)) from None
    n_s, n_t = count_weights(GPT(scfg)), count_weights(GPT(teacher))
    _check(n_s < n_t, f"--student {student}: {n_s:,} parameters, not fewer than the teacher's {n_t:,} "
                      "(a student must be smaller)")
    return scfg


def compress_gpt(src: Path, out: RunDir, *, prune: float | None = None, structured: bool = False,
                 quantize: str | None = None, distill: bool = False, student: str | None = None,
                 finetune_steps: int = 0, steps: int | None = None, time_budget: float | None = None,
                 temperature: float = 2.0, alpha: float = 0.9, lr: float | None = None,
                 smooth: float = DEFAULT_ALPHA, timed: bool = True, seed: int = 0, progress=None,
                 log=print) -> dict:
    """Compress the genlab GPT run at `src` into the new run `out` (prepared by the
    caller). Order: distil a student, prune (then fine-tune `finetune_steps` with the
    pruned weights held at zero), quantize. Returns the `compress` section written to
    the new run's config."""
    srun = RunDir(src)
    config = srun.read_config()
    t = config["train"]
    scfg = check_gpt_source(src, config, quantize=quantize, prune=prune, distill=distill, student=student)
    model = build_gpt(config)
    srun.load_weights(model)
    model.eval()
    tok = load_tokenizer(srun.path)
    corp, data = run_data(srun, config, tok)
    info = {"source": str(srun.path), "source_params": count_weights(model)}
    block = model.cfg.block_size
    common = dict(block_size=block, batch_size=t["batch_size"], grad_accum=t.get("grad_accum", 1),
                  weight_decay=t["weight_decay"], betas=t["betas"], grad_clip=t["grad_clip"],
                  seed=seed)
    shutil.copy(srun.path / "tokenizer.json", out.path / "tokenizer.json")
    new_config = {**config, "genlab_version": __version__}

    if distill:
        torch.manual_seed(seed)
        s_model = GPT(scfg)
        log(f"distilling {src} ({count_weights(model):,} parameters) into a student of {count_weights(s_model):,} "
            f"({scfg.n_layer} layers, {scfg.n_head} heads, {scfg.n_embd}-dim); T={temperature:g}, alpha={alpha:g}")
        task = DistillTask(s_model, model, data, temperature=temperature, alpha=alpha,
                           lr=lr or t["lr"], min_lr=(lr or t["lr"]) / 10, warmup_iters=min(100, t["warmup_iters"]),
                           schedule="cosine", **common)
        new_config["model"] = scfg.to_dict()
        out.write_config(new_config)
        summary = _train(out, task, steps, time_budget, eval_interval=max(50, min(500, (steps or 1000) // 4)),
                         seed=seed, progress=progress, log=log)
        out.load_weights(s_model)  # the best held-out checkpoint
        model = s_model
        info["distill"] = {"teacher": str(srun.path), "student": student, "temperature": temperature,
                           "alpha": alpha, "iters": summary.get("iters"),
                           "best_val_loss": summary.get("best_val_loss")}

    if prune:
        if structured:
            model = prune_gpt_structured(model, prune)
            c = model.cfg
            log(f"structured pruning: {c.n_head} heads of {c.hd} and {c.hidden} MLP neurons kept per block "
                f"-> {count_weights(model):,} parameters")
            masks = None
        else:
            masks = magnitude_prune(model, prune)
            z, n = sparsity(model)
            _check(z >= round(prune * n), f"pruning left {z:,} of {n:,} weights at zero, fewer than asked")
            log(f"magnitude pruning: {z:,} of {n:,} prunable weights are zero ({z / n:.1%})")
        new_config["model"] = model.cfg.to_dict()
        info["prune"] = {"amount": prune, "structured": structured}
        if finetune_steps:
            out.write_config(new_config)
            f_lr = lr or t["lr"] / 4
            log(f"fine-tuning {finetune_steps} steps to recover (lr {f_lr:g})")
            kw = dict(common, lr=f_lr, min_lr=f_lr / 10, warmup_iters=0, schedule="cosine")
            task = _MaskedLMTask(model, data, masks, **kw) if masks else LMTask(model, data, **kw)
            summary = _train(out, task, finetune_steps, None, eval_interval=max(1, finetune_steps // 2),
                             seed=seed, progress=progress, log=log)
            out.load_weights(model)
            if masks:
                apply_masks(model, masks)
            info["prune"].update(finetune_steps=finetune_steps, finetune_lr=f_lr,
                                 best_val_loss=summary.get("best_val_loss"))
        if not structured:
            z, n = sparsity(model)
            info["prune"].update(zeros=z, prunable=n, sparsity=z / n)

    if quantize:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(data["train"]) - block - 1, (CALIBRATION_WINDOWS,), generator=g).tolist()
        x, _ = windows(data["train"], starts, block)
        n, pt, kept, later = int8(model, lambda: model(x), smooth, timed_rows=(1, block) if timed else None)
        log(f"int8: {n} layers quantized (per-channel int8 weights; int8 activations, per token in {pt} of them; "
            f"smoothing alpha {smooth:g}; calibrated on {CALIBRATION_WINDOWS} training windows)"
            + float_note(kept, later))
        info.update(quantize=quantize, smooth_alpha=smooth, per_token_layers=pt, float_layers=kept,
                    int8_slower_on_large_inputs=later,
                    calibration=f"{CALIBRATION_WINDOWS} windows of the training split")
    new_config["compress"] = {**config.get("compress", {}), **info}
    new_config["model"] = model.cfg.to_dict()
    out.write_config(new_config)
    out.save_weights(model)
    for stale in ("last.safetensors", "state.pt"):
        if (out.path / stale).exists():
            (out.path / stale).unlink()
    return new_config["compress"]


def count_weights(model: torch.nn.Module) -> int:
    """Weights in the model, each shared tensor once: float parameters plus the int8
    weights (and biases) of quantized layers; per-channel scales are not counted."""
    tensors = list(model.parameters())
    for m in model.modules():
        if isinstance(m, (Int8Linear, Int8Embedding)):
            tensors += [t for t in (m.weight, getattr(m, "bias", None)) if t is not None]
    seen = {(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)): t.numel() for t in tensors}
    return sum(seen.values())


# -- Hugging Face models -----------------------------------------------------------------

HF_INT8_KEY = "genlab_quantization"


def compress_hf(spec: str, out: Path, *, prune: float | None = None, quantize: str | None = None,
                smooth: float = DEFAULT_ALPHA, calibration: str = "shakespeare", timed: bool = True,
                log=print) -> dict:
    """Unstructured prune and/or int8 of a Hugging Face causal LM, written as a Hugging
    Face directory at `out` (config, tokenizer, model.safetensors; int8 tensors when
    quantized, which genlab's loader rebuilds)."""
    model, tok = load_pretrained(spec, log)
    _check(getattr(model.config, HF_INT8_KEY, None) is None or quantize is None,
           f"{spec}: already quantized to int8; compress the model it came from")
    info = {"source": spec, "source_params": count_weights(model)}
    if prune:
        magnitude_prune(model, prune)
        z, n = sparsity(model)
        log(f"magnitude pruning: {z:,} of {n:,} prunable weights are zero ({z / n:.1%})")
        info["prune"] = {"amount": prune, "structured": False, "zeros": z, "prunable": n, "sparsity": z / n}
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    src = hf_dir(spec, log)
    if isinstance(src, Path):
        for extra in ("generation_config.json",):
            if (src / extra).is_file():
                shutil.copy(src / extra, out / extra)
    if quantize:
        cfg = model.config
        window = min(256, int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 256)))
        text = load_corpus(calibration, quiet=True).text("train")[:40_000]
        ids = torch.tensor(_encode(tok, text)[:4 * window])
        _check(len(ids) == 4 * window, f"{calibration}: too little training text to calibrate on")
        n, pt, kept, later = int8(model, lambda: model(input_ids=ids.view(4, window)), smooth,
                          timed_rows=(1, window) if timed else None)
        log(f"int8: {n} layers quantized (per-channel int8 weights; int8 activations, per token in {pt} of them; "
            f"smoothing alpha {smooth:g}; calibrated on {4 * window} tokens of {calibration}'s training split)"
            + float_note(kept, later))
        info.update(quantize=quantize, smooth_alpha=smooth, per_token_layers=pt, float_layers=kept,
                    int8_slower_on_large_inputs=later,
                    calibration=f"{4 * window} tokens of {calibration} (training split)")
        model.config.update({HF_INT8_KEY: quantize, "genlab_float_layers": kept})
        model.config.save_pretrained(out)
        RunDir(out).save_weights(model)
    else:
        model.save_pretrained(out)
    write_text_atomic(out / "genlab-compress.json", json.dumps(info, indent=2))
    return info


# -- the whole job: compress, then measure both models ---------------------------------------

def prepare_out(out, src, overwrite: bool) -> Path:
    """The output directory: not the model's own, and empty unless --overwrite."""
    out = Path(out)
    _check(out.resolve() != Path(src).resolve(), f"--out {out}: the same directory as the model; choose another")
    if out.exists():
        _check(out.is_dir(), f"{out}: exists and is not a directory")
        _check(overwrite or not any(out.iterdir()), f"{out}: exists and is not empty (use --overwrite or another --out)")
    return out


def hf_quantized(spec) -> bool:
    from transformers import AutoConfig  # heavy: only for Hugging Face models
    return getattr(AutoConfig.from_pretrained(hf_dir(spec, log=lambda *a: None)), HF_INT8_KEY, None) is not None


def compress_gpt_run(where, out, *, opts: dict, progress=None, log=print) -> dict:
    """genlab compress of a genlab GPT run: a new run at `out`, measured beside the original."""
    check_gpt_source(where, RunDir(where).read_config(), quantize=opts["quantize"], prune=opts["prune"],
                     distill=opts["distill"], student=opts["student"])
    out = prepare_out(out, where, opts["overwrite"])
    run = RunDir(out)
    run.prepare_new(overwrite=opts["overwrite"])
    for stale in ("tokenizer.json", "last.safetensors", "report.json", "report.md"):
        if (run.path / stale).exists():
            (run.path / stale).unlink()
    compress_gpt(Path(where), run, prune=opts["prune"], structured=opts["structured"], quantize=opts["quantize"],
                 distill=opts["distill"], student=opts["student"], finetune_steps=opts["finetune_steps"],
                 steps=opts["steps"], time_budget=opts["time_budget"], temperature=opts["temperature"],
                 alpha=opts["alpha"], lr=opts["lr"], smooth=opts["smooth"], timed=opts["timed"], seed=opts["seed"],
                 progress=progress,
                 log=log)
    return measure_lm(str(where), out, gpt=True, eval_tokens=opts["eval_tokens"], batch=opts["batch"],
                      gen_tokens=opts["gen_tokens"], log=log)


def compress_hf_model(spec, out, *, opts: dict, log=print) -> dict:
    """genlab compress of a Hugging Face model: a new Hugging Face directory at `out`."""
    _check(not hf_quantized(spec) or opts["quantize"] is None,
           f"{spec}: already quantized to int8; compress the model it came from")
    out = prepare_out(out, spec, opts["overwrite"])
    if out.exists() and any(out.iterdir()):
        _check((out / "genlab-compress.json").is_file(),
               f"{out}: not a model genlab compress wrote; --overwrite replaces only those")
        shutil.rmtree(out)
    try:
        compress_hf(spec, out, prune=opts["prune"], quantize=opts["quantize"], smooth=opts["smooth"],
                    timed=opts["timed"], log=log)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return measure_lm(spec, out, gpt=False, eval_tokens=opts["eval_tokens"], batch=opts["batch"],
                      gen_tokens=opts["gen_tokens"], log=log)


def _held_out_ids(tm, gpt: bool, eval_tokens: int) -> tuple[np.ndarray, str]:
    """Held-out token ids to score: the run's held-out split for a genlab GPT; the
    Shakespeare held-out plays, in the model's own tokens, for a Hugging Face model."""
    if gpt:
        corp, data = tm.corpus_data()
        return np.asarray(data["val"][:eval_tokens]), f"{corp.name} held-out"
    corp = load_corpus("shakespeare", quiet=True)
    text = corp.text("val")[: eval_tokens * 8]
    return np.asarray(_encode(tm.tokenizer, text)[:eval_tokens]), "shakespeare held-out"


def measure_lm(spec: str, out, *, gpt: bool, eval_tokens=None, batch=None, gen_tokens: int = 64,
               log=print) -> dict:
    """Load the original (`spec`) and the compressed model (`out`) from disk and measure
    both side by side."""
    out = Path(out)
    eval_tokens = eval_tokens or (32768 if gpt else 8192)
    batch = batch or (16 if gpt else 8)
    entries = []
    for name, where in (("original", spec), ("compressed", str(out))):
        tm = load_model(where, log=lambda *a: None)
        if gpt:
            module, window, weights = tm.model, tm.block_size, Path(where) / "model.safetensors"
        else:
            module, window, weights = CausalLM(tm.model), min(tm.context, 256), Path(hf_dir(where, log=lambda *a: None))
        entries.append((name, tm, module, weights, count_weights(tm.model)))
    ids, source = _held_out_ids(entries[0][1], gpt, eval_tokens)
    log(f"measuring on {len(ids):,} tokens of {source} (windows of {window}); latency at batch 1 and "
        f"{batch}, and greedy generation of {gen_tokens} tokens, the two models alternating ({threads_note()})")
    rows = lm_rows(entries, ids, window, batch, gen_tokens)
    info = (json.loads((out / "config.json").read_text()).get("compress", {}) if gpt
            else json.loads((out / "genlab-compress.json").read_text()))
    return write_report(out, rows, {"model": spec, "source": source, "float_layers": info.get("float_layers", {}),
                                    "int8_slower_on_large_inputs": info.get("int8_slower_on_large_inputs", {})})
