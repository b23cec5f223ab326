"""Fine-tuning: train a pretrained model further, on other data, with another loss.

    genlab finetune smollm2 --data shakespeare --method lora --time-budget 300 --out runs/ft
    genlab finetune smollm2 --data instructions.jsonl --method lora --out runs/sft
    genlab finetune runs/sft --data prefs.jsonl --method lora --beta 0.1 --out runs/dpo
    genlab merge runs/ft --out runs/ft-merged

MODEL is `smollm2`, a Hugging Face directory, a genlab GPT run (exported to GPT-2 in
memory) or an earlier fine-tuning run (its weights become the new base). The data decides
the objective:
  - a corpus (shakespeare, austen, kjv, text:PATH): next-token loss on the text;
  - JSONL instructions: the same loss on the reply tokens only, laid out with the model's
    chat template;
  - JSONL preference pairs: DPO against the frozen starting model (the reference).
--method full trains every weight; --method lora trains a low-rank change W + (alpha/r) BA
through `peft`, and the adapter is also saved in PEFT's format (RUN/adapter/), so other
tools load it. The run directory keeps the genlab contract: config.json, model.safetensors
(the trained weights only: every weight for full, the adapter for LoRA; best held-out
loss), last.safetensors + state.pt (--resume), metrics.jsonl, loss.png.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..errors import GenlabError
from ..plots import save_loss_plot
from ..runs import RunDir
from ..train.lm import LMTask, StepTask, autocast
from ..train.loop import IterConfig, fit_iters
from . import data as ftdata
from .hf import CausalLM, HFModel, _encode, chat_template_for, encode_prompt_text, check_memory, classify, load_pretrained

METHODS = ("full", "lora")
# Settings measured on SmolLM2-135M (benchmarks/finetune.py); each can be overridden.
DEFAULTS = {
    "full": {"lr": 5e-5, "weight_decay": 0.0},
    "lora": {"lr": 2e-3, "weight_decay": 0.0},
}
COMMON = {"batch_size": 4, "grad_accum": 1, "block_size": 256, "max_iters": None, "time_budget": None,
          "warmup_iters": 10, "eval_interval": 50, "log_interval": 10, "grad_clip": 1.0,
          "schedule": "cosine", "min_lr": None, "beta": 0.1, "dtype": "float32", "eval_examples": 64,
          "grad_checkpoint": False}
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}
# Sequences scored at once in evaluation (and in DPO's reference pass): with a large
# vocabulary the logits are the biggest tensor, and evaluation must not set the peak memory.
EVAL_BATCH = 2


def _check(cond, msg):
    if not cond:
        raise GenlabError(msg)


class Trainable(nn.Module):
    """The parameters of a model that train (every one for a full fine-tune, the adapter's
    for LoRA) as a module whose state dict is exactly what a checkpoint stores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: its state is not ours

    def _params(self) -> dict:
        return {n: p for n, p in self._model.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        return {n: p.detach() for n, p in self._params().items()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        with torch.no_grad():
            for n, p in self._params().items():
                p.copy_(state[n])

    def num_params(self) -> int:
        return sum(p.numel() for p in self._params().values())


# -- the base model --------------------------------------------------------------------------

def _fingerprint(folder: Path) -> str:
    """Identifies a base model: its config and the names, shapes and sizes of its weights."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("config.json")) + sorted(folder.glob("*.safetensors")):
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def load_base(spec: str, log=print, factor: float = 1.3, what: str | None = None) -> tuple:
    """(hf model, tokenizer, chat template, base record) for any MODEL the fine-tuner takes."""
    kind, where = classify(spec)
    if kind == "run":
        run = RunDir(where)
        fam = run.read_config().get("family")
        if fam == "lm":
            from ..lmrun import LMRun
            from .export import gpt_to_hf
            r = LMRun(where)
            model, tok = gpt_to_hf(r)
            record = {"spec": str(Path(where).resolve()), "kind": "genlab-lm",
                      "fingerprint": _fingerprint(Path(where))}
            return model, tok, r.template, record
        _check(fam == "finetune", f"{where}: a '{fam}' run; fine-tuning starts from a language model")
        ft = load_finetuned(where, log=log, merge=True)
        record = {"spec": str(Path(where).resolve()), "kind": "finetune",
                  "fingerprint": _fingerprint(Path(where))}
        return ft.model, ft.tokenizer, ft.template, record
    if kind == "adapter":
        raise GenlabError(f"{where}: a LoRA adapter; give its fine-tuning run, or merge it first (genlab merge)")
    model, tok = load_pretrained(spec, log, factor=factor, what=what)
    folder = Path(model.config._name_or_path) if kind != "hub" else None
    record = {"spec": spec if kind in ("builtin", "hub") else str(Path(where).resolve()), "kind": kind,
              "fingerprint": _fingerprint(folder) if folder and folder.is_dir() else None}
    return model, tok, chat_template_for(tok), record


def _lora_wrap(model, lora: dict):
    from peft import LoraConfig, get_peft_model
    tm = lora["target_modules"]
    if isinstance(tm, str) and tm != "all-linear":
        tm = [t.strip() for t in tm.split(",") if t.strip()]
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=tm, task_type="CAUSAL_LM")
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft notes the fan_in_fan_out of GPT-2's Conv1D
            return get_peft_model(model, cfg)
    except ValueError as e:
        raise GenlabError(f"--target-modules {lora['target_modules']}: {str(e).splitlines()[0][:200]}") from None


# -- data to token ids ------------------------------------------------------------------------

def _encode_pair(tok, template, system, messages, max_len):
    """(ids, number of prompt tokens) for the last assistant turn, cut to max_len."""
    if hasattr(template, "split_last"):
        prompt, completion = template.split_last(system, messages)
    else:  # genlab's text template: the reply, then its stop string
        prompt = template.render(system, messages[:-1])
        completion = messages[-1]["content"] + template.stop
    p = encode_prompt_text(tok, prompt)
    c = _encode(tok, completion, add_special_tokens=False)
    _check(len(p) < max_len, f"a prompt of {len(p)} tokens does not fit the --block-size of {max_len}")
    return (p + c)[:max_len], len(p)


def _pad(seqs, n_prompt, pad_id):
    """Right-padded (ids, labels, mask); labels are -100 on the prompt and the padding."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, n_prompt)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, k:len(s)] = torch.tensor(s[k:])
        mask[i, :len(s)] = 1
    return ids, labels, mask


def sequence_logprobs(model: CausalLM, seqs, n_prompt, pad_id, device, dtype="float32") -> torch.Tensor:
    """Sum of log-probabilities of each sequence's completion tokens (after n_prompt)."""
    ids, labels, mask = _pad(seqs, n_prompt, pad_id)
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    with autocast(dtype, torch.device(device)):
        logits, _ = model(ids, attention_mask=mask)
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * (labels != -100)).sum(-1)


class SFTTask(StepTask):
    """Instruction tuning: next-token loss on the reply tokens only."""

    def __init__(self, model, train, val, *, pad_id, eval_batch=EVAL_BATCH, **kw):
        super().__init__(model, **kw)
        self.train_ex, self.val_ex, self.pad_id, self.eval_batch = train, val, pad_id, eval_batch

    def _loss(self, batch):
        ids, labels, mask = _pad([s for s, _ in batch], [k for _, k in batch], self.pad_id)
        _, loss = self.model(ids[:, :-1].to(self.device), labels[:, 1:].to(self.device),
                             attention_mask=mask[:, :-1].to(self.device))
        return loss, int((labels[:, 1:] != -100).sum())

    def batch_loss(self):
        pick = torch.randint(0, len(self.train_ex), (self.batch,), generator=self.gen).tolist()
        return self._loss([self.train_ex[i] for i in pick])[0]

    @torch.no_grad()
    def evaluate(self) -> dict:
        total, n = 0.0, 0
        for i in range(0, len(self.val_ex), self.eval_batch):
            with autocast(self.dtype, self.device):
                loss, k = self._loss(self.val_ex[i:i + self.eval_batch])
            total, n = total + float(loss) * k, n + k
        return {"val_loss": total / max(n, 1), "val_tokens": n}


class DPOTask(StepTask):
    """Direct preference optimisation (Rafailov et al., 2023):
    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))]).
    The reference is the model as it starts (frozen): its log-probabilities of every pair
    are computed once, before the first step."""

    def __init__(self, model, train, val, *, pad_id, beta=0.1, eval_batch=EVAL_BATCH, **kw):
        super().__init__(model, **kw)
        self.train_ex, self.val_ex, self.pad_id, self.beta, self.eval_batch = train, val, pad_id, beta, eval_batch
        self.ref_train = self._logps(train)
        self.ref_val = self._logps(val)

    @torch.no_grad()
    def _logps(self, pairs) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        out = torch.cat([self._pair_logps(pairs[i:i + self.eval_batch]) for i in range(0, len(pairs), self.eval_batch)])
        self.model.train(was)
        return out

    def _pair_logps(self, pairs) -> torch.Tensor:
        """(n, 2): log-probabilities of (chosen, rejected) under the current model."""
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        k = [p["n_prompt"] for p in pairs] * 2
        lp = sequence_logprobs(self.model, seqs, k, self.pad_id, self.device, self.dtype)
        return torch.stack([lp[:len(pairs)], lp[len(pairs):]], 1)

    def _dpo(self, lp, ref):
        margin = self.beta * ((lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1]))
        return -F.logsigmoid(margin).mean(), margin

    def batch_loss(self):
        pick = torch.randint(0, len(self.train_ex), (self.batch,), generator=self.gen)
        lp = self._pair_logps([self.train_ex[i] for i in pick.tolist()])
        return self._dpo(lp, self.ref_train[pick].to(self.device))[0]

    @torch.no_grad()
    def evaluate(self) -> dict:
        lp = torch.cat([self._pair_logps(self.val_ex[i:i + self.eval_batch])
                        for i in range(0, len(self.val_ex), self.eval_batch)])
        loss, margin = self._dpo(lp, self.ref_val.to(self.device))
        return {"val_loss": float(loss), "reward_accuracy": float((margin > 0).float().mean()),
                "reward_margin": float(margin.mean() / self.beta)}


