"""Compression on this machine: int8, pruning and distillation of a genlab GPT trained on
Shakespeare, and int8 of SmolLM2-135M-Instruct -- every row measured by `genlab compress`
itself (original and compressed loaded from disk and measured in the same process).

    python benchmarks/compress.py                      # everything (about 35 minutes on 2 cores)
    python benchmarks/compress.py --teacher runs/lm    # reuse a trained GPT run as the teacher
    python benchmarks/compress.py --only backends,gpt  # parts: backends, gpt, distill, smollm2

Parts:
  backends  which int8 implementation to use: fp32 vs genlab's Int8Linear (fbgemm kernels),
            the deprecated torch.ao.quantization.quantize_dynamic, and torchao (if
            installed), on GPTs of several widths (latency of a forward pass, batch 1 and 16)
  gpt       int8, 50% magnitude pruning (with and without a short fine-tune), 30% structured
            pruning (with and without), each against the issue's target
  distill   a student with <= 25% of the teacher's parameters, trained with the teacher and
            without it (same steps), against a unigram baseline
  smollm2   int8 of SmolLM2-135M-Instruct: tokens/s, size on disk, perplexity
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench-compress"
say = print


def _compress(model, name, **kw):
    import genlab
    t0 = time.monotonic()
    rep = genlab.compress(str(model), OUT / name, overwrite=True, progress=False,
                          log=lambda m: print(f"    {m}", file=sys.stderr), **kw)
    rep["seconds"] = time.monotonic() - t0
    return rep


def _fmt_size(b):
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"


# -- backends --------------------------------------------------------------------------------

def backends() -> None:
    from genlab.compress.quantize import int8
    from genlab.compress.report import paired_latency
    from genlab.models.gpt import GPT, GPTConfig
    say("\n## int8 implementations (forward pass over a 128-token window; median ms)\n")
    say("| GPT (random weights) | batch | fp32 | genlab Int8Linear (fbgemm, calibrated) | "
        "torch.ao quantize_dynamic (deprecated) | torchao int8 dynamic | torchao int8 weight-only |")
    say("|---|---|---|---|---|---|---|")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
        ao = {"dyn": Int8DynamicActivationInt8WeightConfig, "wo": Int8WeightOnlyConfig}
    except ImportError:
        ao = None
    for layers, dim in ((4, 128), (4, 256), (6, 384), (4, 768)):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=76, n_layer=layers, n_head=max(1, dim // 64), n_embd=dim, block_size=128)).eval()
        ours = copy.deepcopy(m)
        xcal = torch.randint(0, 76, (4, 128), generator=torch.Generator().manual_seed(1))
        int8(ours, lambda: ours(xcal))   # calibrated as genlab compress does (random tokens here)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic
            old = quantize_dynamic(copy.deepcopy(m), {torch.nn.Linear}, dtype=torch.qint8)
        variants = {"fp32": m, "ours": ours, "old": old}
        if ao:
            for k, cfg in ao.items():
                v = copy.deepcopy(m)
                quantize_(v, cfg())
                variants[k] = v
        for batch in (1, 16):
            x = torch.randint(0, 76, (batch, 128))
            t = dict(zip(variants, paired_latency([lambda v=v: v(x) for v in variants.values()], min_seconds=1.0)))
            cells = [f"{t['fp32']:.1f}"] + [f"{t[k]:.1f} ({t['fp32'] / t[k]:.2f}x)" if k in t else "not installed"
                                            for k in ("ours", "old", "dyn", "wo")]
            size = sum(p.numel() for p in m.parameters()) / 1e6
            say(f"| {layers}L/{dim}d ({size:.1f}M) | {batch} | " + " | ".join(cells) + " |")


# -- the GPT -------------------------------------------------------------------------------------

def _trained(name: str, budget: float, what: str, **options) -> Path:
    """A GPT trained on Shakespeare for `budget` seconds in OUT/name (reused when there)."""
    import genlab
    out = OUT / name
    if (out / "model.safetensors").is_file() and json.loads((out / "config.json").read_text())["train"].get(
            "time_budget") == budget:
        say(f"(reusing {what} in {out})")
        return out
    say(f"training {what} on shakespeare, {budget:g} s ...")
    genlab.train("lm", corpus="shakespeare", out=out, time_budget=budget, overwrite=True, progress=False,
                 log=lambda m: None, **options)
    return out


def teacher(args) -> Path:
    return Path(args.teacher) if args.teacher else _trained("teacher", args.teacher_budget, "the teacher (genlab recipe)")


def wide(args) -> Path:
    """A wider GPT (4 layers, 256-dim), where int8 has larger matrices to work on."""
    return _trained("wide", args.wide_budget, "a wider GPT (4 layers, 256-dim, lr 2e-3)", n_embd=256, lr=2e-3)


def _row(name, r, base, target="", extra=""):
    rel = (r["val_loss"] - base["val_loss"]) / base["val_loss"]
    return (f"| {name} | {r['params']:,} | {_fmt_size(r['disk_bytes'])} | {r['latency_b1_ms']:.2f} "
            f"({base['latency_b1_ms'] / r['latency_b1_ms']:.2f}x) | {r['latency_batch_ms']:.1f} "
            f"({base['latency_batch_ms'] / r['latency_batch_ms']:.2f}x) | {r['tokens_per_s']:.0f} | "
            f"{r['val_loss']:.4f} | {rel:+.2%} | {target} |{extra}")


HEAD = ("| model | params | on disk | latency b=1 ms (speed-up) | latency b=16 ms (speed-up) | tokens/s | "
        "val loss | vs original | target |")


def gpt(args, t: Path) -> None:
    steps = args.finetune_steps
    reps = {
        "int8": _compress(t, "int8", quantize="int8"),
        "prune50": _compress(t, "prune50", prune=0.5),
        "prune50ft": _compress(t, "prune50-ft", prune=0.5, finetune_steps=steps),
        "struct30": _compress(t, "struct30", prune=0.3, structured=True),
        "struct30ft": _compress(t, "struct30-ft", prune=0.3, structured=True, finetune_steps=steps),
    }
    cfg = json.loads((t / "config.json").read_text())["model"]
    say(f"\n## A genlab GPT on Shakespeare ({t}: {cfg['n_layer']} layers, {cfg['n_embd']}-dim, "
        f"context {cfg['block_size']})\n")
    say("Val loss: nats per character on the first 32,768 held-out characters (the four held-out "
        "plays), windows of the full context. Each compressed model is measured beside its own "
        "freshly loaded original in one process; the original row is from the int8 run.\n")
    say(HEAD)
    say("|---|---|---|---|---|---|---|---|---|")
    base = reps["int8"]["rows"][0]
    say(_row("original (fp32)", base, base))
    rows = [("int8", "int8", ">= 1.8x lower latency, <= 1% val loss"),
            ("prune50", "50% magnitude pruning, no fine-tune", "no speed-up expected"),
            ("prune50ft", f"50% magnitude pruning + {steps} fine-tune steps", "<= 2% val loss"),
            ("struct30", "30% structured (heads + MLP neurons), no fine-tune", ""),
            ("struct30ft", f"30% structured + {steps} fine-tune steps", ">= 1.3x speed-up, with its quality cost")]
    for key, name, target in rows:
        rep = reps[key]
        r = rep["rows"][1]
        own = rep["rows"][0]   # the original as measured in that same process
        say(_row(name, r, own, target))
    if args.wide_budget:
        w = wide(args)
        rep = _compress(w, "wide-int8", quantize="int8")
        a, b = rep["rows"]
        say(f"\nint8 on a wider GPT ({w}: 4 layers, 256-dim, {args.wide_budget:g} s of training):\n")
        say(HEAD)
        say("|---|---|---|---|---|---|---|---|---|")
        say(_row("original (fp32)", a, a))
        say(_row("int8", b, a, ">= 1.8x lower latency, <= 1% val loss"))
    for key in ("prune50ft", "struct30ft"):
        info = json.loads((OUT / {"prune50ft": "prune50-ft", "struct30ft": "struct30-ft"}[key] / "config.json").read_text())
        say(f"\n{key}: {json.dumps(info['compress'].get('prune'))}")


# -- distillation ----------------------------------------------------------------------------------

def unigram_loss(t: Path) -> float:
    """Cross-entropy (nats/char) of the training split's character frequencies (add-one
    smoothed) on the same held-out characters the report scores."""
    from genlab.families.lm import LMRun, run_data as _run_data
    run = LMRun(t)
    _, data = _run_data(run.dir, run.config, run.tokenizer)
    V = run.tokenizer.vocab_size
    counts = np.bincount(np.asarray(data["train"]), minlength=V) + 1.0
    logp = np.log(counts / counts.sum())
    val = np.asarray(data["val"][:32768])
    return float(-logp[val[1:]].mean())


def distill(args, t: Path) -> None:
    kw = dict(distill=True, student=args.student, steps=args.distill_steps, temperature=args.temperature)
    with_t = _compress(t, "student-distilled", alpha=args.alpha, **kw)
    without = _compress(t, "student-alone", alpha=0.0, **kw)
    uni = unigram_loss(t)
    base = with_t["rows"][0]
    say(f"\n## Distillation: student {args.student} ({args.distill_steps} steps each, T={args.temperature:g})\n")
    say(f"Unigram baseline (training-split character frequencies): {uni:.4f} nats/char.\n")
    say("| model | params | share of teacher | val loss | gain over unigram | gain kept | training s |")
    say("|---|---|---|---|---|---|---|")
    gain = uni - base["val_loss"]
    say(f"| teacher | {base['params']:,} | 100% | {base['val_loss']:.4f} | {gain:.4f} | 100% | |")
    for name, rep in ((f"student, distilled (alpha {args.alpha:g})", with_t), ("student alone (alpha 0)", without)):
        r = rep["rows"][1]
        g = uni - r["val_loss"]
        say(f"| {name} | {r['params']:,} | {r['params'] / base['params']:.1%} | {r['val_loss']:.4f} | {g:.4f} | "
            f"{g / gain:.1%} | {rep['seconds']:.0f} |")
    say("\ntarget: student <= 25% of the teacher's parameters keeps >= 95% of its gain, and beats the student alone")


# -- SmolLM2 ---------------------------------------------------------------------------------------

def smollm2(args) -> None:
    rep = _compress("smollm2", "smollm2-int8", quantize="int8", gen_tokens=args.gen_tokens)
    a, b = rep["rows"]
    say(f"\n## SmolLM2-135M-Instruct, int8 (greedy generation of {args.gen_tokens} tokens at batch 1; "
        f"perplexity on {a['eval_tokens']:,} tokens of the held-out plays, windows of {a['window']})\n")
    say(rep["table"])
    say(f"\ntokens/s {b['tokens_per_s'] / a['tokens_per_s']:.2f}x (target >= 2.5x); on disk "
        f"{a['disk_bytes'] / b['disk_bytes']:.2f}x smaller (target >= 3.5x); perplexity "
        f"{(b['perplexity'] - a['perplexity']) / a['perplexity']:+.2%} (target <= +2%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="a genlab GPT run (default: train one, --teacher-budget)")
    p.add_argument("--teacher-budget", type=float, default=600.0)
    p.add_argument("--wide-budget", type=float, default=300.0, help="seconds for the wider GPT (0: skip it)")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--student", default="layers=3,dim=64")
    p.add_argument("--distill-steps", type=int, default=3000)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--only", default="backends,gpt,distill,smollm2")
    args = p.parse_args()
    parts = set(args.only.split(","))
    from genlab.compress.report import threads_note
    say(f"# genlab compress benchmark ({threads_note()})")
    if "backends" in parts:
        backends()
    if parts & {"gpt", "distill"}:
        t = teacher(args)
        if "gpt" in parts:
            gpt(args, t)
        if "distill" in parts:
            distill(args, t)
    if "smollm2" in parts:
        smollm2(args)


if __name__ == "__main__":
    main()
