"""Fine-tuning SmolLM2-135M-Instruct on this machine: base vs. full fine-tune vs. LoRA on
held-out Shakespeare at equal wall-clock budgets; an instruction-tuning example (the same
prompt before and after); DPO on a preference set genlab builds itself, judged by a
Bradley-Terry reward model (win rate before/after, KL to the reference).

    python benchmarks/finetune.py                # everything (about 25 minutes on 2 cores)
    python benchmarks/finetune.py --budget 300   # seconds per fine-tune (default 180)
    python benchmarks/finetune.py --only loss    # one part: loss (base, full, lora), sft, dpo
    python benchmarks/finetune.py --only loss --exact-memory   # peak memory without allocator caching

Each fine-tune runs in its own process, one after the other; its peak memory is the
process's resident set size sampled every 20 ms from the first training step on (the
model, data and Python are already loaded then, so it counts what training adds plus the
loaded model). Val loss: nats per token on fixed windows of 256 tokens spread over the
four held-out plays (the same windows for every row).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench-finetune"
COMMON = dict(batch_size=2, block_size=256, eval_examples=32, eval_interval=10_000, log_interval=5,
              grad_checkpoint=True, progress=False, overwrite=True)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def worker(spec: dict) -> None:
    """Run one fine-tune in this process; print one JSON line with its figures."""
    import importlib
    loop = importlib.import_module("genlab.train.loop")  # (genlab.train is also a function)
    from genlab.api import finetune
    peak, started = [0], [False]

    def sample():
        while True:
            if started[0]:
                peak[0] = max(peak[0], _rss())
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    orig = loop._Clock.step_done

    def step_done(self, t0):  # the first training step starts the memory watch
        started[0] = True
        return orig(self, t0)
    loop._Clock.step_done = step_done
    before = _rss()
    t0 = time.monotonic()
    ft = finetune(spec.pop("model"), spec.pop("data"), spec.pop("out"), **spec, log=lambda m: print(m, file=sys.stderr))
    s = ft.summary
    print(json.dumps({"val_loss": s["best_val_loss"], "iters": s["iters"], "loop_s": s["wall_seconds"],
                      "step_s": s["step_seconds"], "peak_rss": peak[0], "rss_before": before,
                      "trainable": ft.config["trainable_params"], "total": ft.config["total_params"],
                      "process_s": time.monotonic() - t0}), flush=True)


EXACT_MEMORY = {}  # --exact-memory: environment for the workers


def run_worker(spec: dict) -> dict:
    import os
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, **EXACT_MEMORY})
    if r.returncode != 0:
        sys.exit(f"worker failed: {spec}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def base_loss() -> float:
    """The base model's loss on the same held-out windows the fine-tunes are scored on."""
    from genlab.llm.data import encoded as _encoded
    from genlab.llm.hf import CausalLM, HFModel
    from genlab.train.lm import LMTask
    m = HFModel.load("smollm2", log=lambda s: print(s, file=sys.stderr))
    data = _encoded("shakespeare", m.tokenizer, None)
    task = LMTask(CausalLM(m.model), data, block_size=256, eval_tokens=COMMON["eval_examples"] * 256,
                  eval_batch=2, batch_size=2)
    return task.evaluate()["val_loss"]


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def part_loss(args, rows):
    base = base_loss()
    print(json.dumps({"run": "base", "val_loss": base}), flush=True)
    rows["base"] = {"val_loss": base}
    for method, lr in (("full", args.full_lr), ("lora", args.lora_lr)):
        if args.only not in (None, method, "loss"):
            continue
        spec = {"model": "smollm2", "data": "shakespeare", "out": str(OUT / method), "method": method,
                "time_budget": args.budget, "lr": lr, **COMMON}
        if method == "lora":
            spec["lora"] = {"r": 8, "alpha": 16}
        r = run_worker(spec)
        ckpt = OUT / method / ("adapter" if method == "lora" else "model.safetensors")
        r["saved_mb"] = size_mb(ckpt) if ckpt.is_dir() else ckpt.stat().st_size / 2**20
        r["lr"] = lr
        rows[method] = r
        print(json.dumps({"run": method, **r}), flush=True)
    if "full" in rows and "lora" in rows:
        b, f, lo = rows["base"]["val_loss"], rows["full"]["val_loss"], rows["lora"]["val_loss"]
        print("\n| run | val loss | improvement | trainable params | s/step | steps | peak RSS (GiB) | saved (MiB) |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| base SmolLM2-135M-Instruct | {b:.4f} | - | - | - | - | - | - |")
        for name in ("full", "lora"):
            r = rows[name]
            print(f"| {name} (lr {r['lr']:g}, {args.budget:g} s) | {r['val_loss']:.4f} | {b - r['val_loss']:.4f} | "
                  f"{r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
                  f"{r['step_s'] / max(r['iters'], 1):.2f} | {r['iters']} | "
                  f"{r['peak_rss'] / 2**30:.2f} | {r['saved_mb']:.1f} |")
        print(f"\nLoRA reaches {100 * (b - lo) / max(b - f, 1e-9):.0f}% of full fine-tuning's improvement "
              f"(target >= 90%) with {100 * rows['lora']['peak_rss'] / rows['full']['peak_rss']:.0f}% of its peak memory "
              "(target < 50%).")