# -- the fine-tuning run -------------------------------------------------------------------------

def _objective(data: str, on_error: str, warn):
    """("lm", corpus name) or ("sft"|"dpo", examples) for --data."""
    from ..data.text import CORPORA
    if data in CORPORA or data.startswith("text:"):
        return "lm", data
    _check(data.endswith(".jsonl") or Path(data).is_file(),
           f"--data {data}: not a corpus ({', '.join(CORPORA)}, text:PATH) or a JSONL file")
    return ftdata.read_jsonl(data, on_error=on_error, warn=warn)


def _memory_need(model_params: int, method: str, t: dict, cfg) -> int:
    """Bytes a fine-tune needs: weights, gradients + AdamW moments (full) and activations."""
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 512)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 12)
    vocab = getattr(cfg, "vocab_size", 50000)
    tokens = t["batch_size"] * t["block_size"] * (2 if t.get("objective") == "dpo" else 1)
    acts = tokens * (layers * hidden * (2 if t["grad_checkpoint"] else 24) + vocab * 3) * 4
    return int(model_params * 4 * (4 if method == "full" else 1.1) + acts)


def finetune(model: str, data: str, out=None, *, method: str = "lora", seed: int = 0,
             resume: bool = False, overwrite: bool = False, on_error: str = "stop",
             progress: bool | None = None, device: str = "cpu", log=print, warn=None,
             lora: dict | None = None, **options) -> "FinetunedModel":
    """Fine-tune `model` on `data` (see the module docstring). Options: lr, weight_decay,
    batch_size, grad_accum, block_size, max_iters, time_budget, warmup_iters, eval_interval,
    log_interval, grad_clip, schedule, min_lr, beta (DPO), dtype, eval_examples; lora: r,
    alpha, dropout, target_modules."""
    warn = warn or log
    if resume:
        _check(out is not None, "--resume needs --out RUN (the run to continue)")
        return _resume(RunDir(out), options, progress, device, log, warn)
    _check(method in METHODS, f"unknown method '{method}' (available: {', '.join(METHODS)})")
    unknown = sorted(k for k in options if k not in COMMON and k not in DEFAULTS["full"])
    _check(not unknown, f"unknown fine-tuning options: {', '.join(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    t = {**COMMON, **DEFAULTS[method], **given}
    if t["max_iters"] is None and t["time_budget"] is None:
        t["max_iters"] = 200
    lcfg = {**LORA, **{k: v for k, v in (lora or {}).items() if v is not None}}
    _validate(t, lcfg if method == "lora" else None)
    run = RunDir(out if out is not None else Path("runs") / f"finetune-{method}")
    _check(not (run.is_run() and not overwrite),
           f"{run.path}: a run already exists here (use --resume to continue it, --overwrite to replace it, or another --out)")
    objective, payload = _objective(data, on_error, warn)  # bad data stops us before anything is written
    t["objective"] = objective
    base, tok, template, record = load_base(model, log, factor=1.3)
    params = sum(p.numel() for p in base.parameters())
    check_memory(_memory_need(params, method, t, base.config), f"a {method} fine-tune of {model}")
    run.prepare_new(overwrite=overwrite)
    for extra in ("last.safetensors",):
        if overwrite and (run.path / extra).exists():
            (run.path / extra).unlink()
    config = {"family": "finetune", "genlab_version": __version__, "base": record, "method": method,
              "lora": lcfg if method == "lora" else None,
              "data": {"source": data if objective == "lm" else str(Path(data).resolve()),
                       "objective": objective, "on_error": on_error},
              "train": {**t, "seed": seed}, "chat_template": template.to_dict()}
    run.write_config(config)
    log(f"fine-tuning {model} ({params / 1e6:.1f}M parameters, method {method}, objective {objective}) "
        f"on {data} -> {run.path}")
    return _fit(run, config, base, tok, template, payload, resume=False, progress=progress,
                device=device, log=log)


def _validate(t: dict, lora: dict | None) -> None:
    for k in ("batch_size", "grad_accum", "block_size", "eval_interval", "log_interval", "eval_examples"):
        _check(isinstance(t[k], int) and t[k] >= 1, f"--{k.replace('_', '-')} must be a whole number >= 1, not {t[k]}")
    _check(t["lr"] > 0, f"--lr must be > 0, not {t['lr']}")
    _check(t["max_iters"] is None or (isinstance(t["max_iters"], int) and t["max_iters"] >= 1),
           f"--max-iters must be a whole number >= 1, not {t['max_iters']}")
    _check(t["time_budget"] is None or t["time_budget"] > 0, f"--time-budget must be > 0, not {t['time_budget']}")
    _check(t["beta"] > 0, f"--beta must be > 0, not {t['beta']}")
    _check(t["dtype"] in ("float32", "bfloat16"), f"--dtype must be float32 or bfloat16, not {t['dtype']}")
    if lora is not None:
        _check(isinstance(lora["r"], int) and lora["r"] >= 1, f"--lora-r must be a whole number >= 1, not {lora['r']}")
        _check(lora["alpha"] > 0, f"--lora-alpha must be > 0, not {lora['alpha']}")
        _check(0 <= lora["dropout"] < 1, f"--lora-dropout must be in [0, 1), not {lora['dropout']}")


def _prepare(config, base, tok, template, payload, device, log):
    """The trainable model (LoRA-wrapped or not) and its task."""
    t, method = config["train"], config["method"]
    torch.manual_seed(t["seed"])
    if method == "lora":
        model = _lora_wrap(base, config["lora"])
    else:
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    if t["grad_checkpoint"]:  # recompute each layer's activations in backward: less memory, ~30% more time
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm = CausalLM(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    kw = dict(batch_size=t["batch_size"], grad_accum=t["grad_accum"], lr=t["lr"], min_lr=t["min_lr"],
              warmup_iters=t["warmup_iters"], schedule=t["schedule"], weight_decay=t["weight_decay"],
              betas=(0.9, 0.999), grad_clip=t["grad_clip"], dtype=t["dtype"], device=device,
              seed=t["seed"], checkpoint=Trainable(lm.hf))
    objective = t["objective"]
    if objective == "lm":
        data = _encoded(payload, tok, log)
        block = min(t["block_size"], _context(model))
        return lm, LMTask(lm, data, block_size=block, eval_tokens=t["eval_examples"] * block,
                          eval_batch=EVAL_BATCH, **kw)
    train, val = ftdata.split(payload)
    val = val[:t["eval_examples"]]
    if objective == "sft":
        enc = lambda e: _encode_pair(tok, template, e["system"], e["messages"], t["block_size"])  # noqa: E731
        return lm, SFTTask(lm, [enc(e) for e in train], [enc(e) for e in val], pad_id=pad_id, **kw)

    def pair(e):
        msgs = [{"role": "user", "content": e["prompt"]}]
        c, k = _encode_pair(tok, template, None, msgs + [{"role": "assistant", "content": e["chosen"]}], t["block_size"])
        r, k2 = _encode_pair(tok, template, None, msgs + [{"role": "assistant", "content": e["rejected"]}], t["block_size"])
        return {"chosen": c, "rejected": r, "n_prompt": min(k, k2)}
    log(f"DPO: scoring {len(train) + len(val)} pairs with the reference model once ...")
    return lm, DPOTask(lm, [pair(e) for e in train], [pair(e) for e in val], pad_id=pad_id,
                       beta=t["beta"], **kw)


def _context(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))


class _HFTokenizer:
    """A transformers tokenizer with the interface genlab's corpus encoder expects."""
    kind = "hf"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = len(tok)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(_encode(self.tok, text, add_special_tokens=False), dtype=np.int64)

    def to_json(self) -> dict:
        return {"kind": "hf", "tokenizer": self.tok.backend_tokenizer.to_str()}


def _encoded(corpus: str, tok, log) -> dict:
    from ..data.text import load_corpus
    from ..data.tokenizer import encoded_corpus
    return encoded_corpus(load_corpus(corpus), _HFTokenizer(tok), log=log)


def _fit(run, config, base, tok, template, payload, resume, progress, device, log):
    t = config["train"]
    lm, task = _prepare(config, base, tok, template, payload, device, log)
    lm.to(device)
    trainable = task.checkpoint.num_params()
    if not resume:
        config["trainable_params"] = trainable
        config["total_params"] = sum(p.numel() for p in lm.parameters())
        run.write_config(config)
    log(f"trainable parameters: {trainable:,} of {config['total_params']:,} "
        f"({100 * trainable / config['total_params']:.2f}%)")
    loop = IterConfig(max_iters=t["max_iters"], eval_interval=t["eval_interval"], log_interval=t["log_interval"],
                      seed=t["seed"], time_budget=t["time_budget"], progress=progress)
    summary = fit_iters(run, task, loop, resume=resume, log=log)
    run.load_weights(task.checkpoint)  # the best held-out weights
    if config["method"] == "lora":
        _save_adapter(lm.hf, run, config)
    save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=("loss", "val_loss"),
                   title=f"{config['method']} fine-tune of {config['base']['spec']}", x="iter",
                   kinds=("iter", "val"), labels={"loss": "train loss", "val_loss": "held-out loss"},
                   ylabel="loss")
    log(f"run saved in {run.path} (best held-out loss {summary['best_val_loss']:.4f}"
        + ("; PEFT adapter in adapter/" if config["method"] == "lora" else "") + ")")
    ft = FinetunedModel(lm.hf, tok, run.path, config, template)
    ft.summary = summary
    return ft


