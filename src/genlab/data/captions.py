"""Captions: images with text, for text-conditioned generators.

- MNIST and Fashion-MNIST get captions from the label, through several phrasings
  (templates) and synonyms ("a handwritten seven", "the digit 7", "a pair of trousers"),
  and from attributes genlab measures on each image and puts in words: MNIST stroke
  thickness (ink mass), slant and width (second moments of the ink), Fashion-MNIST size
  (the object's area). Each attribute's words name the image's third within its
  class ("a thick seven" is a seven with more ink than two thirds of the sevens), so
  every word is used equally often and "does the image follow the text" can be measured
  beyond the class.
- Some phrasings are held out of training (`HELD_OUT`): prompts in them test whether a
  model generalises to wordings it never saw.
- `folder:PATH` data reads `metadata.jsonl` ({"file_name": ..., "text": ...}, the Hugging
  Face image-folder convention; "text" may be a list) or `captions.txt` (FILE<TAB>caption
  per line; several lines may caption one image).
- Emoji captions come with the data (data/emoji.py).

`prompt_info(prompt, dataset)` reads a prompt back into the class and attribute levels it
asks for, which is what conditional accuracy and attribute control are measured against.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..util.errors import GenlabError

CAPTIONED = ("mnist", "fashion-mnist", "emoji")   # built-in datasets with captions

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_WORDS = (("t-shirt", "top", "tee"), ("pair of trousers", "pair of pants"), ("pullover", "sweater"),
                 ("dress",), ("coat",), ("sandal",), ("shirt",), ("sneaker",), ("bag", "handbag"),
                 ("ankle boot",))

# {w}: the class word, {d}: the digit, {a_w}: the word with its article, {attrs}: attribute words
# ({a_attrs}: with their article, {attrs_and}: joined with 'and').
TEMPLATES = {
    "mnist": {
        "train": ("a handwritten {w}", "the digit {d}", "{a_w}", "the number {w}", "a picture of {a_w}",
                  "digit {d}"),
        "heldout": ("an image showing the numeral {d}", "a hand-drawn {w}", "this is {a_w}",
                    "the handwritten number {d}"),
        "attr_train": ("{a_attrs} {w}",),
        "attr_heldout": ("a handwritten {w}, {attrs_and}",),
    },
    "fashion-mnist": {
        "train": ("{a_w}", "a photo of {a_w}", "a picture of {a_w}", "a greyscale image of {a_w}",
                  "{a_w}, a fashion item"),
        "heldout": ("a catalogue photo showing {a_w}", "this is {a_w}", "a product shot of {a_w}"),
        "attr_train": ("{a_attrs} {w}",),
        "attr_heldout": ("{a_w} that is {attrs_and}",),
    },
}
HELD_OUT = {k: v["heldout"] + v["attr_heldout"] for k, v in TEMPLATES.items()}

# attribute -> (word for the lowest third, word for the highest third)
ATTRIBUTES = {
    "mnist": {"thickness": ("thin", "thick"), "slant": ("upright", "slanted"), "width": ("narrow", "wide")},
    "fashion-mnist": {"size": ("small", "large")},
}


# -- attributes measured on images -----------------------------------------------------------------

def measure(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image (float (N, 1, H, W) in [0, 1] or uint8): thickness = ink mass (the sum of
    intensities), slant = -mu11 / mu02 of the intensity distribution (> 0: the top leans
    right), width = sqrt(mu20), the horizontal spread of the ink (MNIST digits all fit a
    20-pixel box, so a bounding box's width ties too often to split in thirds), size =
    pixels brighter than 0.1."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.mean(1)                                                 # (N, H, W)
    _, h, w = x.shape
    mass = x.sum((1, 2)).clamp(min=1e-6)
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    cy = (x * ys).sum((1, 2)) / mass
    cx = (x * xs).sum((1, 2)) / mass
    dy, dx = ys - cy.view(-1, 1, 1), xs - cx.view(-1, 1, 1)
    mu11 = (x * dx * dy).sum((1, 2)) / mass
    mu02 = (x * dy * dy).sum((1, 2)) / mass
    mu20 = (x * dx * dx).sum((1, 2)) / mass
    return {"thickness": mass.numpy(), "slant": (-mu11 / mu02.clamp(min=1e-6)).numpy(),
            "width": mu20.clamp(min=0).sqrt().numpy(), "size": (x > 0.1).sum((1, 2)).float().numpy()}


def class_thresholds(values: dict, y: np.ndarray, num_classes: int) -> dict:
    """Per attribute and class, the 1/3 and 2/3 quantiles of the training images."""
    return {a: [np.quantile(v[y == k], [1 / 3, 2 / 3]).tolist() if (y == k).any() else [0.0, 0.0]
                for k in range(num_classes)] for a, v in values.items()}


def percentile_in_class(values: np.ndarray, classes: np.ndarray, ref: np.ndarray, ref_y: np.ndarray) -> np.ndarray:
    """Each value's percentile (0..1) among the reference values of its class."""
    out = np.zeros(len(values))
    for k in np.unique(classes):
        r = np.sort(ref[ref_y == k])
        m = classes == k
        out[m] = np.searchsorted(r, values[m], side="right") / max(1, len(r))
    return out


