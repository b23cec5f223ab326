"""The language-model family: a GPT trained on a text corpus, its run (generate,
streaming, chat with a system prompt, evaluate) and its export to Hugging Face.

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

from ..data.text import load_corpus
from ..data.tokenizer import KINDS as TOKENIZER_KINDS, encoded_corpus, load_tokenizer, save_tokenizer, train_tokenizer
from ..llm.chat import PLAIN_TEMPLATE, ChatTemplate
from ..llm.export import gpt_to_hf, write_hf
from ..llm.generate import TextModel, read_eval_file
from ..models.decode import decode_gpt
from ..models.gpt import GPT, GPTConfig
from ..models.int8 import quantize_int8
from ..plots import save_loss_plot
from ..runs import RunDir, default_run_dir
from ..train.engine import DTYPES, Engine
from ..train.lm import LMTask
from ..train.loop import IterConfig, fit_iters
from ..util import dist as procs
from ..util.errors import GenlabError, check
from ..util.hf import quiet_transformers
from ..util.options import Opt, above, at_least, in_range
from ..util.version import __version__
from .base import Family, invalid_config, register

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

# The step options language-model trainers share (the fine-tuner takes them too).
WARMUP_ITERS = Opt("warmup_iters", int, check=at_least(0), help="linear warmup steps")
STEP_OPTIONS = (
    Opt("batch_size", int, check=at_least(1), help="sequences per micro-batch"),
    Opt("grad_accum", int, check=at_least(1), help="micro-batches per optimiser step"),
    Opt("max_iters", int, check=at_least(1), help="optimiser steps"),
    WARMUP_ITERS,
    Opt("eval_interval", int, check=at_least(1), help="steps between held-out evaluations"),
    Opt("log_interval", int, check=at_least(1), help="steps between 'iter N: loss X' lines"),
    Opt("lr", float, check=above(0), help="peak learning rate"),
    Opt("weight_decay", float, check=at_least(0), help="AdamW weight decay (default 0.1)"),
    Opt("grad_clip", float, check=at_least(0), help="clip the gradient norm (0 = off; default 1)"),
)


def _step_opt(name: str) -> Opt:
    return next(o for o in STEP_OPTIONS if o.name == name)


def build_gpt(config: dict) -> GPT:
    """The (unloaded) GPT a run's config describes, int8 layers and all."""
    model = GPT(GPTConfig(**{k: v for k, v in config["model"].items() if k != "arch"}))
    if config.get("compress", {}).get("quantize"):
        quantize_int8(model, skip=set(config["compress"].get("float_layers", {})))
    return model


def run_data(run: RunDir, config: dict, tok, log=None) -> tuple:
    """(corpus, encoded splits) of the corpus an LM run was trained on; refused when the
    corpus has changed since."""
    corp = load_corpus(config["data"]["corpus"], quiet=log is None)
    fp = config["data"].get("corpus_fingerprint")
    check(fp is None or fp == corp.fingerprint,
          f"{config['data']['corpus']}: the corpus has changed since {run.path} was trained on it")
    return corp, encoded_corpus(corp, tok, log=log)


def _load_parts(run: RunDir, config: dict):
    """The model (unloaded), the tokenizer and the chat template of an LM run."""
    try:
        model = build_gpt(config)
        template = ChatTemplate.from_dict(config.get("chat_template") or {})
    except (TypeError, KeyError, ValueError) as e:
        raise invalid_config(run.path, e, "language-model") from None
    tok = load_tokenizer(run.path)
    check(tok.vocab_size == model.cfg.vocab_size,
          f"{run.path}: tokenizer.json has {tok.vocab_size} tokens but the model expects {model.cfg.vocab_size}")
    return model, tok, template


