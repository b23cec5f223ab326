"""The language-model half of the API (api.py re-exports it): train a GPT on a corpus,
load its run, generate (streaming), chat with a system prompt, evaluate.

    import genlab
    run = genlab.train("lm", corpus="shakespeare", time_budget=600, out="runs/lm")
    print(run.generate("ROMEO:", max_new_tokens=200, temperature=0.8, seed=0))
    for piece in run.stream("ROMEO:", max_new_tokens=200):  # text as it is generated
        print(piece, end="", flush=True)
    print(run.evaluate())                  # val loss, perplexity, bits per character
    chat = run.new_chat(system="Speak as a king.")
    print(run.reply(chat, "Who goes there?"))
"""
from __future__ import annotations

import torch

from . import __version__
from .compress.lm import build_gpt
from .data.text import load_corpus
from .data.tokenizer import (KINDS as TOKENIZER_KINDS, encoded_corpus, load_tokenizer,
                             save_tokenizer, train_tokenizer)
from .errors import GenlabError
from .llm.chat import PLAIN_TEMPLATE, ChatTemplate
from .llm.generate import TextModel, read_eval_file
from .models.gpt import GPT, GPTConfig
from .plots import save_loss_plot
from .runs import RunDir, default_run_dir
from .train.lm import LMTask
from .train.loop import IterConfig, fit_iters

# nanoGPT's CPU recipe for shakespeare_char (its README: 4 layers, 4 heads, 128-dim,
# block 64, batch 12, 2000 iterations, lr 1e-3 decayed to 1e-4 over 2000 iterations,
# warmup 100, AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, no dropout).
NANOGPT = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0,
           "batch_size": 12, "grad_accum": 1, "lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 100,
           "schedule": "cosine", "weight_decay": 0.1, "betas": [0.9, 0.99], "grad_clip": 1.0,
           "max_iters": 2000, "time_budget": None, "eval_interval": 250, "log_interval": 50}

# genlab's recipe, tuned on this 2-core CPU for the lowest held-out loss within a time
# budget (benchmarks/lm.py; the README has the sweep). The learning rate peaks higher and
# the cosine decay follows the time budget, so every budget ends annealed; and the model
# grows with the budget: for short budgets a shallower network, which takes more steps in
# the same time, wins (measured at 106 s: 2 layers 1.655, 3 layers 1.690, 4 layers 1.747).
GENLAB_SHORT = {**NANOGPT, "n_layer": 2, "lr": 5e-3, "max_iters": None, "time_budget": 120.0,
                "eval_interval": 500}
GENLAB = {**NANOGPT, "n_layer": 4, "block_size": 128, "batch_size": 8, "lr": 4e-3,
          "max_iters": None, "time_budget": 600.0, "eval_interval": 500}
SHORT_BUDGET = 300.0  # seconds: below this, GENLAB_SHORT


def genlab_recipe(time_budget: float | None) -> dict:
    """genlab's recipe for a time budget (None: its default of 600 s, or a --max-iters run)."""
    return GENLAB_SHORT if time_budget is not None and time_budget < SHORT_BUDGET else GENLAB


RECIPES = {"genlab": GENLAB, "nanogpt": NANOGPT}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
DTYPES = ("float32", "bfloat16", "float16")


def _check(cond, msg):
    if not cond:
        raise GenlabError(msg)


def _device(name: str | None) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    _check(name in ("cpu", "cuda") or name.startswith("cuda:"), f"unknown device '{name}' (auto, cpu, cuda)")
    _check(name == "cpu" or torch.cuda.is_available(), f"--device {name}: no CUDA GPU is available here")
    return name