def _save_adapter(peft_model, run, config) -> None:
    import shutil
    tmp = run.path / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    cfg_path = tmp / "adapter_config.json"
    d = json.loads(cfg_path.read_text())
    d["base_model_name_or_path"] = _base_path(config["base"])
    cfg_path.write_text(json.dumps(d, indent=2))
    shutil.rmtree(run.path / "adapter", ignore_errors=True)
    tmp.rename(run.path / "adapter")


def _base_path(record) -> str:
    if record["kind"] == "builtin":
        from .hf import models_dir
        return str(models_dir() / record["spec"])
    return record["spec"]


def _resume(run: RunDir, options, progress, device, log, warn):
    _check(run.is_run(), f"{run.path}: no run to resume (no config.json)")
    config = run.read_config()
    _check(config.get("family") == "finetune", f"{run.path}: not a fine-tuning run")
    _check(run.has_state(), f"{run.path}: nothing to resume (no state.pt)")
    allowed = {"max_iters", "time_budget"}
    bad = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    _check(not bad, f"--resume continues the run as configured; only --max-iters and --time-budget may change (not: {', '.join(bad)})")
    for k in allowed:
        if options.get(k) is not None:
            config["train"][k] = options[k]
    base, tok, template, record = load_base(config["base"]["spec"], log)
    _check(record["fingerprint"] == config["base"]["fingerprint"],
           f"{run.path}: its base model {config['base']['spec']} has changed since the run began")
    d = config["data"]
    payload = d["source"]
    if d["objective"] != "lm":
        kind, payload = ftdata.read_jsonl(d["source"], on_error=d["on_error"], warn=warn)
        _check(kind == d["objective"], f"{d['source']}: now holds {kind} data, but the run trains {d['objective']}")
    run.write_config(config)
    log(f"resuming {run.path}")
    return _fit(run, config, base, tok, template, payload, resume=True, progress=progress, device=device, log=log)