def part_sft(args, rows):
    from genlab.families.finetune import load_finetuned
    from genlab.llm.examples import scripture_instructions, scripture_topics
    from genlab.llm.hf import HFModel
    train_t, held_t = scripture_topics()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "scripture.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in scripture_instructions(train_t)))
    r = run_worker({"model": "smollm2", "data": str(path), "out": str(OUT / "sft"), "method": "lora",
                    "time_budget": args.budget, "lr": args.lora_lr, "eval_examples": 16, "batch_size": 4,
                    **{k: v for k, v in COMMON.items() if k not in ("eval_examples", "batch_size")}})
    rows["sft"] = r
    base = HFModel.load("smollm2")
    tuned = load_finetuned(OUT / "sft")
    print(f"\ninstruction tuning (LoRA, {args.budget:g} s, {r['iters']} steps, held-out reply loss "
          f"{r['val_loss']:.3f}); greedy replies to held-out topics:")
    for topic in held_t[:3]:
        q = f"Tell me about {topic}."
        print(f"\nprompt: {q}\n  before: {base.reply(base.new_chat(), q, temperature=0, max_new_tokens=60)!r}"
              f"\n  after:  {tuned.reply(tuned.new_chat(), q, temperature=0, max_new_tokens=60)!r}")


def part_dpo(args, rows):
    from genlab.families.finetune import load_finetuned
    from genlab.families.reward import compare, sample_responses, train_reward
    from genlab.llm.examples import PROMPTS, scripture_instructions, scripture_preferences, scripture_topics
    from genlab.llm.hf import HFModel
    train_t, held_t = scripture_topics()
    base = HFModel.load("smollm2")
    inst = scripture_instructions(train_t, per_topic=2, seed=1)
    t0 = time.monotonic()
    rejected, _ = sample_responses(base, [e["prompt"] for e in inst], max_new_tokens=48, seed=0)
    prefs = scripture_preferences(inst, rejected)
    path = OUT / "prefs.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in prefs))
    print(f"\npreference set: {len(prefs)} pairs (a KJV verse chosen over SmolLM2's own reply), "
          f"built in {time.monotonic() - t0:.0f} s -> {path}")
    rm = train_reward(path, OUT / "reward", overwrite=True, log=lambda s: print(s, file=sys.stderr))
    r = run_worker({"model": "smollm2", "data": str(path), "out": str(OUT / "dpo"), "method": "lora",
                    "time_budget": args.budget, "lr": args.dpo_lr, "beta": 0.1, "eval_examples": 16,
                    **{k: v for k, v in COMMON.items() if k != "eval_examples"}})
    tuned = load_finetuned(OUT / "dpo")
    prompts = [PROMPTS[i % len(PROMPTS)].format(t) for i, t in enumerate(held_t)]
    before = compare(rm, base, base, prompts, log=lambda s: None)
    after = compare(rm, tuned, base, prompts, log=lambda s: None)
    rows["dpo"] = {**r, "before": before, "after": after, "rm_val_accuracy": rm.config["val_accuracy"]}
    print(f"\nDPO (LoRA r=8, beta 0.1, {args.budget:g} s, {r['iters']} steps); reward model held-out pair "
          f"accuracy {rm.config['val_accuracy']:.3f}; {len(prompts)} held-out topics, one sampled reply each (T=1):")
    print("| policy | win rate vs base (95% CI) | mean reward | KL to reference (nats/reply) |\n|---|---|---|---|")
    for name, c in (("base (before)", before), ("DPO-tuned (after)", after)):
        lo, hi = c["win_rate_ci95"]
        print(f"| {name} | {c['win_rate']:.3f} ({lo:.2f}-{hi:.2f}) | {c['reward_model']:.3f} | {c['kl_to_baseline']:.2f} |")
    for ex in after["examples"][:2]:
        print(f"\nprompt: {ex['prompt']}\n  base: {ex['baseline']!r}\n  DPO:  {ex['model']!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=180.0, help="seconds per fine-tune (default 180)")
    ap.add_argument("--only", choices=["loss", "full", "lora", "sft", "dpo"], default=None)
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--dpo-lr", type=float, default=5e-4)
    ap.add_argument("--exact-memory", action="store_true",
                    help="run the fine-tunes with MALLOC_MMAP_THRESHOLD_=131072: glibc then returns every "
                         "large block to the system when it is freed, so the peak RSS is what was in use "
                         "(slower steps); by default glibc keeps freed memory for reuse, which RSS counts")
    args = ap.parse_args()
    if args.exact_memory:
        EXACT_MEMORY["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if args.worker:
        return worker(json.loads(args.worker))
    rows = {}
    if args.only in (None, "loss", "full", "lora"):
        if args.exact_memory:
            print("(--exact-memory: MALLOC_MMAP_THRESHOLD_=131072 for the fine-tunes)")
        part_loss(args, rows)
    if args.only in (None, "sft"):
        part_sft(args, rows)
    if args.only in (None, "dpo"):
        part_dpo(args, rows)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