def train_lm(corpus: str = "shakespeare", out=None, *, recipe: str = "genlab", tokenizer: str = "char",
             vocab_size: int | None = None, seed: int = 0, resume: bool = False, overwrite: bool = False,
             progress: bool | None = None, dtype: str = "float32", device: str | None = None,
             log=print, **options) -> "LMRun":
    """Train a GPT on `corpus` (shakespeare, austen, kjv or text:PATH). Settings come from
    `recipe` ("genlab": the best found here, 10 minutes by default; "nanogpt": nanoGPT's
    CPU recipe), each overridable: n_layer, n_head, n_embd, block_size, dropout,
    batch_size, grad_accum, lr, min_lr, warmup_iters, schedule, weight_decay, grad_clip,
    max_iters, time_budget, eval_interval, log_interval. With `max_iters` alone given
    the recipe's time budget is dropped (and vice versa)."""
    if resume:
        _check(out is not None, "--resume needs --out RUN (the run to continue)")
        return _resume(RunDir(out), options, progress, device, log)
    _check(recipe in RECIPES, f"unknown recipe '{recipe}' (available: {', '.join(RECIPES)})")
    unknown = sorted(k for k in options if k not in NANOGPT)
    _check(not unknown, f"unknown language-model options: {', '.join(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    base = genlab_recipe(given.get("time_budget")) if recipe == "genlab" else RECIPES[recipe]
    t = {**base, **given}
    if "max_iters" in given and "time_budget" not in given:
        t["time_budget"] = None
    if "time_budget" in given and "max_iters" not in given:
        t["max_iters"] = None
    _validate(t)
    _check(dtype in DTYPES, f"unknown dtype '{dtype}' (available: {', '.join(DTYPES)})")
    _check(tokenizer in TOKENIZER_KINDS, f"unknown tokenizer '{tokenizer}' (available: {', '.join(TOKENIZER_KINDS)})")
    dev = _device(device)

    corp = load_corpus(corpus)
    tok = train_tokenizer(tokenizer, corp, vocab_size)
    data = encoded_corpus(corp, tok, log=log)
    for split in ("train", "val"):
        _check(len(data[split]) > t["block_size"] + 1,
               f"{corpus}: the {'training' if split == 'train' else 'held-out'} split has "
               f"{len(data[split])} tokens, fewer than the context window of {t['block_size']} "
               "(use a smaller --block-size or more text)")
    template = ChatTemplate()
    if tok.kind == "char" and tok.unknown(template.literals()):
        template = PLAIN_TEMPLATE
    mcfg = GPTConfig(vocab_size=tok.vocab_size, **{k: t[k] for k in MODEL_KEYS})
    run = RunDir(out if out is not None else default_run_dir("lm", corpus))
    run.prepare_new(overwrite=overwrite)
    for extra in ("tokenizer.json", "last.safetensors"):
        if overwrite and (run.path / extra).exists():
            (run.path / extra).unlink()
    save_tokenizer(tok, run.path)
    train_cfg = {k: t[k] for k in NANOGPT if k not in MODEL_KEYS}
    train_cfg.update(recipe=recipe, seed=seed, dtype=dtype)
    config = {"family": "lm", "genlab_version": __version__, "model": mcfg.to_dict(),
              "data": {"corpus": corpus, "held_out": list(corp.held_out), "tokenizer": tok.kind,
                       "vocab_size": tok.vocab_size, "corpus_fingerprint": corp.fingerprint,
                       "train_tokens": int(len(data["train"])), "val_tokens": int(len(data["val"]))},
              "train": train_cfg, "chat_template": template.to_dict()}
    run.write_config(config)
    torch.manual_seed(seed)
    model = GPT(mcfg)
    log(f"training a GPT ({model.num_params() / 1e6:.2f}M parameters, {mcfg.n_layer} layers, "
        f"{mcfg.n_head} heads, {mcfg.n_embd}-dim, context {mcfg.block_size}) on {corp.describe()}; "
        f"{tok.kind} tokenizer, {tok.vocab_size} tokens; recipe {recipe} -> {run.path}")
    return _fit(run, config, model, data, resume=False, progress=progress, device=dev, log=log)


def _validate(t: dict) -> None:
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
              "eval_interval", "log_interval"):
        _check(isinstance(t[k], int) and t[k] >= 1, f"--{k.replace('_', '-')} must be a whole number >= 1, not {t[k]}")
    _check(t["n_embd"] % t["n_head"] == 0, f"--n-embd ({t['n_embd']}) must be a multiple of --n-head ({t['n_head']})")
    _check(0 <= t["dropout"] < 1, f"--dropout must be in [0, 1), not {t['dropout']}")
    _check(t["lr"] > 0, f"--lr must be > 0, not {t['lr']}")
    _check(0 <= t["min_lr"] <= t["lr"], f"--min-lr must be between 0 and --lr ({t['lr']}), not {t['min_lr']}")
    _check(isinstance(t["warmup_iters"], int) and t["warmup_iters"] >= 0, "--warmup-iters must be >= 0")
    _check(t["schedule"] in ("cosine", "constant"), f"unknown schedule '{t['schedule']}' (cosine, constant)")
    _check(t["max_iters"] is None or (isinstance(t["max_iters"], int) and t["max_iters"] >= 1),
           f"--max-iters must be a whole number >= 1, not {t['max_iters']}")
    _check(t["time_budget"] is None or t["time_budget"] > 0, f"--time-budget must be > 0 seconds, not {t['time_budget']}")
    _check(t["max_iters"] is not None or t["time_budget"] is not None,
           "give --max-iters or --time-budget (or both): training needs an end")


def _load_parts(run: RunDir, config: dict):
    """The model (unloaded), the tokenizer and the chat template of an LM run."""
    try:
        model = build_gpt(config)
        template = ChatTemplate.from_dict(config.get("chat_template") or {})
    except (TypeError, KeyError, ValueError) as e:
        raise GenlabError(f"{run.path}/config.json: invalid language-model config ({e})") from None
    tok = load_tokenizer(run.path)
    _check(tok.vocab_size == model.cfg.vocab_size,
           f"{run.path}: tokenizer.json has {tok.vocab_size} tokens but the model expects {model.cfg.vocab_size}")
    return model, tok, template


def _run_data(run: RunDir, config: dict, tok, log=None) -> tuple:
    corp = load_corpus(config["data"]["corpus"], quiet=log is None)
    fp = config["data"].get("corpus_fingerprint")
    _check(fp is None or fp == corp.fingerprint,
           f"{config['data']['corpus']}: the corpus has changed since {run.path} was trained on it")
    return corp, encoded_corpus(corp, tok, log=log)


