"""Foundation models and fine-tuning: open a pretrained model (the built-in `smollm2`, a
Hugging Face directory or Hub id, a PEFT adapter), and train it further, on other data,
with another loss.

    genlab finetune smollm2 --data shakespeare --method lora --time-budget 300 --out runs/ft
    genlab finetune smollm2 --data instructions.jsonl --method lora --out runs/sft
    genlab finetune runs/sft --data prefs.jsonl --method lora --beta 0.1 --out runs/dpo
    genlab merge runs/ft --out runs/ft-merged

MODEL is `smollm2`, a Hugging Face directory, a genlab run whose family exports to
Hugging Face (a GPT, as GPT-2 in memory) or an earlier fine-tuning run (its weights become
the new base). The data decides the objective:
  - a corpus (shakespeare, austen, kjv, text:PATH): next-token loss on the text;
  - JSONL instructions: the same loss on the reply tokens only, laid out with the model's
    chat template;
  - JSONL preference pairs: DPO against the frozen starting model (the reference);
  - with --reward RUN (a reward model), prompts (a .txt file, one per line, or JSONL with a
    "prompt" field): RLHF's RL step, RLOO (default) or PPO against the reward model with a
    KL penalty to the starting model (train/rlhf.py).
--method full trains every weight; --method lora trains a low-rank change W + (alpha/r) BA
through `peft`, and the adapter is also saved in PEFT's format (RUN/adapter/), so other
tools load it. The run directory keeps the genlab contract: config.json, model.safetensors
(the trained weights only: every weight for full, the adapter for LoRA; best held-out
loss), last.safetensors + state.pt (--resume), metrics.jsonl, loss.png.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..data.text import CORPORA
from ..llm import data as ftdata
from ..llm.data import encoded
from ..llm.hf import CausalLM, HFModel, chat_template_for, check_memory, classify, load_pretrained, models_dir
from ..llm.lora import LORA, lora_wrap
from ..llm.sample import chat_prompt
from ..models.layers import in_out
from ..plots import save_loss_plot
from ..runs import RunDir
from ..train.engine import Engine
from ..train.finetune import EVAL_BATCH, DPOTask, SFTTask, Trainable
from ..train.lm import LMTask
from ..train.loop import IterConfig, fit_iters
from ..train.rlhf import PPOTask, RLOOTask, token_logprobs
from ..util import dist as procs
from ..util.errors import GenlabError, check
from ..util.io import replace_tree
from ..util.options import Opt, above, at_least, in_range, validate_all
from ..util.version import __version__
from .base import Family, load, register
from .lm import STEP_OPTIONS
from .reward import RewardModel

METHODS = ("full", "lora")
CORPUS = "lm"  # the objective on a corpus: next-token loss (the other two: "sft", "dpo")
# Settings measured on SmolLM2-135M (benchmarks/finetune.py); each can be overridden.
DEFAULTS = {
    "full": {"lr": 5e-5, "weight_decay": 0.0},
    "lora": {"lr": 2e-3, "weight_decay": 0.0},
}
COMMON = {"batch_size": 4, "grad_accum": 1, "block_size": 256, "max_iters": None, "time_budget": None,
          "warmup_iters": 10, "eval_interval": 50, "log_interval": 10, "grad_clip": 1.0,
          "schedule": "cosine", "min_lr": None, "beta": 0.1, "dtype": "float32", "eval_examples": 64,
          "grad_checkpoint": False, "fsdp": False}
# RLHF (--reward): the RL step's settings (benchmarks/rlhf.py measures them on SmolLM2-135M).
RL_LR = {"full": 1e-5, "lora": 5e-4}
RL = {"algorithm": "rloo", "samples": 4, "kl_coef": 0.05, "kl_target": None, "kl_horizon": 64, "length_penalty": 0.0,
      "max_new_tokens": 48, "temperature": 1.0}
RL_DATA = ("heldout_reward",)   # RLHF settings kept under config["data"]
LORA_OPTIONS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules"}


def _fingerprint(folder: Path) -> str:
    """Identifies a base model: its config and the names, shapes and sizes of its weights."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("config.json")) + sorted(folder.glob("*.safetensors")):
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


# -- the base model --------------------------------------------------------------------------

