"""Language models from scratch on this machine: nanoGPT's CPU recipe beside genlab's recipe
at the same wall-clock budget, genlab's best char-level loss in 10 minutes, and generation
speed with and without the KV cache.

    python benchmarks/lm.py                 # everything (about 15 minutes on 2 cores)
    python benchmarks/lm.py --budget 600    # the length of the "10 minutes" row
    python benchmarks/lm.py --skip-long     # leave out the 10-minute row
    python benchmarks/lm.py --speed-only    # only the generation speeds, on the runs already there

Each training runs in its own process, one after the other (never two at once). Every
model is scored the same way: `genlab eval` over the whole held-out split (4 plays the
training never sees), each character predicted once with a sliding window (stride = half
the context); "window loss" is the estimate printed during training (fixed windows,
every position, nanoGPT's way of estimating). Loss is in nats per character.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENLAB = [sys.executable, "-m", "genlab"]


def sh(*args) -> str:
    r = subprocess.run(GENLAB + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"failed: genlab {' '.join(map(str, args))}\n{r.stderr}")
    return r.stdout


def train_row(name: str, out: Path, *args) -> dict:
    t0 = time.monotonic()
    sh("train", "lm", "--corpus", "shakespeare", "--out", out, "--overwrite", "--no-progress", *args)
    wall = time.monotonic() - t0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if r["kind"] == "val"]
    ev = json.loads(sh("eval", out))
    cfg = json.loads((out / "config.json").read_text())
    m = cfg["model"]
    row = {"run": name, "loop_s": vals[-1]["elapsed"], "process_s": round(wall, 1),
           "iters": vals[-1]["iter"], "window_loss": min(r["val_loss"] for r in vals),
           "val_loss": ev["val_loss"], "bpc": ev["bits_per_char"],
           "model": f"{m['n_layer']}L/{m['n_head']}H/{m['n_embd']}d ctx {m['block_size']}",
           "batch": cfg["train"]["batch_size"], "lr": cfg["train"]["lr"]}
    print(json.dumps(row), flush=True)
    return row


def speed(out: Path, n: int = 500) -> dict:
    code = f"""
import time, torch, json, genlab
run = genlab.load({str(out)!r})
res = {{}}
for cache in (True, False):
    run.generate("ROMEO:", max_new_tokens=20, seed=0, use_cache=cache)  # warm up
    best = float("inf")
    for _ in range(3):  # the best of three: this machine is shared and noisy
        t = time.perf_counter()
        run.generate("ROMEO:", max_new_tokens={n}, temperature=0.8, top_k=200, seed=0, use_cache=cache)
        best = min(best, time.perf_counter() - t)
    res["cache" if cache else "no_cache"] = {n} / best
res["sample"] = run.generate("ROMEO:", max_new_tokens={n}, temperature=0.8, top_k=200, seed=0)
print(json.dumps(res))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def speed_untrained(n: int = 500) -> dict:
    """Cache vs no cache for a larger GPT: speed does not depend on the weights."""
    code = f"""
import time, torch, json
from genlab.models.gpt import GPT, GPTConfig
torch.manual_seed(0)
m = GPT(GPTConfig(vocab_size=80, block_size=256, n_layer=6, n_head=6, n_embd=384)).eval()
idx = torch.tensor([[1, 2, 3]])
res = {{}}
for cache in (True, False):
    g = torch.Generator().manual_seed(0)
    list(m.generate(idx, 10, generator=g, use_cache=cache))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        list(m.generate(idx, {n}, temperature=0.8, top_k=200, generator=g, use_cache=cache))
        best = min(best, time.perf_counter() - t)
    res["cache" if cache else "no_cache"] = {n} / best
print(json.dumps(res))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600, help="seconds for the best-recipe row (default 600)")
    ap.add_argument("--skip-long", action="store_true", help="leave out the best-recipe row")
    ap.add_argument("--out", default="runs/bench-lm", help="where the runs go")
    ap.add_argument("--speed-only", action="store_true",
                    help="measure generation speed on the runs a previous full run left in --out")
    a = ap.parse_args()
    base = ROOT / a.out
    if a.speed_only:
        return speeds(base, a.skip_long)
    sh("data", "fetch", "shakespeare")
    rows = [train_row("nanoGPT CPU recipe (--recipe nanogpt)", base / "nanogpt", "--recipe", "nanogpt")]
    t_equal = rows[0]["loop_s"]
    rows.append(train_row(f"genlab recipe, --time-budget {t_equal:.0f} (equal time)", base / "genlab-equal",
                          "--time-budget", f"{t_equal:.1f}"))
    if not a.skip_long:
        rows.append(train_row(f"genlab recipe, --time-budget {a.budget:.0f}", base / "genlab-long",
                              "--time-budget", f"{a.budget:g}"))
    print()
    print("| run | model | batch | lr | iters | loop s | window loss | held-out loss | bits/char |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['model']} | {r['batch']} | {r['lr']:g} | {r['iters']} | {r['loop_s']:.0f} | "
              f"{r['window_loss']:.4f} | {r['val_loss']:.4f} | {r['bpc']:.3f} |")
    print(f"\nequal time: genlab's recipe is {rows[0]['val_loss'] - rows[1]['val_loss']:+.4f} nats/char "
          f"lower than nanoGPT's (target >= 0.15)")
    if not a.skip_long:
        print(f"best in {a.budget:.0f} s: held-out loss {rows[2]['val_loss']:.4f} (target <= 1.60)")
    speeds(base, a.skip_long)


def speeds(base: Path, skip_long: bool) -> None:
    print("\ngeneration, 500 new tokens after 'ROMEO:' (temperature 0.8, top-k 200; best of 3):")
    print("| model | tokens/s with KV cache | without | speed-up |")
    print("|---|---|---|---|")
    samples = {}
    for name, out in (("nanogpt", base / "nanogpt"), ("genlab", base / ("genlab-equal" if skip_long else "genlab-long"))):
        s = speed(out)
        samples[name] = s["sample"]
        print(f"| {name} ({out.name}) | {s['cache']:.0f} | {s['no_cache']:.0f} | {s['cache'] / s['no_cache']:.1f}x |")
    big = speed_untrained()
    print(f"| 6L/6H/384d ctx 256 (nanoGPT's GPU config; untrained weights, speed only) | {big['cache']:.0f} | "
          f"{big['no_cache']:.0f} | {big['cache'] / big['no_cache']:.1f}x |")
    print("\nsample from the genlab run (seed 0):\n")
    print("ROMEO:" + samples["genlab"])


if __name__ == "__main__":
    main()
