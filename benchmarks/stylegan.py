"""Style-based generator benchmark, measured in one run on this machine.

    python benchmarks/stylegan.py                    # every part (about 66 minutes on 2 cores)
    python benchmarks/stylegan.py --only mnist --budget 120 --n-samples 2000   # quicker

Parts (results are kept in bench-out/stylegan/results.json, so a part can be rerun alone):
  mnist     genlab's sngan (the best GAN before), stylegan (AdaIN) and stylegan2 (demodulation),
            BUDGET seconds of training each, one after the other in their own processes; then
            FID / KID / precision / recall in the dataset classifier's features against their
            real-data floors, class shares, perceptual path length (Z and W, full and end),
            linear separability in Z and W, and seconds per thousand training images.
  control   scale-specific control of the best style-based run, measured: copying a source's
            coarse styles makes the classifier see the source's class; copying only the fine
            styles changes pixels but not the class; noise alone never changes the class; and
            truncation psi = 0.7 against 1 (precision up, recall down), towards each class's
            own mean w and, for comparison, towards the mean w over all classes.
  emoji     the best architecture on emoji for EMOJI_BUDGET seconds: FID against its floor in the
            emoji classifier's features, and the figures the README shows (docs/).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench-out", "stylegan")
RESULTS = os.path.join(OUT, "results.json")
ROWS = {"sngan": ("gan", []), "stylegan": ("stylegan", ["--arch", "stylegan"]),
        "stylegan2": ("stylegan", ["--arch", "stylegan2"])}


def _load():
    return json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}


def _save(results):
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)


def train(name, dataset, budget, out):
    family, args = ROWS[name]
    cmd = [sys.executable, "-m", "genlab", "train", family, "--dataset", dataset, "--time-budget", str(budget),
           "--seed", "0", "--out", out, "--overwrite", "--no-progress", *args]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training {name} failed:\n{r.stderr[-3000:]}")
    return time.time() - t0


def measure(out, n_samples, style: bool) -> dict:
    import genlab
    run = genlab.load(out)
    metrics = "fid,kid,pr" + (",ppl_zfull,ppl_wfull,ppl_zend,ppl_wend,ls" if style else "")
    res = run.evaluate(n_samples=n_samples, metrics=metrics)
    epochs = [r for r in run.dir.read_metrics() if r.get("kind") == "epoch"]
    images = epochs[-1]["iterations"] * run.config["train"]["batch_size"]
    res["s_per_kimg"] = epochs[-1]["step_seconds"] / images * 1000
    res["images_seen"] = images
    return res


def part_mnist(args, results):
    rows = results.setdefault("mnist", {})
    for name in ROWS:
        out = os.path.join(OUT, f"mnist-{name}")
        print(f"== {name}: training {args.budget:g} s ...", flush=True)
        wall = train(name, "mnist", args.budget, out)
        rows[name] = {"wall": wall, **measure(out, args.n_samples, style=name != "sngan")}
        _save(results)
        print(json.dumps({k: v for k, v in rows[name].items() if "share" not in k and k != "classes"}), flush=True)


def part_control(args, results):
    import torch
    with torch.no_grad():
        _control(args, results)


def _control(args, results):
    import torch

    import genlab
    from genlab.data import load_images
    from genlab.metrics.classifier import get_classifier
    from genlab.models.stylegan import style_groups
    rows = results.get("mnist", {})
    best = min((n for n in ("stylegan", "stylegan2") if n in rows), key=lambda n: rows[n][next(
        k for k in rows[n] if k.startswith("FID[") and "floor" not in k)])
    run = genlab.load(os.path.join(OUT, f"mnist-{best}"))
    clf = get_classifier(load_images("mnist"))
    groups = style_groups(run.model.cfg)
    n = args.pairs
    rows_seeds, cols_seeds = list(range(1000, 1000 + n)), list(range(5000, 5000 + n))
    w_r, w_c = run._ws(rows_seeds), run._ws(cols_seeds)
    img_r, img_c = run._synth(w_r), run._synth(w_c)
    cls_r, cls_c = clf.probs(img_r).argmax(1), clf.probs(img_c).argmax(1)
    differ = cls_r != cls_c
    out = {"run": best, "pairs": int(differ.sum())}
    for g in ("coarse", "middle", "fine"):
        mixed = w_r.clone()
        mixed[:, groups[g]] = w_c[:, groups[g]]
        img = run._synth(mixed)
        cls = clf.probs(img).argmax(1)
        out[f"{g}_to_source_class"] = float((cls[differ] == cls_c[differ]).float().mean())
        out[f"{g}_class_changed"] = float((cls[differ] != cls_r[differ]).float().mean())
        out[f"{g}_pixels_changed"] = float((img - img_r).abs().mean())
    keep = []
    torch.manual_seed(0)
    for i in range(0, 200, 50):
        w = run._ws(list(range(i, i + 50)))
        base = clf.probs(run._synth(w)).argmax(1)
        for _ in range(20):
            keep.append((clf.probs(run._synth(w, noise_mode="random")).argmax(1) == base).float())
    out["noise_keeps_class"] = float(torch.cat(keep).mean())
    out["groups"] = groups
    out.update(truncation(run, clf, args.n_samples))
    results["control"] = out
    _save(results)
    print(json.dumps(out, indent=1), flush=True)


def truncation(run, clf, n: int, psi: float = 0.7) -> dict:
    """Precision, recall, FID and the share of samples in the class asked for, on the same
    n latents and classes: psi = 1; psi towards each class's own mean w (what genlab does);
    psi towards the mean w over all classes (stylegan2-ada's w_avg)."""
    import torch

    from genlab.metrics.quality import image_metrics
    data, tag, m = run._data(), clf.label, run.model
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, run.latent_dim, generator=g)
    y = torch.randint(0, data.num_classes, (n,), generator=g)
    out = {}
    for name in ("psi1", f"psi{psi:g}", f"psi{psi:g}-overall"):
        images = []
        for i in range(0, n, 1000):
            zz, yy = z[i:i + 1000], y[i:i + 1000]
            if name.endswith("overall"):
                mapping = m.sampler.mapping
                images.append(m.generate_ws(mapping.w_avg.lerp(mapping(zz, yy), psi)))
            else:
                images.append(m.generate(zz, yy, truncation_psi=1.0 if name == "psi1" else psi))
        x = torch.cat(images)
        r = image_metrics(clf, data, x, seed=0)
        out[name] = {"precision": r[f"precision[{tag}]"], "recall": r[f"recall[{tag}]"], "fid": r[f"FID[{tag}]"],
                     "class_accuracy": float((clf.probs(x).argmax(1) == y).float().mean())}
    return out