def load_base(spec: str, log=print, factor: float = 1.3, what: str | None = None) -> tuple:
    """(hf model, tokenizer, chat template, base record) for any MODEL the fine-tuner takes."""
    kind, where = classify(spec)
    if kind == "run":
        run = load(where)
        record = {"spec": str(Path(where).resolve()), "fingerprint": _fingerprint(Path(where))}
        if isinstance(run, FinetunedModel):
            return run.model, run.tokenizer, run.template, {**record, "kind": "finetune"}
        check(hasattr(run, "to_hf"), f"{where}: a '{run.config.get('family')}' run; fine-tuning starts from a "
                                     "language model")
        model, tok = run.to_hf()
        return model, tok, run.template, {**record, "kind": f"genlab-{run.config['family']}"}
    if kind == "adapter":
        raise GenlabError(f"{where}: a LoRA adapter; give its fine-tuning run, or merge it first (genlab merge)")
    model, tok = load_pretrained(spec, log, factor=factor, what=what)
    folder = Path(model.config._name_or_path) if kind != "hub" else None
    record = {"spec": spec if kind in ("builtin", "hub") else str(Path(where).resolve()), "kind": kind,
              "fingerprint": _fingerprint(folder) if folder and folder.is_dir() else None}
    return model, tok, chat_template_for(tok), record


def load_adapter(folder, base: str | None = None, log=print, device="cpu") -> HFModel:
    """A PEFT LoRA adapter directory on its base model (adapter_config.json names it, or
    `base`); refused when the adapter's shapes do not fit that base."""
    folder = Path(folder)
    try:
        acfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"{folder}/adapter_config.json: unreadable ({e})") from None
    base = base or acfg.get("base_model_name_or_path")
    check(base, f"{folder}: the adapter names no base model (give one)")
    model, tok, template, _ = load_base(base, log)
    files = list(folder.glob("adapter_model.safetensors"))
    check(files, f"{folder}: no adapter_model.safetensors (genlab reads safetensors adapters only)")
    modules = dict(model.named_modules())
    with safe_open(str(files[0]), framework="pt") as f:
        for k in f.keys():
            if ".lora_A." not in k and ".lora_B." not in k:
                continue
            name = k.split(".lora_")[0].removeprefix("base_model.model.")
            m = modules.get(name)
            shape = f.get_slice(k).get_shape()
            dims = in_out(m) if m is not None else None
            ok = dims is not None and (shape[1] == dims[0] if ".lora_A." in k else shape[0] == dims[1])
            check(ok, f"{folder}: the adapter was trained for a different base model than {base} "
                      f"({name}: {'no such layer' if dims is None else f'adapter {tuple(shape)}, layer in/out {dims}'})")
    from peft import PeftModel  # heavy: only when an adapter is loaded
    pm = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return HFModel(pm, tok, str(folder), template=template, device=str(Engine.create(device).device))


# -- data to token ids ------------------------------------------------------------------------

def _objective(data: str, on_error: str, warn, reward=None):
    """(CORPUS, corpus name), ("sft"|"dpo", examples) or, with a reward model, ("rlhf",
    prompts) for --data."""
    if reward is not None:
        return "rlhf", ftdata.read_prompts(data, on_error=on_error, warn=warn)
    if data in CORPORA or data.startswith("text:"):
        return CORPUS, data
    check(data.endswith(".jsonl") or Path(data).is_file(),
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


def _context(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))


def _prepare(config, base, tok, template, payload, engine, log):
    """The trainable model (LoRA-wrapped or not) and its task."""
    t, method = config["train"], config["method"]
    engine.seed(t["seed"])
    if method == "lora":
        model = lora_wrap(base, config["lora"])
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
              betas=(0.9, 0.999), grad_clip=t["grad_clip"], engine=engine,
              seed=t["seed"], checkpoint=Trainable(lm.hf), fsdp=t.get("fsdp", False))
    objective = t["objective"]
    if objective == CORPUS:
        data = encoded(payload, tok, log)
        block = min(t["block_size"], _context(model))
        return lm, LMTask(lm, data, block_size=block, eval_tokens=t["eval_examples"] * block,
                          eval_batch=EVAL_BATCH, **kw)
    train, val = ftdata.split(payload)
    val = val[:t["eval_examples"]]
    if objective == "rlhf":
        return lm, _rl_task(config, model, lm, tok, template, train, val, pad_id, engine, kw, log)
    if objective == "sft":
        enc = lambda e: ftdata.encode_pair(tok, template, e["system"], e["messages"], t["block_size"])  # noqa: E731
        return lm, SFTTask(lm, [enc(e) for e in train], [enc(e) for e in val], pad_id=pad_id, **kw)

    def pair(e):
        msgs, system = [{"role": "user", "content": e["prompt"]}], e.get("system")
        c, k = ftdata.encode_pair(tok, template, system, msgs + [{"role": "assistant", "content": e["chosen"]}],
                                  t["block_size"])
        r, k2 = ftdata.encode_pair(tok, template, system, msgs + [{"role": "assistant", "content": e["rejected"]}],
                                   t["block_size"])
        return {"chosen": c, "rejected": r, "n_prompt": min(k, k2)}
    log(f"DPO: scoring {len(train) + len(val)} pairs with the reference model once ...")
    return lm, DPOTask(lm, [pair(e) for e in train], [pair(e) for e in val], pad_id=pad_id,
                       beta=t["beta"], **kw)