def _resume(run: RunDir, options: dict, progress, device, log) -> "LMRun":
    if not run.is_run():
        raise GenlabError(f"{run.path}: no run to resume (no config.json)")
    config = run.read_config()
    fam = config.get("family")
    _check(fam == "lm", f"{run.path}: a '{fam}' run, not a language-model run (resume it with genlab train {fam})")
    _check(run.has_state(), f"{run.path}: nothing to resume (no state.pt)")
    allowed = {"max_iters", "time_budget"}
    bad = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    _check(not bad, f"--resume continues the run as configured; only --max-iters and --time-budget "
                    f"may change (not: {', '.join(bad)})")
    state = run.load_state()
    model, tok, _ = _load_parts(run, config)
    run.load_weights(model, "last.safetensors")
    t = config["train"]
    for k in allowed:
        if options.get(k) is not None:
            t[k] = options[k]
    if options.get("time_budget") is None and t.get("time_budget") is not None \
            and float(state["elapsed"]) >= t["time_budget"]:
        _check(t.get("max_iters") is not None and int(state["iter"]) < t["max_iters"],
               f"{run.path}: its time budget of {t['time_budget']:g}s is spent; give a larger "
               "--time-budget (the run's total seconds) or --max-iters to continue")
        t["time_budget"] = None
    _, data = _run_data(run, config, tok, log=log)
    run.write_config(config)
    log(f"resuming {run.path} at iteration {int(state['iter'])}")
    return _fit(run, config, model, data, resume=True, progress=progress, device=_device(device), log=log)


def _fit(run: RunDir, config: dict, model: GPT, data: dict, resume: bool, progress, device, log) -> "LMRun":
    t = config["train"]
    model.to(device)
    try:
        task = LMTask(model, data, block_size=model.cfg.block_size, batch_size=t["batch_size"],
                      grad_accum=t["grad_accum"], lr=t["lr"], min_lr=t["min_lr"],
                      warmup_iters=t["warmup_iters"], schedule=t["schedule"],
                      weight_decay=t["weight_decay"], betas=t["betas"], grad_clip=t["grad_clip"],
                      dtype=t["dtype"], device=device, seed=t["seed"])
    except ValueError as e:
        raise GenlabError(str(e)) from None
    loop = IterConfig(max_iters=t["max_iters"], eval_interval=t["eval_interval"],
                      log_interval=t["log_interval"], seed=t["seed"], time_budget=t["time_budget"],
                      progress=progress)
    summary = fit_iters(run, task, loop, resume=resume, log=log)
    save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=("loss", "val_loss"),
                   title=f"GPT on {config['data']['corpus']}", x="iter", kinds=("iter", "val"),
                   labels={"loss": "train loss", "val_loss": "held-out loss"}, ylabel="loss (nats / token)")
    log(f"run saved in {run.path} (model.safetensors = best held-out loss {summary['best_val_loss']:.4f}; "
        "metrics.jsonl, loss.png)")
    r = LMRun(run.path)
    r.summary = summary
    return r


class LMRun(TextModel):
    """A trained language-model run: its GPT (best checkpoint), tokenizer and chat template."""

    family = "lm"

    def __init__(self, path, device: str | None = "cpu"):
        self.dir = RunDir(path).require()
        self.path = self.dir.path
        self.config = self.dir.read_config()
        self.summary = None
        _check(self.config.get("family") == "lm",
               f"{self.path}: a '{self.config.get('family')}' run, not a language model")
        self.model, self.tokenizer, self.template = _load_parts(self.dir, self.config)
        self.dir.load_weights(self.model)
        self.device = _device(device)
        self.model.to(self.device).eval()

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    # -- generation (TextModel supplies stream, generate, new_chat, reply) -----------------
    @property
    def context(self) -> int:
        return self.model.cfg.block_size

    def encode_prompt(self, prompt: str) -> list:
        _check(isinstance(prompt, str) and prompt != "",
               "the prompt is empty: give some text to continue (e.g. --prompt \"ROMEO:\" or a newline)")
        return self.tokenizer.encode_array(prompt).tolist()

    def decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids)

    def _token_ids(self, ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache):
        idx = torch.tensor([ids], device=self.device)
        return self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, generator=generator, use_cache=use_cache)

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, text: str | None = None, stride: int | None = None, log=None) -> dict:
        """Held-out loss (nats per token), perplexity and bits per character, every token
        scored once with a sliding window (stride = half the context). On the run's held-out
        documents, or on the UTF-8 file `text`."""
        if text is None:
            corp, data = _run_data(self.dir, self.config, self.tokenizer)
            ids, source = data["val"], f"{corp.name} held-out ({', '.join(corp.held_out)})"
            raw = corp.text("val")
        else:
            raw, source = read_eval_file(text)
            ids = self.tokenizer.encode_array(raw)
        res = self._score(self.model, ids, raw, self.block_size, source, stride=stride, log=log)
        self.dir.append_metrics(res)
        return res