# -- captions of the built-in datasets --------------------------------------------------------------

def _article(w: str) -> str:
    return ("an " if w[0] in "aeiou" else "a ") + w


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def render(template: str, dataset: str, k: int, attrs: list[str] = (), synonym: int = 0) -> str:
    """One caption: `template` filled with class k's word (its synonym-th) and attribute words."""
    if dataset == "mnist":
        w, d = DIGIT_WORDS[k], str(k)
    else:
        names = FASHION_WORDS[k]
        w, d = names[synonym % len(names)], ""
    words = ", ".join(attrs)
    return template.format(w=w, d=d, a_w=_article(w), attrs=words, a_attrs=_article(words) if attrs else "a",
                           attrs_and=_and(list(attrs)) if attrs else "")


def label_captions(dataset: str, x: torch.Tensor, y: torch.Tensor, thresholds: dict | None = None) -> tuple:
    """(captions per image, the attribute thresholds): the training phrasings of each
    image's class (every synonym), then its attribute words alone and together."""
    t = TEMPLATES[dataset]
    attrs = ATTRIBUTES[dataset]
    values = measure(x)
    yy = y.numpy()
    k_count = 10
    if thresholds is None:
        thresholds = class_thresholds({a: values[a] for a in attrs}, yy, k_count)
    base = {}
    for k in range(k_count):
        syn = len(FASHION_WORDS[k]) if dataset == "fashion-mnist" else 1
        base[k] = [render(tp, dataset, k, synonym=s) for tp in t["train"] for s in range(syn)]
    levels = {}
    for a in attrs:
        lo = np.array([thresholds[a][k][0] for k in yy])
        hi = np.array([thresholds[a][k][1] for k in yy])
        levels[a] = np.where(values[a] <= lo, -1, np.where(values[a] > hi, 1, 0))
    memo: dict = {}
    out = []
    for i, k in enumerate(yy.tolist()):
        words = tuple(attrs[a][0 if levels[a][i] < 0 else 1] for a in attrs if levels[a][i] != 0)
        key = (k, words)
        if key not in memo:
            caps = list(base[k])
            if words:
                caps += [render(tp, dataset, k, [wd]) for tp in t["attr_train"] for wd in words]
                if len(words) > 1:
                    caps += [render(tp, dataset, k, list(words)) for tp in t["attr_train"]]
            memo[key] = caps
        out.append(memo[key])
    return out, thresholds