def _rl_task(config, model, lm, tok, template, train, val, pad_id, engine, kw, log):
    """RLOO or PPO against the run's reward model; the reference is the starting model (the
    base with the LoRA adapter switched off, or a frozen copy for a full fine-tune). The
    prompts are checked against the context here too, for --resume (fresh runs check them
    before anything is written)."""
    t = config["train"]
    rm = RewardModel(config["data"]["reward"])
    held = config["data"].get("heldout_reward")
    held = RewardModel(held, embedder=rm.embed) if held else None
    if config["method"] == "lora":
        def reference(seqs):
            with model.disable_adapter():
                return _logprobs(lm, seqs, pad_id, engine)
    else:
        frozen = CausalLM(copy.deepcopy(model).requires_grad_(False).eval())

        def reference(seqs):
            return _logprobs(frozen, seqs, pad_id, engine)
    policy = HFModel(model, tok, config["base"]["spec"], template=template, device=str(engine.device))
    _check_prompts_fit(policy, train + val, t["max_new_tokens"])
    log(f"RLHF ({t['algorithm'].upper()}): {t['samples']} replies per prompt, KL coefficient {t['kl_coef']}"
        + (f" adapted towards {t['kl_target']} nats per reply" if t["kl_target"] else "")
        + f"; {len(train)} training prompts, {len(val)} held out; reward model {rm.path}")
    rl = dict(pad_id=pad_id, samples=t["samples"], kl_coef=t["kl_coef"], kl_target=t["kl_target"],
              kl_horizon=t.get("kl_horizon", 10_000),   # runs from before the option had Ziegler's
              length_penalty=t["length_penalty"], max_new_tokens=t["max_new_tokens"], temperature=t["temperature"],
              heldout_fn=held.score if held else None, **kw)
    if t["algorithm"] == "ppo":
        cfg = model.config
        hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
        return PPOTask(lm, policy, train, val, rm.score, reference, hidden_size=hidden, **rl)
    return RLOOTask(lm, policy, train, val, rm.score, reference, **rl)


def _check_prompts_fit(model: HFModel, prompts: list, max_new_tokens: int) -> None:
    room = model.context - max_new_tokens
    for p in prompts:
        n = len(model.encode_prompt(chat_prompt(model, p)))
        check(n <= room, f"the prompt '{p[:60]}' takes {n} tokens in the chat layout; with --max-new-tokens "
                         f"{max_new_tokens} it does not fit the model's context of {model.context} tokens")


def _logprobs(lm, seqs, pad_id, engine) -> list:
    """The log-probabilities of each reply's tokens under `lm`, one 1-d tensor per reply."""
    was = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            out = []
            for i in range(0, len(seqs), 8):
                lp, keep, _, _ = token_logprobs(lm, seqs[i:i + 8], pad_id, engine)
                out += [row[k] for row, k in zip(lp, keep)]
            return out
    finally:
        lm.train(was)


def _save_adapter(peft_model, run, config) -> None:
    tmp = run.path / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    cfg_path = tmp / "adapter_config.json"
    d = json.loads(cfg_path.read_text())
    d["base_model_name_or_path"] = _base_path(config["base"])
    cfg_path.write_text(json.dumps(d, indent=2))
    replace_tree(tmp, run.path / "adapter")


def _base_path(record) -> str:
    if record["kind"] == "builtin":
        return str(models_dir() / record["spec"])
    return record["spec"]