class LMRun(TextModel):
    """A trained language-model run: its GPT (best checkpoint), tokenizer and chat template."""

    family = "lm"
    kind = "text"

    def __init__(self, path, device: str | None = "cpu"):
        self.family_plugin.open_run(self, path)
        check(self.config.get("family") == LMFamily.name,
              f"{self.path}: a '{self.config.get('family')}' run, not a language model")
        self.model, self.tokenizer, self.template = _load_parts(self.dir, self.config)
        self.dir.load_weights(self.model)
        self.device = Engine.create(device).device
        self.model.to(self.device).eval()

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    # -- generation (TextModel supplies stream, generate, new_chat, reply) -----------------
    @property
    def context(self) -> int:
        return self.model.cfg.block_size

    def encode_prompt(self, prompt: str) -> list:
        check(isinstance(prompt, str) and prompt != "",
              "the prompt is empty: give some text to continue (e.g. --prompt \"ROMEO:\" or a newline)")
        return self.tokenizer.encode_array(prompt).tolist()

    def decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids)

    def scoring_module(self):
        return self.model

    def token_embeddings(self):
        return self.model.transformer.wte.weight

    def logits_from_embeddings(self, embeds):
        return self.model(None, embeds=embeds)[0]

    def _token_ids(self, ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache):
        if not use_cache:  # the reference: every token re-runs the window
            idx = torch.tensor([ids], device=self.device)
            return self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                       top_p=top_p, generator=generator, use_cache=False)
        return (row[0] for row in decode_gpt(self.model, ids, max_new_tokens, 1, temperature, top_k, top_p, generator))

    def decode_path(self, use_cache: bool = True) -> str:
        return "genlab's GPT decoder" if use_cache else "reference path, no cache"

    def _token_rows(self, ids, max_new_tokens, num, temperature, top_k, top_p, generator) -> list:
        steps = list(decode_gpt(self.model, ids, max_new_tokens, num, temperature, top_k, top_p, generator))
        return [list(r) for r in zip(*steps)] if steps else [[] for _ in range(num)]

    def corpus_data(self, log=None) -> tuple:
        """(corpus, encoded splits) of the corpus the run was trained on."""
        return run_data(self.dir, self.config, self.tokenizer, log=log)

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, text: str | None = None, stride: int | None = None, log=None, corpus=None,
                 max_tokens=None) -> dict:
        """Held-out loss (nats per token), perplexity and bits per character, every token
        scored once with a sliding window (stride = half the context). On the run's held-out
        documents, or on the UTF-8 file `text`."""
        check(corpus is None and max_tokens is None, "--corpus and --max-tokens are for foundation and fine-tuned "
              "models; a genlab run scores its own held-out documents (or --text PATH)")
        if text is None:
            corp, data = self.corpus_data()
            ids, source = data["val"], f"{corp.name} held-out ({', '.join(corp.held_out)})"
            raw = corp.text("val")
        else:
            raw, source = read_eval_file(text)
            ids = self.tokenizer.encode_array(raw)
        res = self._score(self.model, ids, raw, self.block_size, source, stride=stride, log=log)
        self.dir.append_metrics(res)
        return res

    # -- Hugging Face ---------------------------------------------------------------------
    def to_hf(self):
        """(GPT2LMHeadModel, tokenizer) with this run's weights (the same logits)."""
        quiet_transformers()
        return gpt_to_hf(self)

    def export_hf(self, out, overwrite: bool = False, log=print):
        """Write the run as a Hugging Face GPT-2 directory at `out`."""
        model, tok = self.to_hf()
        out = write_hf(model, tok, out, {"exported_from": str(self.path), "architecture": "GPT2LMHeadModel",
                                         "tokenizer": self.tokenizer.kind, "chat_stop": self.template.stop},
                       overwrite=overwrite)
        log(f"exported {self.path} as a Hugging Face GPT-2 model -> {out}")
        return out


