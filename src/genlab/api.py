"""The Python API: the one facade that both the CLI and users' scripts call. It holds no
family's logic: each call goes to the family registry (families/), the compressor
(compress/) or the data layer.

    import genlab
    run = genlab.train("vae", dataset="mnist", epochs=10, out="runs/my-vae")
    images = run.sample(64, seed=0)          # (64, 1, 28, 28) floats in [0, 1]
    run.save_samples(64, "samples.png")
    print(run.evaluate(iw_samples=100))
    run = genlab.load("runs/my-vae")         # any run: its family's run class

    gan = genlab.train("gan", dataset="mnist", time_budget=600, out="runs/my-gan")
    sevens = gan.sample(16, seed=0, label=7)  # class-conditional (the default recipe)
    print(gan.evaluate(n_samples=10_000))    # FID[genlab-mnist], KID, precision/recall, floors
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from . import families as _families
from .compress import compress
from .data import fetch as _fetch, list_datasets, load_images
from .data.text import CORPORA, corpus_path, list_corpora, load_corpus
from .families import describe as _describe, describe_model as _describe_model, list_runs as _list_runs
from .families.base import Family
from .families.finetune import merge as _merge
from .families.images import (
    IMAGE_OPTIONS,
    IW_SAMPLES,
    N_SAMPLES,
    PAIRS,
    PER_PROMPT,
    STEPS,
    TRUNC,
    ImageRun,
    N,
    parse_seeds,
    save_images,
)
from .families.lm import LMRun
from .guard import attacks as _attacks, gcg as _gcg, rankings as _rankings, report as _greport
from .guard.attacks import ATTACKS as GUARD_ATTACKS
from .guard.levels import LEVELS as GUARD_LEVELS, Game, GuardedModel, check_level, check_secret, read_history
from .llm.data import record_ranking
from .llm.generate import GENERATION_OPTIONS, NUM_SAMPLES, stats_line
from .llm.hf import classify, list_models
from .metrics.classifier import get_classifier
from .metrics.inception import load_inception
from .metrics.quality import image_metrics, train_features
from .plots import npy_bytes, png_bytes
from .runs import RunDir
from .train.engine import DEVICE
from .util.errors import GenlabError, check

Run = ImageRun  # the name earlier genlab gave the image run class
EXPORT_FORMATS = ("hf",)  # a Hugging Face directory

__all__ = ["CORPORA", "DEVICE", "GENERATION_OPTIONS", "NUM_SAMPLES", "stats_line",
           "GUARD_ATTACKS", "GUARD_LEVELS", "guard", "guard_attack", "guard_gcg", "guard_rankings",
           "read_history", "read_suffix", "IMAGE_OPTIONS", "IW_SAMPLES", "N", "N_SAMPLES", "PAIRS",
           "PER_PROMPT",
           "STEPS", "TRUNC", "GenlabError", "LMRun", "Run", "compress", "corpora", "data_info", "dataset_classifier",
           "datasets", "describe", "describe_model", "export", "families", "fetch", "guard_game", "image_bytes", "list_runs",
           "parse_seeds", "read_metrics", "read_report", "record_ranking_choice", "finetune", "image_metrics",
           "load", "load_corpus",
           "load_images", "load_inception", "load_model", "merge", "models", "open_any", "save_images",
           "train", "train_features"]


def families(train_verb: bool | None = None) -> list[Family]:
    """The family plug-ins (those trained with `genlab train` when train_verb is True)."""
    return [_families.get(n) for n in _families.names(train_verb)]


def family(name: str) -> Family:
    """The plug-in of family `name` (its options, help and run class)."""
    return _families.get(name)


def train(family: str = "vae", dataset: str | None = None, out=None, **options):
    """Train a model of `family` and return its run. Image families (vae, gan) take
    dataset= (default mnist), arch, epochs (None means 10, or until `time_budget` seconds
    are spent when a budget is given), batch_size, lr, schedule and their own options
    (vae: latent_dim, beta; gan: loss, lr_d, z_dim, width, ema_decay, conditional);
    "lm" trains a GPT on corpus= (recipe, tokenizer, n_layer, max_iters, ...) and returns
    an LMRun. Every family: seed, time_budget, resume (continue the run in `out`),
    overwrite, progress, device, log. `genlab train FAMILY --help` lists each option."""
    if dataset is not None:
        options["dataset"] = dataset
    return _families.get(family).train(out, **options)


def load(path, device: str | None = "cpu"):
    """Load a run directory as its family's run class: an image run (VAE, GAN), an LMRun,
    a fine-tuned model, a reward model."""
    return _families.load(path, device=device)


def load_for(path, verb: str, device: str | None = "cpu"):
    """load(path) for `genlab VERB`, refused with the reason when the run's family cannot
    do it (sample, reconstruct, interpolate: image runs)."""
    fam = _families.family_of(path)
    method, works_on = VERBS[verb]
    if not hasattr(fam.run_class, f"save_{method}"):
        text = hasattr(fam.run_class, "stream")
        raise GenlabError(f"{path}: {fam.a_run}; genlab {verb} works on {works_on}"
                          + (" (use genlab generate, chat or eval)" if text else ""))
    return load(path, device=device)


STYLE_BASED = "style-based generators (genlab train stylegan)"
VERBS = {"sample": ("samples", "image models"), "reconstruct": ("reconstructions", "image models"),
         "interpolate": ("interpolation", "image models"), "style-mix": ("style_mix", STYLE_BASED),
         "noise": ("noise", STYLE_BASED), "truncation": ("truncation", STYLE_BASED)}


def describe(path) -> dict:
    """What the run at `path` is and what it can do, from its files alone (no weights
    loaded): {"family", "kind", "verbs": [...], ...}."""
    return _describe(path)


def describe_model(name: str) -> dict:
    """describe() for a built-in foundation model."""
    return _describe_model(name)


def list_runs(folder) -> list[dict]:
    """describe() of every run directly inside `folder` (with "name": its folder's name),
    then the installed built-in foundation models (family "foundation")."""
    return _list_runs(folder)


def read_metrics(path) -> list[dict]:
    """The records of a run's metrics.jsonl (a run still training included), oldest first."""
    return RunDir(path).read_metrics()


def read_report(path) -> dict:
    """The report.json that genlab compress wrote into a compressed run."""
    p = Path(path) / "report.json"
    check(p.is_file(), f"{Path(path).name}: no compression report (genlab compress writes one)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise GenlabError(f"{p.name}: not a JSON report ({e})") from None


def image_bytes(images, format: str = "png", per_row: int | None = None, scale: int = 2, pad: int = 2) -> bytes:
    """Images (N, C, H, W) in [0, 1] as the bytes of a PNG grid (`pad` pixels between them,
    enlarged `scale` times) or of a float32 .npy array (N, H, W) / (N, H, W, C) -- what
    genlab sample writes, without a file."""
    check(format in ("png", "npy"), f"unknown image format '{format}' (png or npy)")
    return png_bytes(images, per_row, scale=scale, pad=pad) if format == "png" else npy_bytes(images)


def record_ranking_choice(path, prompt: str, first: str, second: str, choice: str, **extra) -> dict:
    """Append a person's ranking of two replies to the preferences JSONL `path` (the
    {prompt, chosen, rejected} form genlab reward train and genlab finetune read); ties go
    to PATH.ties.jsonl. Returns {"pairs": ..., "ties": ...}."""
    return record_ranking(path, prompt, first, second, choice, **extra)


def load_model(spec: str, log=print, device: str | None = "cpu"):
    """Any language model: a genlab run, `smollm2`, a Hugging Face directory (or, online,
    a Hub id), a fine-tuning run or a PEFT adapter directory. All share stream / generate /
    new_chat / reply."""
    return _families.load_model(spec, log=log, device=device)


def open_any(spec: str, log=print, device: str | None = "cpu"):
    """A run directory (any family) or, for anything that is not a run, a language model."""
    try:
        kind, _ = classify(spec)
    except GenlabError:
        kind = "run"  # not a model at all: the run loader says why, in its words
    return load(spec, device=device) if kind == "run" else load_model(spec, log=log, device=device)


def models() -> list[dict]:
    """The built-in foundation models and whether they are installed / converted."""
    return list_models()


def finetune(model: str, data: str, out=None, **options):
    """Fine-tune a foundation model or a genlab run (see genlab.families.finetune)."""
    return _families.get("finetune").train(out, model=model, data=data, **options)


def merge(run, out=None, overwrite: bool = False, log=print) -> Path:
    """Fold a LoRA run's adapter into the base weights (a Hugging Face directory)."""
    return _merge(run, out, overwrite=overwrite, log=log)


def export(run, out, format: str = "hf", overwrite: bool = False, log=print) -> Path:
    """A genlab GPT run (or a fine-tuning run, merged) as a Hugging Face directory."""
    check(format in EXPORT_FORMATS, f"unknown export format '{format}' (available: {', '.join(EXPORT_FORMATS)})")
    fam = _families.family_of(run)
    check(hasattr(fam.run_class, "export_hf"), f"{run}: {fam.a_run}; export --format hf takes language-model runs")
    return load(run).export_hf(out, overwrite=overwrite, log=log)


def reward_score(run, prompt: str, response: str) -> float:
    """The reward model `run`'s score of one reply to one prompt."""
    rm = load(run)
    check(hasattr(rm, "score"), f"{run}: {_families.family_of(run).a_run}, not a reward model")
    return float(rm.score([prompt], [response])[0])


def reward_compare(run, model: str, baseline: str, prompts, max_new_tokens: int = 48, seed: int = 0,
                   log=print) -> dict:
    """Win rate of `model` over `baseline` under the reward model `run`, and the KL between
    them, on `prompts` (a list, or a text file with one prompt per line)."""
    if not isinstance(prompts, (list, tuple)):
        p = Path(prompts)
        check(p.is_file(), f"{p}: no such file")
        prompts = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    rm = load(run)
    check(hasattr(rm, "compare"), f"{run}: {_families.family_of(run).a_run}, not a reward model")
    return rm.compare(load_model(model, log=log), load_model(baseline, log=log), list(prompts),
                      max_new_tokens=max_new_tokens, seed=seed, log=log)


def fetch(name: str) -> Path:
    """Download / unpack / verify a built-in dataset or corpus into the cache."""
    if name in CORPORA:
        load_corpus(name)
        return corpus_path(name)
    return _fetch(name)


def corpora() -> list[dict]:
    return list_corpora()


def datasets() -> list[dict]:
    return list_datasets()


def data_info(name: str, image_size: int | None = None, channels: int | None = None, grid=None) -> str:
    """A description of a dataset or a corpus (sizes, shape, classes and how many images
    each has); with `grid`, a PNG of examples, one class per row."""
    if name in CORPORA or name.startswith("text:"):
        check(grid is None, "--grid is for image datasets")
        return load_corpus(name).describe()
    data = load_images(name, image_size=image_size, channels=channels)
    lines = [data.describe()] + [f"  {c:<20} {tr:>6,} train {te:>6,} test" for c, tr, te in data.class_counts()]
    if data.has_captions:
        caps = data.captions("train")
        lines.append(f"  captions: {sum(map(len, caps)):,} for {len(caps):,} training images "
                     f"({len({c for cs in caps for c in cs}):,} distinct), e.g.: {'; '.join(caps[0][:6])}")
    if grid is not None:
        lines.append(f"examples: {save_images(data.examples(8), grid, per_row=8)}")
    return "\n".join(lines)


def dataset_classifier(dataset: str, image_size: int | None = None, channels: int | None = None):
    """The cached classifier for a labelled dataset (trained once if missing)."""
    return get_classifier(load_images(dataset, image_size=image_size, channels=channels))


# -- guardrails: the secret-keeping game and the attacks on it (genlab.guard) -------------------

def guard(model, level: int = 1, secret: str | None = None, judge: str | None = None, seed: int | None = None,
          max_new_tokens: int = 64, log=print, device: str | None = "cpu") -> GuardedModel:
    """A chat model (a spec, or a model already loaded) playing the secret-keeping game at `level` (0-8, GUARD_LEVELS): its
    hidden system prompt holds `secret` (default: a random word of the shipped list), and
    `.ask(prompt, history)` plays one turn through the level's guards."""
    check_level(level)
    if secret is not None:
        check_secret(secret)
    m = load_model(model, log=log, device=device) if isinstance(model, str) else model
    if secret is None:
        secret = _attacks.secrets_for(1, seed if seed is not None else random.SystemRandom().randrange(2**32))[0]
    j = (load_model(judge, log=log, device=device) if isinstance(judge, str) else judge) if judge else None
    return GuardedModel(m, level, secret, judge=j, max_new_tokens=max_new_tokens, log=log)


def guard_game(guarded: GuardedModel) -> Game:
    """A round of the game against `guarded` (a guard() result): .turn(prompt) asks,
    .guess(word) ends it; the conversation is kept in .history."""
    return Game(guarded)


def guard_attack(model: str, out, levels="all", attacks="all", secrets: int = 10, seed: int = 0,
                 suffix=None, benign: int | None = None, max_new_tokens: int = 64, judge: str | None = None,
                 overwrite: bool = False, log=print, progress: bool = True, device: str | None = "cpu") -> dict:
    """Every attack of the suite against every chosen level for `secrets` secret words, and
    the benign set at every level; writes attempts.jsonl, benign.jsonl, summary.json,
    report.md and report.png (the table as a heatmap) into `out` and returns the summary. `suffix`: a `guard gcg` output (its
    directory or suffix.json) whose suffix joins the suite as the attack "gcg"."""
    _greport.parse_levels(levels)
    _attacks.select(attacks)
    _attacks.secrets_for(secrets, seed)
    check(benign is None or (isinstance(benign, int) and benign >= 0), f"--benign {benign}: a number of requests >= 0")
    out = Path(out)
    check(overwrite or not (out / "attempts.jsonl").exists(),
          f"{out} already holds an attack report (give --overwrite to replace it, or another --out)")
    found = read_suffix(suffix) if suffix is not None else None
    m = load_model(model, log=log, device=device)
    j = load_model(judge, log=log, device=device) if judge else None
    return _greport.run_attacks(m, out, levels=levels, attacks=attacks, secrets=secrets, seed=seed,
                                suffix=found["suffix"] if found else None, exclude=found["secrets"] if found else (),
                                benign=benign, max_new_tokens=max_new_tokens, judge=j, log=log, progress=progress)


def guard_gcg(model: str, out, level: int = 1, time_budget: float | None = 600, steps: int | None = None,
              secrets: int = 6, suffix_tokens: int = 20, topk: int = 64, batch: int = 24, seed: int = 0,
              overwrite: bool = False, log=print, progress: bool = True, device: str | None = "cpu") -> dict:
    """Search a universal adversarial suffix against `level` (GCG, Zou et al. 2023) over
    up to `secrets` secret words (joining one at a time as each is solved) and a few
    prompts; writes OUT/suffix.json and metrics.jsonl."""
    check_level(level)
    check(isinstance(secrets, int) and secrets >= 1, f"--secrets {secrets}: give at least one secret")
    for name, v in (("--suffix-tokens", suffix_tokens), ("--topk", topk), ("--batch", batch)):
        check(isinstance(v, int) and v >= 1, f"{name} {v}: give a whole number >= 1")
    out = Path(out)
    check(overwrite or not (out / "suffix.json").exists(),
          f"{out} already holds a suffix (give --overwrite to replace it, or another --out)")
    m = load_model(model, log=log, device=device)
    return _gcg.search(m, out, level=level, time_budget=time_budget, steps=steps, n_secrets=secrets,
                       suffix_tokens=suffix_tokens, topk=topk, batch=batch, seed=seed, log=log, progress=progress)


def guard_rankings(model: str = "smollm2", out="data/guard-rankings", per_message: int = 2,
                   max_new_tokens: int = 48, eval_secrets: int = 20, eval_seed: int = 0, seed: int = 0,
                   overwrite: bool = False, log=print, device: str | None = "cpu") -> dict:
    """Rankings that prefer keeping the secret (guard/rankings.py): OUT/prefs.jsonl, ranked
    pairs of `model`'s own replies under level 1's system prompt, for genlab reward train
    and DPO; OUT/prompts.jsonl, the prompts for RLHF. Secrets and messages are disjoint
    from what `guard_attack(secrets=eval_secrets, seed=eval_seed)` measures with."""
    out = Path(out)
    check(overwrite or not (out / "prefs.jsonl").exists(),
          f"{out} already holds rankings (give --overwrite to replace them, or another --out)")
    for name, v in (("--per-message", per_message), ("--max-new-tokens", max_new_tokens),
                    ("--eval-secrets", eval_secrets)):
        check(isinstance(v, int) and v >= 1, f"{name} {v}: give a whole number >= 1")
    m = load_model(model, log=log, device=device)
    check(hasattr(m, "tokenizer") and getattr(m, "chat_model", False),
          f"{model}: rankings are sampled from a Hugging Face chat model (smollm2, a directory, a fine-tuning run)")
    return _rankings.build_rankings(m, out, per_message=per_message, max_new_tokens=max_new_tokens,
                                    eval_secrets=eval_secrets, eval_seed=eval_seed, seed=seed, log=log)


def read_suffix(path) -> dict:
    """The adversarial suffix a `genlab guard gcg` run saved (its folder or suffix.json):
    {"suffix": text, "secrets": the secrets it was optimised on, ...}."""
    p = Path(path)
    if p.is_dir():
        p = p / "suffix.json"
    check(p.is_file(), f"{p}: no such file (give the --out folder of genlab guard gcg, or its suffix.json)")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        text = d["suffix"]
    except (ValueError, KeyError, TypeError) as e:
        raise GenlabError(f"{p}: not a genlab guard gcg suffix file ({e})") from None
    check(isinstance(text, str) and text.strip(), f"{p}: the suffix is empty")
    return {**d, "secrets": list(d.get("secrets") or [])}