# -- using a fine-tuned model ---------------------------------------------------------------------

class FinetunedModel(HFModel):
    """A fine-tuning run loaded for generation, chat and evaluation."""

    def __init__(self, model, tokenizer, path, config, template, device="cpu"):
        super().__init__(model, tokenizer, str(path), template=template, device=device)
        self.path, self.config, self.summary = Path(path), config, None

    def evaluate(self, text=None, corpus=None, **kw) -> dict:
        """As HFModel.evaluate; by default on the held-out documents of the corpus the run
        was fine-tuned on (shakespeare for instruction and preference runs)."""
        d = self.config["data"]
        if text is None and corpus is None and d["objective"] == CORPUS:
            corpus = d["source"]
        return super().evaluate(text=text, corpus=corpus, **kw)

    def merge(self, out=None, overwrite: bool = False, log=print) -> Path:
        """Write base + adapter (or the fully fine-tuned weights) as a plain Hugging Face directory."""
        out = Path(out) if out is not None else self.path / "merged"
        check(not (out.exists() and any(out.iterdir())) or overwrite,
              f"{out}: exists and is not empty (use --overwrite or another --out)")
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        log(f"{'merged the LoRA adapter of' if self.config['method'] == 'lora' else 'saved'} {self.path} "
            f"into a Hugging Face model -> {out}")
        return out

    export_hf = merge


def load_finetuned(path, log=print, merge: bool = True, device="cpu") -> FinetunedModel:
    """The base model with the run's trained weights (LoRA folded in when `merge`)."""
    run = RunDir(path).require()
    config = run.read_config()
    check(config.get("family") == FinetuneFamily.name, f"{run.path}: not a fine-tuning run")
    base, tok, _, record = load_base(config["base"]["spec"], log)
    if config["base"].get("fingerprint") and record["fingerprint"] != config["base"]["fingerprint"]:
        raise GenlabError(f"{run.path}: trained on a different base model than {config['base']['spec']} is now "
                          "(the adapter or weights do not belong to it)")
    model = lora_wrap(base, config["lora"]) if config["method"] == "lora" else base
    run.load_weights(Trainable(model))
    if config["method"] == "lora" and merge:
        model = model.merge_and_unload()
    template = chat_template_for(tok, config.get("chat_template"))
    return FinetunedModel(model.eval(), tok, run.path, config, template, device=str(Engine.create(device).device))


def merge(path, out=None, overwrite: bool = False, log=print) -> Path:
    """Fold a LoRA run's adapter into the base weights: a plain Hugging Face directory."""
    config = RunDir(path).require().read_config()
    check(config.get("family") == FinetuneFamily.name,
          f"{path}: not a fine-tuning run (genlab merge folds a LoRA adapter)")
    return load_finetuned(path, log=log, merge=True).merge(out, overwrite=overwrite, log=log)