def prompt_set(dataset: str, which: str = "heldout", data=None) -> list[str]:
    """Built-in evaluation prompts: `train` (phrasings used in training) or `heldout` (never
    seen): every class in every phrasing, and each attribute word alone in the attribute
    phrasing. Emoji: the first caption of every training image (`train`) or of every
    test image (`heldout`: names of images the model did not see)."""
    if which not in ("train", "heldout"):
        raise GenlabError(f"built-in prompt sets are 'train' and 'heldout', not '{which}'")
    if dataset == "emoji":
        caps = data.captions("train" if which == "train" else "test")
        return sorted({c[0] for c in caps})
    if dataset not in TEMPLATES:
        raise GenlabError(f"{dataset} has no built-in prompt set (built-in: {', '.join(CAPTIONED)}); "
                          "give --prompts FILE")
    t = TEMPLATES[dataset]
    cls = t["train"] if which == "train" else t["heldout"]
    att = t["attr_train"] if which == "train" else t["attr_heldout"]
    out = [render(tp, dataset, k) for tp in cls for k in range(10)]
    for tp in att:
        for k in range(10):
            for lo, hi in ATTRIBUTES[dataset].values():
                out += [render(tp, dataset, k, [lo]), render(tp, dataset, k, [hi])]
    return out


def prompt_info(prompt: str, dataset: str, lookup: dict | None = None) -> dict:
    """What a prompt asks for: {"class": index or None, attribute: -1 | +1 ...}. MNIST /
    Fashion-MNIST: class words, synonyms and digits; attribute words. Other datasets: the
    class of an image captioned exactly so (`lookup`: caption -> class)."""
    p = " " + re.sub(r"[^a-z0-9\-]+", " ", prompt.lower()) + " "
    info: dict = {"class": None}
    if dataset == "mnist":
        hits = {k for k, w in enumerate(DIGIT_WORDS) if f" {w} " in p} | {int(d) for d in re.findall(r" (\d) ", p)}
        info["class"] = hits.pop() if len(hits) == 1 else None
    elif dataset == "fashion-mnist":
        found = []
        for k, names in enumerate(FASHION_WORDS):
            for n in names:
                for m in re.finditer(rf" {re.escape(n)} ", p):
                    found.append((m.start(), m.end(), k))
        # the longest name wins where names overlap ("t-shirt" holds "shirt")
        found.sort(key=lambda f: f[0] - f[1])
        kept = []
        for s, e, k in found:
            if all(e <= s2 or s >= e2 for s2, e2, _ in kept):
                kept.append((s, e, k))
        ks = {k for _, _, k in kept}
        info["class"] = ks.pop() if len(ks) == 1 else None
    elif lookup is not None:
        info["class"] = lookup.get(prompt.strip().lower())
    for a, (lo, hi) in ATTRIBUTES.get(dataset, {}).items():
        if f" {hi} " in p:
            info[a] = 1
        elif f" {lo} " in p:
            info[a] = -1
    return info


# -- folder:PATH captions ------------------------------------------------------------------------------

def read_folder_captions(root: Path, rel: list[str]) -> list[list[str]] | None:
    """Captions for the images `rel` (paths relative to `root`, posix) from
    root/metadata.jsonl or root/captions.txt; None when neither exists."""
    meta, txt = root / "metadata.jsonl", root / "captions.txt"
    if not meta.is_file() and not txt.is_file():
        return None
    known = {r: i for i, r in enumerate(rel)}
    caps: list[list[str]] = [[] for _ in rel]
    src = meta if meta.is_file() else txt
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GenlabError(f"{src}: unreadable ({type(e).__name__})") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if src is meta:
            try:
                rec = json.loads(line)
            except ValueError:
                raise GenlabError(f"{src}:{no}: not a JSON object") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                raise GenlabError(f"{src}:{no}: needs a \"file_name\" (a string)")
            name, text = rec["file_name"], rec.get("text")
            texts = text if isinstance(text, list) else [text]
            if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise GenlabError(f"{src}:{no}: \"text\" must be a non-empty string (or a list of them)")
        else:
            if "\t" not in line:
                raise GenlabError(f"{src}:{no}: expected FILE<TAB>caption")
            name, text = line.split("\t", 1)
            if not text.strip():
                raise GenlabError(f"{src}:{no}: empty caption for {name}")
            texts = [text]
        name = Path(name).as_posix()
        if name not in known:
            raise GenlabError(f"{src}:{no}: names {name}, which is not an image in {root}")
        caps[known[name]] += [t.strip() for t in texts]
    return caps