# -- using a fine-tuned model ---------------------------------------------------------------------

class FinetunedModel(HFModel):
    """A fine-tuning run loaded for generation, chat and evaluation."""

    def __init__(self, model, tokenizer, path, config, template):
        super().__init__(model, tokenizer, str(path), template=template)
        self.path, self.config, self.summary = Path(path), config, None

    def evaluate(self, text=None, corpus=None, **kw) -> dict:
        """As HFModel.evaluate; by default on the held-out documents of the corpus the run
        was fine-tuned on (shakespeare for instruction and preference runs)."""
        d = self.config["data"]
        if text is None and corpus is None and d["objective"] == "lm":
            corpus = d["source"]
        return super().evaluate(text=text, corpus=corpus, **kw)


def load_finetuned(path, log=print, merge: bool = True) -> FinetunedModel:
    """The base model with the run's trained weights (LoRA folded in when `merge`)."""
    run = RunDir(path).require()
    config = run.read_config()
    _check(config.get("family") == "finetune", f"{run.path}: not a fine-tuning run")
    base, tok, _, record = load_base(config["base"]["spec"], log)
    if config["base"].get("fingerprint") and record["fingerprint"] != config["base"]["fingerprint"]:
        raise GenlabError(f"{run.path}: trained on a different base model than {config['base']['spec']} is now "
                          "(the adapter or weights do not belong to it)")
    model = _lora_wrap(base, config["lora"]) if config["method"] == "lora" else base
    run.load_weights(Trainable(model))
    if config["method"] == "lora" and merge:
        model = model.merge_and_unload()
    template = chat_template_for(tok, config.get("chat_template"))
    return FinetunedModel(model.eval(), tok, run.path, config, template)