def part_emoji(args, results):
    import genlab
    arch = args.emoji_arch or min(("stylegan", "stylegan2"), key=lambda n: results.get("mnist", {}).get(n, {}).get(
        "FID[genlab-mnist]", 1e9))
    out = os.path.join(OUT, f"emoji-{arch}")
    print(f"== emoji, {arch}: training {args.emoji_budget:g} s ...", flush=True)
    wall = train(arch, "emoji", args.emoji_budget, out)
    res = {"arch": arch, "wall": wall, **measure(out, min(args.n_samples, 3000), style=True)}
    results["emoji"] = res
    _save(results)
    run = genlab.load(out)
    docs = os.path.join(ROOT, "docs")
    run.save_samples(None, os.path.join(docs, "stylegan-emoji-samples.png"), seeds="0-63")
    run.save_style_mix("10,21,32,43", "50,61,72,83,94", "coarse", os.path.join(docs, "stylegan-emoji-mix-coarse.png"))
    run.save_style_mix("10,21,32,43", "50,61,72,83,94", "fine", os.path.join(docs, "stylegan-emoji-mix-fine.png"))
    run.save_truncation("0-5", (-1, -0.5, 0, 0.5, 0.7, 1), os.path.join(docs, "stylegan-emoji-truncation.png"))
    print(json.dumps({k: v for k, v in res.items() if "share" not in k and k != "classes"}), flush=True)