@register
class LMFamily(Family):
    name, title, plural, order = "lm", "language-model", "language models", 30
    a_run = "a language-model run"
    help = "train a language model (a GPT) on a text corpus"
    description = (
        "Train a decoder-only transformer to predict the next token of a corpus\n"
        "(cross-entropy on random windows; AdamW, warmup + cosine decay, gradient clipping).\n"
        "Prints 'iter N: loss X' and 'iter N: val loss Y' (held-out documents); keeps the\n"
        "weights with the best held-out loss in model.safetensors.\n\n"
        "--recipe genlab (default): the best recipe found on a 2-core CPU, 10 minutes by\n"
        "    default: 4 layers, 4 heads, 128-dim, context 128, batch 8, lr 4e-3 -> 1e-4 with\n"
        "    the cosine decay following the time budget. For a --time-budget under 300 s it\n"
        "    trains 2 layers, context 64, batch 12, lr 5e-3 (more steps win on short budgets).\n"
        "--recipe nanogpt: nanoGPT's CPU recipe (4 layers, 4 heads, 128-dim, context 64,\n"
        "    batch 12, 2000 iterations, lr 1e-3 -> 1e-4, no dropout).\n"
        "Every setting below overrides the recipe's. --max-iters alone drops the recipe's time\n"
        "budget; --time-budget alone drops its iteration count.")
    epilog = ("examples:\n"
              "  genlab train lm --corpus shakespeare --out runs/lm\n"
              "  genlab train lm --corpus shakespeare --recipe nanogpt --out runs/nanogpt\n"
              "  genlab train lm --corpus text:my_book.txt --tokenizer bpe --vocab-size 2048\n"
              "  genlab train lm --out runs/lm --resume --time-budget 1200")
    options = (
        Opt("corpus", str, "shakespeare", help="shakespeare (default), austen, kjv, or text:PATH (a UTF-8 file or folder)"),
        Opt("recipe", str, "genlab", choices=tuple(RECIPES), what="recipe", help="default genlab"),
        Opt("tokenizer", str, "char", choices=TOKENIZER_KINDS, what="tokenizer", help="default char"),
        Opt("vocab_size", int, check=at_least(257), help="bpe: vocabulary size (default 768)"),
        Opt("n_layer", int, check=at_least(1), help="transformer blocks"),
        Opt("n_head", int, check=at_least(1), help="attention heads"),
        Opt("n_embd", int, check=at_least(1), help="embedding width"),
        Opt("block_size", int, check=at_least(1), help="context window (tokens)"),
    ) + STEP_OPTIONS + (
        Opt("dropout", float, check=in_range(0, 1)),
        Opt("min_lr", float, check=at_least(0), help="learning rate at the end of the decay"),
        Opt("schedule", str, choices=("cosine", "constant"), what="schedule", help="after warmup (default cosine)"),
        Opt("betas", tuple, cli=False),
        Opt("dtype", str, "float32", choices=DTYPES, what="dtype",
            help="autocast dtype (bfloat16 helps on GPUs and CPUs with bf16 units; float32 default)"),
    )
    resumable = ("max_iters", "time_budget")
    run_class = LMRun

    def fresh(self, out, o, log):
        recipe = o["recipe"]
        given = {k: o[k] for k in NANOGPT if k in o}
        base = genlab_recipe(given.get("time_budget")) if recipe == "genlab" else RECIPES[recipe]
        t = {**base, **given}
        if "max_iters" in given and "time_budget" not in given:
            t["time_budget"] = None
        if "time_budget" in given and "max_iters" not in given:
            t["max_iters"] = None
        check(t["n_embd"] % t["n_head"] == 0, f"--n-embd ({t['n_embd']}) must be a multiple of --n-head ({t['n_head']})")
        check(0 <= t["min_lr"] <= t["lr"], f"--min-lr must be between 0 and --lr ({t['lr']}), not {t['min_lr']}")
        check(t["max_iters"] is not None or t["time_budget"] is not None,
              "give --max-iters or --time-budget (or both): training needs an end")
        engine = Engine.for_training(o.get("device"), o["dtype"])
        corpus = o["corpus"]
        corp = load_corpus(corpus)
        tok = train_tokenizer(o["tokenizer"], corp, o.get("vocab_size"))
        data = encoded_corpus(corp, tok, log=log)
        for split in ("train", "val"):
            check(len(data[split]) > t["block_size"] + 1,
                  f"{corpus}: the {'training' if split == 'train' else 'held-out'} split has "
                  f"{len(data[split])} tokens, fewer than the context window of {t['block_size']} "
                  "(use a smaller --block-size or more text)")
        template = ChatTemplate()
        if tok.kind == "char" and tok.unknown(template.literals()):
            template = PLAIN_TEMPLATE
        mcfg = GPTConfig(vocab_size=tok.vocab_size, **{k: t[k] for k in MODEL_KEYS})
        run = RunDir(out if out is not None else default_run_dir(self.name, corpus))
        run.prepare_new(overwrite=o.get("overwrite", False))
        if procs.writer():
            save_tokenizer(tok, run.path)
        train_cfg = {k: t[k] for k in NANOGPT if k not in MODEL_KEYS}
        train_cfg.update(recipe=recipe, seed=o["seed"], dtype=o["dtype"])
        config = {"family": self.name, "genlab_version": __version__, "model": mcfg.to_dict(),
                  "data": {"corpus": corpus, "held_out": list(corp.held_out), "tokenizer": tok.kind,
                           "vocab_size": tok.vocab_size, "corpus_fingerprint": corp.fingerprint,
                           "train_tokens": int(len(data["train"])), "val_tokens": int(len(data["val"]))},
                  "train": train_cfg, "chat_template": template.to_dict()}
        run.write_config(config)
        engine.seed(o["seed"])
        model = GPT(mcfg)
        log(f"training a GPT ({model.num_params() / 1e6:.2f}M parameters, {mcfg.n_layer} layers, "
            f"{mcfg.n_head} heads, {mcfg.n_embd}-dim, context {mcfg.block_size}) on {corp.describe()}; "
            f"{tok.kind} tokenizer, {tok.vocab_size} tokens; recipe {recipe} -> {run.path}")
        return self._fit(run, config, model, data, resume=False, opts=o, log=log)

    def resume(self, run, config, state, changes, opts, log):
        model, tok, _ = _load_parts(run, config)
        run.load_weights(model, "last.safetensors")
        t = config["train"]
        for k, v in changes.items():
            if v is not None:
                t[k] = v
        if changes.get("time_budget") is None and t.get("time_budget") is not None \
                and float(state["elapsed"]) >= t["time_budget"]:
            check(t.get("max_iters") is not None and int(state["iter"]) < t["max_iters"],
                  f"{run.path}: its time budget of {t['time_budget']:g}s is spent; give a larger "
                  "--time-budget (the run's total seconds) or --max-iters to continue")
            t["time_budget"] = None
        _, data = run_data(run, config, tok, log=log)
        run.write_config(config)
        log(f"resuming {run.path} at iteration {int(state['iter'])}")
        return self._fit(run, config, model, data, resume=True, opts=opts, log=log)

    def _fit(self, run, config, model, data, resume, opts, log):
        t = config["train"]
        engine = Engine.for_training(opts.get("device"), t["dtype"])
        run.write_config({**config, "train": engine.record(t, t["batch_size"] * t["grad_accum"])})
        model.to(engine.device)
        try:
            task = LMTask(model, data, block_size=model.cfg.block_size, batch_size=t["batch_size"],
                          grad_accum=t["grad_accum"], lr=t["lr"], min_lr=t["min_lr"],
                          warmup_iters=t["warmup_iters"], schedule=t["schedule"],
                          weight_decay=t["weight_decay"], betas=t["betas"], grad_clip=t["grad_clip"],
                          engine=engine, seed=t["seed"])
        except ValueError as e:
            raise GenlabError(str(e)) from None
        loop = IterConfig(max_iters=t["max_iters"], eval_interval=t["eval_interval"],
                          log_interval=t["log_interval"], seed=t["seed"], time_budget=t["time_budget"],
                          progress=opts.get("progress"))
        summary = fit_iters(run, task, loop, resume=resume, log=log, engine=engine)
        save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=("loss", "val_loss"),
                       title=f"GPT on {config['data']['corpus']}", x="iter", kinds=("iter", "val"),
                       labels={"loss": "train loss", "val_loss": "held-out loss"}, ylabel="loss (nats / token)")
        log(f"run saved in {run.path} (model.safetensors = best held-out loss {summary['best_val_loss']:.4f}; "
            "metrics.jsonl, loss.png)")
        r = LMRun(run.path)
        r.summary = summary
        return r