@register
class FinetuneFamily(Family):
    name, title, plural, order, train_verb = "finetune", "fine-tuning", "fine-tuning runs", 40, False
    a_run, command = "a fine-tuning run", "genlab finetune"
    help = "fine-tune a model (full or LoRA) on a corpus, instructions or preference pairs"
    description = (
        "MODEL: smollm2, a Hugging Face directory, a genlab GPT run or a fine-tuning run.\n"
        "--data decides the objective:\n"
        "  a corpus (shakespeare, austen, kjv, text:PATH): next-token loss on its training documents,\n"
        "    scored on its held-out ones;\n"
        "  JSONL instructions, {\"prompt\", \"response\"} or {\"messages\": [...]} per line: loss on the\n"
        "    reply tokens only, laid out with the model's chat template;\n"
        "  JSONL preference pairs, {\"prompt\", \"chosen\", \"rejected\"}: DPO against the frozen\n"
        "    starting model (--beta).\n"
        "Every 10th JSONL example is held out. --method lora trains W + (alpha/r) BA through peft\n"
        "and also saves the adapter in PEFT's format (RUN/adapter/); genlab merge folds it in.\n"
        "Defaults: batch 4, context 256, lr 5e-5 (full) or 2e-3 (lora), 200 steps unless\n"
        "--time-budget; warmup 10 steps then cosine decay.")
    epilog = ("examples:\n"
              "  genlab finetune smollm2 --data shakespeare --method lora --time-budget 300 --out runs/ft\n"
              "  genlab finetune smollm2 --data chat.jsonl --method lora --lora-r 16 --out runs/sft\n"
              "  genlab finetune runs/sft --data prefs.jsonl --method lora --beta 0.1 --out runs/dpo\n"
              "  genlab chat runs/sft --system \"Answer briefly.\"")
    options = (
        Opt("model", str, positional=True, metavar="MODEL"),
        Opt("data", str, required=True, help="a corpus name, text:PATH, or a JSONL file"),
        Opt("method", str, "lora", choices=METHODS, what="method", help="default lora"),
        Opt("on_error", str, "stop", choices=("stop", "skip"), label="--on-error",
            help="a bad JSONL line: stop (default) or skip it (both name the line)"),
        Opt("lr", float, check=above(0)),
        next(o for o in STEP_OPTIONS if o.name == "batch_size").but(help="sequences per step (default 4)"),
        next(o for o in STEP_OPTIONS if o.name == "grad_accum").but(help="micro-batches per step (default 1)"),
        Opt("block_size", int, check=at_least(1), help="tokens per sequence (default 256)"),
        next(o for o in STEP_OPTIONS if o.name == "max_iters").but(help="optimisation steps (default 200)"),
        next(o for o in STEP_OPTIONS if o.name == "warmup_iters").but(help="linear warmup steps (default 10)"),
        next(o for o in STEP_OPTIONS if o.name == "eval_interval").but(help="steps between held-out evaluations (50)"),
        next(o for o in STEP_OPTIONS if o.name == "log_interval").but(help="steps between 'iter N: loss X' lines (10)"),
        Opt("eval_examples", int, check=at_least(1), help="held-out windows / examples scored per evaluation (default 64)"),
        next(o for o in STEP_OPTIONS if o.name == "weight_decay").but(help="AdamW weight decay (default 0)"),
        next(o for o in STEP_OPTIONS if o.name == "grad_clip"),
        Opt("beta", float, check=above(0), help="DPO: strength of the tie to the reference (0.1)"),
        Opt("reward", str, metavar="RUN",
            help="a reward model (genlab reward train): RLHF's RL step (RLOO) against it; --data is then "
                 "the prompts, a .txt file (one per line) or JSONL with a 'prompt' field"),
        Opt("heldout_reward", str, metavar="RUN",
            help="RLHF: a second reward model, trained on other rankings (genlab reward train --half), that "
                 "scores the held-out replies too (val_heldout_reward): gains it does not share are reward hacking"),
        Opt("algorithm", str, choices=("rloo", "ppo"), what="RL algorithm",
            help="RLHF: rloo (REINFORCE leave-one-out, the default) or ppo (clipped objective, value head, GAE)"),
        Opt("samples", int, check=at_least(1),
            help="RLHF: replies sampled per prompt (default 4; RLOO's group needs at least 2)"),
        Opt("kl_coef", float, check=at_least(0),
            help="RLHF: weight of the KL penalty to the starting model, per nat (default 0.05)"),
        Opt("kl_target", float, check=above(0),
            help="RLHF: adapt --kl-coef towards this KL (nats per reply); default: fixed"),
        Opt("kl_horizon", int, check=at_least(1),
            help="RLHF with --kl-target: replies over which the coefficient corrects its error (default 64: "
                 "up to 2.5%% a step of 8 replies)"),
        Opt("length_penalty", float, check=at_least(0), help="RLHF: reward taken off per reply token (default 0)"),
        Opt("max_new_tokens", int, check=at_least(1), help="RLHF: longest sampled reply, tokens (default 48)"),
        Opt("temperature", float, check=above(0), cli=False),
        Opt("grad_checkpoint", bool, help="recompute activations in the backward pass: less memory, ~30%% more time"),
        Opt("fsdp", bool, help="with --method full under --nproc N / torchrun: shard the weights, gradients and "
                               "optimiser state over the processes (PyTorch FSDP2) instead of copying them (DDP)"),
        Opt("dtype", str, choices=("float32", "bfloat16"), what="dtype", help="autocast (default float32)"),
        Opt("schedule", str, choices=("cosine", "constant"), what="schedule", cli=False),
        Opt("min_lr", float, check=at_least(0), cli=False),
        Opt("lora_r", int, check=at_least(1), help="LoRA rank (default 8)"),
        Opt("lora_alpha", float, check=above(0), help="LoRA scale numerator (default 16)"),
        Opt("lora_dropout", float, check=in_range(0, 1), help="default 0.05"),
        Opt("target_modules", str,
            help="comma-separated layer names for LoRA (default all-linear: every linear layer but the head)"),
        Opt("lora", dict, cli=False),
    )
    resumable = ("max_iters", "time_budget")
    run_class = FinetunedModel

    def load(self, path, device="cpu"):
        return load_finetuned(path, device=device)

    def open_spec(self, kind, where, spec, log, device="cpu"):
        """A model that is not a run: a built-in, a Hugging Face directory or Hub id, an adapter."""
        if kind == "adapter":
            return load_adapter(where, log=log, device=device)
        return HFModel.load(spec, log=log, device=device)

    def stored(self, config, key):
        if key == "model":
            return config["base"]["spec"]
        if key == "data":
            return config["data"]["source"]
        if key in ("method",):
            return config[key]
        if key in ("on_error", "reward", *RL_DATA):
            return config["data"].get(key)
        if key in LORA_OPTIONS:
            return (config.get("lora") or {}).get(LORA_OPTIONS[key])
        if key == "lora":
            return config.get("lora")
        return super().stored(config, key)

    def same(self, config, key, value):
        if key in ("model", "data", "reward", "heldout_reward") and Path(str(value)).exists():
            return str(Path(value).resolve()) == str(self.stored(config, key))
        if key == "lora":
            return all((config.get("lora") or {}).get(k) == v for k, v in value.items() if v is not None)
        return super().same(config, key, value)

    def fresh(self, out, o, log):
        warn = o.get("warn") or log
        method = o["method"]
        t = {**COMMON, **DEFAULTS[method], **{k: o[k] for k in (*COMMON, *DEFAULTS["full"]) if k in o}}
        if t["max_iters"] is None and t["time_budget"] is None:
            t["max_iters"] = 200
        if t["fsdp"]:
            check(method == "full", "--fsdp shards a full fine-tune (--method full); LoRA's few weights train "
                                    "under DDP: drop --fsdp")
            check(o.get("reward") is None, "--fsdp: RLHF (--reward) trains in one process")
            check(procs.world_size() > 1, "--fsdp shards over processes: give --nproc N (or run under torchrun)")
        lora = {**LORA, **{k: v for k, v in (o.get("lora") or {}).items() if v is not None},
                **{LORA_OPTIONS[k]: o[k] for k in LORA_OPTIONS if o.get(k) is not None}}
        by_key = {v: k for k, v in LORA_OPTIONS.items()}
        unknown = sorted(k for k in lora if k not in by_key)
        check(not unknown, f"unknown LoRA settings: {', '.join(unknown)} (r, alpha, dropout, target_modules)")
        validate_all(self.options, {by_key[k]: v for k, v in lora.items()})
        run = RunDir(out if out is not None else Path("runs") / f"finetune-{method}")
        check(not (run.is_run() and not o.get("overwrite")),
              f"{run.path}: a run already exists here (use --resume to continue it, --overwrite to replace it, "
              "or another --out)")
        given_rl = sorted(k for k in (*RL, *RL_DATA) if k in o)
        check(o.get("reward") is not None or not given_rl,
              f"--{', --'.join(k.replace('_', '-') for k in given_rl)}: RLHF settings, for a run with --reward RUN")
        objective, payload = _objective(o["data"], o["on_error"], warn, o.get("reward"))  # bad data stops us first
        t["objective"] = objective
        reward = None
        if objective == "rlhf":
            rm = RewardModel(o["reward"])                       # not a reward model: stops here
            reward = str(rm.path.resolve())
            if o.get("heldout_reward"):
                held = RewardModel(o["heldout_reward"], embedder=rm.embed)
                check(held.path.resolve() != Path(reward),
                      "--heldout-reward is the training reward model itself; give one trained on other rankings")
                o["heldout_reward"] = str(held.path.resolve())
            t.update({k: o.get(k, v) for k, v in RL.items()})
            check(t["algorithm"] == "ppo" or t["samples"] >= 2,
                  f"--samples {t['samples']}: RLOO's baseline is the other replies to the same prompt, so it needs "
                  "at least 2 (PPO works with 1)")
            if "lr" not in o:
                t["lr"] = RL_LR[method]
        engine = Engine.for_training(o.get("device"), t["dtype"])
        base, tok, template, record = load_base(o["model"], log, factor=1.3)
        params = sum(p.numel() for p in base.parameters())
        check_memory(_memory_need(params, method, t, base.config), f"a {method} fine-tune of {o['model']}")
        if objective == "rlhf":    # (before anything is written)
            _check_prompts_fit(HFModel(base, tok, o["model"], template=template), payload, t["max_new_tokens"])
        run.prepare_new(overwrite=o.get("overwrite", False))
        data = o["data"]
        config = {"family": self.name, "genlab_version": __version__, "base": record, "method": method,
                  "lora": lora if method == "lora" else None,
                  "data": {"source": data if objective == CORPUS else str(Path(data).resolve()),
                           "objective": objective, "on_error": o["on_error"],
                           **({"reward": reward, "heldout_reward": o.get("heldout_reward")} if reward else {})},
                  "train": {**t, "seed": o["seed"]}, "chat_template": template.to_dict()}
        run.write_config(config)
        log(f"fine-tuning {o['model']} ({params / 1e6:.1f}M parameters, method {method}, objective {objective}) "
            f"on {data} -> {run.path}")
        return self._fit(run, config, base, tok, template, payload, engine, resume=False,
                         progress=o.get("progress"), log=log)

    def resume(self, run, config, state, changes, opts, log):
        warn = opts.get("warn") or log
        for k, v in changes.items():
            if v is not None:
                config["train"][k] = v
        base, tok, template, record = load_base(config["base"]["spec"], log)
        check(record["fingerprint"] == config["base"]["fingerprint"],
              f"{run.path}: its base model {config['base']['spec']} has changed since the run began")
        d = config["data"]
        payload = d["source"]
        if d["objective"] == "rlhf":
            _, payload = _objective(d["source"], d["on_error"], warn, d["reward"])
        elif d["objective"] != CORPUS:
            kind, payload = ftdata.read_jsonl(d["source"], on_error=d["on_error"], warn=warn)
            check(kind == d["objective"], f"{d['source']}: now holds {kind} data, but the run trains {d['objective']}")
        run.write_config(config)
        log(f"resuming {run.path}")
        engine = Engine.for_training(opts.get("device"), config["train"]["dtype"])
        return self._fit(run, config, base, tok, template, payload, engine, resume=True,
                         progress=opts.get("progress"), log=log)

    def _fit(self, run, config, base, tok, template, payload, engine, resume, progress, log):
        t = config["train"]
        engine.record(t, t["batch_size"] * t.get("grad_accum", 1))
        lm, task = _prepare(config, base, tok, template, payload, engine, log)
        lm.to(engine.device)
        trainable = task.checkpoint.num_params()
        if not resume:
            config["trainable_params"] = trainable
            config["total_params"] = sum(p.numel() for p in lm.parameters())
        run.write_config(config)
        log(f"trainable parameters: {trainable:,} of {config['total_params']:,} "
            f"({100 * trainable / config['total_params']:.2f}%)")
        loop = IterConfig(max_iters=t["max_iters"], eval_interval=t["eval_interval"], log_interval=t["log_interval"],
                          seed=t["seed"], time_budget=t["time_budget"], progress=progress)
        summary = fit_iters(run, task, loop, resume=resume, log=log, engine=engine)
        if not task.sharded:
            run.load_weights(task.checkpoint)  # the best held-out weights
        if config["method"] == "lora" and procs.writer():
            _save_adapter(lm.hf, run, config)
        save_loss_plot(run.read_metrics(), run.path / "loss.png", keys=("loss", "val_loss"),
                       title=f"{config['method']} fine-tune of {config['base']['spec']}", x="iter",
                       kinds=("iter", "val"), labels={"loss": "train loss", "val_loss": "held-out loss"},
                       ylabel="loss")
        log(f"run saved in {run.path} (best held-out loss {summary['best_val_loss']:.4f}"
            + ("; PEFT adapter in adapter/" if config["method"] == "lora" else "") + ")")
        if task.sharded:  # each rank holds a shard: the best weights, whole, from the run
            ft = load_finetuned(run.path, device=str(engine.device))
            ft.summary = summary
            return ft
        ft = FinetunedModel(lm.hf, tok, run.path, config, template)
        ft.summary = summary
        return ft