def table(results):
    rows = results.get("mnist", {})
    if rows:
        tag = "genlab-mnist"
        print(f"\n| run | images seen | s / kimg | FID[{tag}] | FID / floor | KID | precision | recall | "
              "min / max class share | ppl_zfull | ppl_wfull | ppl_zend | ppl_wend | LS z | LS w |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            def g(k, fmt="{:.3g}"):
                v = r.get(f"{k}[{tag}]")
                return fmt.format(v) if v is not None else ""
            print(f"| {name} | {r['images_seen']:,} | {r['s_per_kimg']:.2f} | {g('FID', '{:.2f}')} | "
                  f"{r['FID ratio to floor']:.1f}x | {g('KID', '{:.3f}')} | {g('precision', '{:.3f}')} | "
                  f"{g('recall', '{:.3f}')} | {r['class_share_min']:.1%} / {r['class_share_max']:.1%} | "
                  f"{g('ppl_zfull')} | {g('ppl_wfull')} | {g('ppl_zend')} | {g('ppl_wend')} | {g('ls_z')} | {g('ls_w')} |")
        f = next(iter(rows.values()))
        print(f"| real-data floor | | | {f[f'FID[{tag}] real-data floor']:.2f} | 1x | "
              f"{f[f'KID[{tag}] real-data floor']:.3f} | {f[f'precision[{tag}] real-data floor']:.3f} | "
              f"{f[f'recall[{tag}] real-data floor']:.3f} | | | | | | | |")
    if "control" in results:
        c = results["control"]
        print(f"\nscale-specific control ({c['run']}, {c['pairs']} pairs whose classes differ):")
        for g in ("coarse", "middle", "fine"):
            print(f"  {g:<7} styles copied: class becomes the source's {c[g + '_to_source_class']:.1%}, "
                  f"class changes {c[g + '_class_changed']:.1%}, mean pixel change {c[g + '_pixels_changed']:.3f}")
        print(f"  noise alone keeps the class in {c['noise_keeps_class']:.2%} of draws")
        for psi, what in (("psi1", ""), ("psi0.7", " (towards each class's mean w)"),
                          ("psi0.7-overall", " (towards the mean w of all classes)")):
            if psi in c:
                print(f"  {psi}{what}: precision {c[psi]['precision']:.3f}, recall {c[psi]['recall']:.3f}, "
                      f"FID {c[psi]['fid']:.2f}, in the class asked for {c[psi].get('class_accuracy', float('nan')):.1%}")
    if "emoji" in results:
        e = results["emoji"]
        tag = "genlab-emoji"
        print(f"\nemoji ({e['arch']}, {e['wall']:.0f} s): FID[{tag}] {e[f'FID[{tag}]']:.2f} (floor "
              f"{e[f'FID[{tag}] real-data floor']:.2f}, {e['FID ratio to floor']:.1f}x), precision "
              f"{e[f'precision[{tag}]']:.3f}, recall {e[f'recall[{tag}]']:.3f}, classifier test accuracy "
              f"{e['classifier_test_accuracy']:.1%}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["mnist", "control", "emoji", "table"], default=None)
    p.add_argument("--budget", type=float, default=600)
    p.add_argument("--emoji-budget", type=float, default=1800)
    p.add_argument("--emoji-arch", default=None, choices=["stylegan", "stylegan2"])
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--pairs", type=int, default=500)
    args = p.parse_args()
    results = _load()
    for name, fn in (("mnist", part_mnist), ("control", part_control), ("emoji", part_emoji)):
        if args.only in (None, name):
            fn(args, results)
    table(results)


if __name__ == "__main__":
    main()