def merge(path, out=None, overwrite: bool = False, log=print) -> Path:
    """Fold a LoRA run's adapter into the base weights: a plain Hugging Face directory."""
    run = RunDir(path).require()
    config = run.read_config()
    _check(config.get("family") == "finetune", f"{run.path}: not a fine-tuning run (genlab merge folds a LoRA adapter)")
    out = Path(out) if out is not None else run.path / "merged"
    _check(not (out.exists() and any(out.iterdir())) or overwrite,
           f"{out}: exists and is not empty (use --overwrite or another --out)")
    ft = load_finetuned(run.path, log=log, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    ft.model.save_pretrained(out)
    ft.tokenizer.save_pretrained(out)
    log(f"{'merged the LoRA adapter of' if config['method'] == 'lora' else 'saved'} {run.path} "
        f"into a Hugging Face model -> {out}")
    return out


def load_text_model(spec: str, log=print):
    """Any language model genlab can talk to: a genlab GPT run (LMRun), a fine-tuning run,
    a built-in foundation model, a Hugging Face directory or Hub id, or a PEFT adapter."""
    kind, where = classify(spec)
    if kind == "run":
        fam = RunDir(where).read_config().get("family")
        if fam == "lm":
            from ..lmrun import LMRun
            return LMRun(where)
        if fam == "finetune":
            return load_finetuned(where, log=log)
        raise GenlabError(f"{where}: a '{fam}' run; generate, chat and fine-tuning work on language-model runs "
                          "(for images use genlab sample)")
    if kind == "adapter":
        return load_adapter(where, log=log)
    return HFModel.load(spec, log=log)


def load_adapter(folder, base: str | None = None, log=print) -> HFModel:
    """A PEFT LoRA adapter directory on its base model (adapter_config.json names it, or
    `base`); refused when the adapter's shapes do not fit that base."""
    from safetensors import safe_open
    folder = Path(folder)
    try:
        acfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"{folder}/adapter_config.json: unreadable ({e})") from None
    base = base or acfg.get("base_model_name_or_path")
    _check(base, f"{folder}: the adapter names no base model (give one)")
    model, tok, template, _ = load_base(base, log)
    files = list(folder.glob("adapter_model.safetensors"))
    _check(files, f"{folder}: no adapter_model.safetensors (genlab reads safetensors adapters only)")
    modules = dict(model.named_modules())
    with safe_open(str(files[0]), framework="pt") as f:
        for k in f.keys():
            if ".lora_A." not in k and ".lora_B." not in k:
                continue
            name = k.split(".lora_")[0].removeprefix("base_model.model.")
            m = modules.get(name)
            shape = f.get_slice(k).get_shape()
            dims = _in_out(m) if m is not None else None
            ok = dims is not None and (shape[1] == dims[0] if ".lora_A." in k else shape[0] == dims[1])
            _check(ok, f"{folder}: the adapter was trained for a different base model than {base} "
                       f"({name}: {'no such layer' if dims is None else f'adapter {tuple(shape)}, layer in/out {dims}'})")
    from peft import PeftModel
    pm = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return HFModel(pm, tok, str(folder), template=template)


def _in_out(m):
    w = getattr(m, "weight", None)
    if w is None or w.dim() != 2:
        return None
    if type(m).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])
