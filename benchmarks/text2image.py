"""Text-to-image benchmark, measured in one run on this machine.

    python benchmarks/text2image.py                          # everything (about 3 h 45 min on 2 cores)
    python benchmarks/text2image.py --only mnist --rows cvae-standard,gan --budget 120   # quicker

Rows: the lecture-style conditional VAE (the encoder does not see the text), the standard
conditional VAE (it does), the text-conditioned GAN (sngan, matching-aware D) and the
style-based generator (stylegan2, the text into the mapping network), each trained twice
for BUDGET seconds -- conditioned on the text (MiniLM) and on the class label -- one after
the other in their own processes. Measured on every run, with the same prompts:

  - conditional accuracy on the phrasings used in training (`--prompts train`) and on the
    phrasings held out of it (`--prompts heldout`), in the dataset classifier;
  - attribute control (MNIST): Spearman rho between asked and measured thickness, slant
    and width (0.866 is perfect separation of two groups);
  - FID / precision / recall in the classifier's features (conditions drawn from the data);
  - for the VAEs the test negative ELBO.

Parts (results kept in bench-out/text2image/results.json; a part can be rerun alone):
  mnist, fashion   the table above on MNIST and Fashion-MNIST;
  encoder          the best MNIST text row again with --text-encoder learned;
  emoji            the style-based generator on emoji with text, then with the category
                   label, EMOJI_BUDGET seconds each:
                   category accuracy on held-out names and per-category FID, also with
                   truncation psi 0.7 and 0.5 towards each prompt's mean w; the classifier's accuracy
                   on the real held-out images beside it; a prompt grid.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench-out", "text2image")
RESULTS = os.path.join(OUT, "results.json")
ROWS = {"cvae-lecture": ("vae", ["--arch", "conv", "--cvae", "lecture"]),
        "cvae-standard": ("vae", ["--arch", "conv", "--cvae", "standard"]),
        "gan": ("gan", ["--arch", "sngan"]),
        "stylegan": ("stylegan", ["--arch", "stylegan2"])}
DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist"}
TRUNCS = (0.7, 0.5)    # emoji: also measured with truncation towards each condition's mean w
EMOJI_PROMPTS = ["a red heart", "a cat face", "a national flag", "a smiling face", "a car", "a pizza",
                 "a tree", "a clock"]


def _load():
    return json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}


def _save(results):
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)


def train(row, dataset, condition, budget, out, extra=()):
    family, args = ROWS[row]
    cmd = [sys.executable, "-m", "genlab", "train", family, "--dataset", dataset, "--condition", condition,
           "--time-budget", str(budget), "--seed", "0", "--out", out, "--overwrite", "--no-progress", *args, *extra]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training {row} ({condition}) failed:\n{r.stderr[-3000:]}")
    return time.time() - t0


def measure(out, per_prompt, n_samples) -> dict:
    import genlab
    run = genlab.load(out)
    res = {}
    for which in ("train", "heldout"):
        ev = run.evaluate_prompts(which, per_prompt=per_prompt, seed=0)
        res[which] = {k: v for k, v in ev.items() if k.startswith(("conditional", "category", "rho_", "worst"))
                      or k.endswith("_percentile")}
    ev = run.evaluate(n_samples=n_samples, iw_samples=10) if run.family == "vae" else \
        run.evaluate(n_samples=n_samples, metrics="fid,kid,pr")
    res["quality"] = {k: v for k, v in ev.items() if k.startswith(("FID", "precision", "recall", "test_neg_elbo"))}
    return res


def part_table(part, args, results):
    dataset = DATASETS[part]
    rows = args.rows.split(",") if args.rows else list(ROWS)
    for row in rows:
        for cond in ("text", "class"):
            out = os.path.join(OUT, "runs", f"{part}-{row}-{cond}")
            secs = train(row, dataset, cond, args.budget, out)
            r = measure(out, args.per_prompt, args.n_samples)
            r["wall_seconds"] = round(secs, 1)
            results.setdefault(part, {}).setdefault(row, {})[cond] = r
            _save(results)
            print(f"{part} {row} {cond}: {json.dumps(r)}", flush=True)


def part_encoder(args, results):
    best = max(results.get("mnist", {}).items(), key=lambda kv: kv[1].get("text", {}).get("heldout", {})
               .get("conditional_accuracy[genlab-mnist]", 0), default=("gan", None))[0]
    out = os.path.join(OUT, "runs", f"mnist-{best}-learned")
    secs = train(best, "mnist", "text", args.budget, out, ["--text-encoder", "learned"])
    r = measure(out, args.per_prompt, args.n_samples)
    r["wall_seconds"] = round(secs, 1)
    results["encoder"] = {"row": best, "learned": r}
    _save(results)
    print(f"encoder {best} learned: {json.dumps(r)}", flush=True)


def real_category_accuracy(run) -> float:
    """The emoji classifier's accuracy on the real held-out images (the held-out names'
    own pictures): the most a generator could score if its samples were the real ones."""
    import torch

    from genlab.metrics.classifier import get_classifier
    data = run._data()
    x, y = data.split("test")
    pred = get_classifier(data).probs(data.to_float(x)).argmax(1)
    return round(float((pred == torch.as_tensor(y)).float().mean()), 4)


def part_emoji(args, results):
    import genlab
    r = {}
    for cond in ("text", "class"):
        out = os.path.join(OUT, "runs", f"emoji-stylegan-{cond}")
        secs = train("stylegan", "emoji", cond, args.emoji_budget, out)
        run = genlab.load(out)
        rc = r[cond] = {"wall_seconds": round(secs, 1)}
        for psi in (None, *TRUNCS):
            for which in ("train", "heldout"):
                ev = run.evaluate_prompts(which, per_prompt=20, seed=0, trunc=psi)
                rc[which if psi is None else f"{which}_psi{psi:g}"] = {
                    k: v for k, v in ev.items() if k.startswith(("category", "fid_per", "prompts"))}
        if cond == "text":
            r["real_test_images"] = real_category_accuracy(run)
            docs = os.path.join(ROOT, "docs")
            os.makedirs(docs, exist_ok=True)
            run.save_samples(8, os.path.join(docs, "text2image-emoji-prompts.png"), seed=0, prompts=EMOJI_PROMPTS)
        results["emoji"] = r
        _save(results)
        print(f"emoji {cond}: {json.dumps(rc)}", flush=True)


def table(results):
    for part, label, (a1, a2) in (("mnist", "genlab-mnist", ("thickness", "slant")),
                                  ("fashion", "genlab-fashion-mnist", ("size", "none"))):
        if part not in results:
            continue
        print(f"\n{part}: conditional accuracy (train / held-out phrasings), attribute rho, quality")
        print(f"{'model':<16}{'condition':<10}{'acc train':>10}{'acc held':>10}{'rho ' + a1[:5]:>10}{'rho ' + a2[:5]:>10}"
              f"{'FID':>9}{'prec':>7}{'rec':>7}{'-ELBO':>9}")
        for row, conds in results[part].items():
            for cond, r in conds.items():
                q = r["quality"]
                fid = next((v for k, v in q.items() if k.startswith("FID[") and "floor" not in k), float("nan"))
                prec = next((v for k, v in q.items() if k.startswith("precision[") and "floor" not in k), float("nan"))
                rec = next((v for k, v in q.items() if k.startswith("recall[") and "floor" not in k), float("nan"))
                acc = f"conditional_accuracy[{label}]"
                print(f"{row:<16}{cond:<10}{r['train'].get(acc, float('nan')):>10.3f}"
                      f"{r['heldout'].get(acc, float('nan')):>10.3f}{r['heldout'].get('rho_' + a1, float('nan')):>10.3f}"
                      f"{r['heldout'].get('rho_' + a2, float('nan')):>10.3f}{fid:>9.2f}{prec:>7.3f}{rec:>7.3f}"
                      f"{q.get('test_neg_elbo', float('nan')):>9.1f}")
    if "encoder" in results:
        e = results["encoder"]
        print(f"\nlearned text encoder ({e['row']}, MNIST): held-out accuracy "
              f"{e['learned']['heldout'].get('conditional_accuracy[genlab-mnist]'):.3f}, training phrasings "
              f"{e['learned']['train'].get('conditional_accuracy[genlab-mnist]'):.3f}")
    if "emoji" in results:
        e = results["emoji"]
        acc = "category_accuracy[genlab-emoji]"
        print(f"\nemoji: category accuracy (training names / held-out names); the classifier on the real "
              f"held-out images {e.get('real_test_images')}")
        for cond in ("text", "class"):
            if cond not in e:
                continue
            c = e[cond]
            line = f"  {cond:<5} ({c['wall_seconds']:.0f} s): {c['train'].get(acc)} / {c['heldout'].get(acc)}"
            for psi in TRUNCS:
                if f"heldout_psi{psi:g}" in c:
                    line += (f"; psi {psi:g} towards each condition's mean w: {c[f'train_psi{psi:g}'].get(acc)} / "
                             f"{c[f'heldout_psi{psi:g}'].get(acc)}")
            print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["mnist", "fashion", "encoder", "emoji", "table"], default=None)
    p.add_argument("--rows", default=None, help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--budget", type=float, default=600)
    p.add_argument("--emoji-budget", type=float, default=1800)
    p.add_argument("--per-prompt", type=int, default=100)
    p.add_argument("--n-samples", type=int, default=10_000)
    args = p.parse_args()
    results = _load()
    parts = [args.only] if args.only else ["mnist", "fashion", "encoder", "emoji"]
    for part in parts:
        if part in DATASETS:
            part_table(part, args, results)
        elif part == "encoder":
            part_encoder(args, results)
        elif part == "emoji":
            part_emoji(args, results)
    table(results)


if __name__ == "__main__":
    main()
