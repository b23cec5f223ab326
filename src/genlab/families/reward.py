"""The reward-model family: a Bradley-Terry reward model learns, from people's (or a
rule's) rankings of two responses, a score r(prompt, response) with P(chosen beats
rejected) = sigmoid(r_c - r_r).

The responses are read by the shared sentence embedder (encoders/minilm.py,
all-MiniLM-L6-v2); a small head on [e(response), e(prompt) * e(response)] is trained on the
pairs. The run directory keeps the genlab contract (config.json, model.safetensors = the head).

    genlab reward train --data prefs.jsonl --out runs/rm
    genlab reward compare runs/rm --model runs/dpo --baseline smollm2 --prompts prompts.txt

`compare` samples a response from each model for every prompt and reports the share of
prompts where the reward model prefers the model's response (its win rate; 0.5 is a tie),
and the KL divergence of the model from the baseline, estimated from the model's samples.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoders import EMBEDDER, Embedder
from ..llm import data as ftdata
from ..llm.hf import CausalLM
from ..llm.sample import sample_responses
from ..runs import RunDir
from ..train.engine import Engine
from ..train.finetune import sequence_logprobs
from ..util.errors import check
from ..util.options import Opt, at_least
from ..util.version import __version__
from .base import OUT, OVERWRITE, SEED, Family, register


class RewardHead(nn.Module):
    """r(prompt, response) from the two embeddings."""

    def __init__(self, dim: int = 384, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, e_prompt, e_response):
        return self.net(torch.cat([e_response, e_prompt * e_response], -1)).squeeze(-1)


def train_reward(data, out, *, epochs: int = 200, lr: float = 3e-3, weight_decay: float = 1e-2,
                 seed: int = 0, half: int | None = None, overwrite: bool = False, on_error: str = "stop",
                 log=print) -> "RewardModel":
    """Fit a Bradley-Terry reward model to the preference pairs in the JSONL file `data`;
    every 10th pair is held out, and its accuracy (chosen scored above rejected) reported.
    half 1 or 2: only the odd-numbered or the even-numbered pairs, so that two reward models
    trained on the two halves share no ranking (one trains a policy, the other checks it)."""
    return RewardFamily().train(out, data=data, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                                half=half, overwrite=overwrite, on_error=on_error, log=log)


def _fit_reward(data, out, *, epochs, lr, weight_decay, seed, overwrite, on_error, log, half=None) -> "RewardModel":
    kind, pairs = ftdata.read_jsonl(data, on_error=on_error, warn=log)
    check(kind == "dpo", f"{data}: a reward model learns from preference pairs "
                          "({'prompt', 'chosen', 'rejected'}), not instructions")
    if half is not None:
        pairs = pairs[half - 1::2]
        check(len(pairs) >= 2, f"{data}: half {half} holds {len(pairs)} pair(s); a reward model needs at least 2")
    run = RunDir(out)
    run.prepare_new(overwrite=overwrite)
    train, val = ftdata.split(pairs)
    emb = Embedder()
    log(f"reward model: embedding {len(pairs)} pairs with all-MiniLM-L6-v2 ...")

    def feats(ps):
        return emb([p["prompt"] for p in ps]), emb([p["chosen"] for p in ps]), emb([p["rejected"] for p in ps])
    tr, va = feats(train), feats(val)
    torch.manual_seed(seed)
    head = RewardHead()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_acc(f):
        margin = head(f[0], f[1]) - head(f[0], f[2])
        return -F.logsigmoid(margin).mean(), float((margin > 0).float().mean())
    for epoch in range(1, epochs + 1):
        head.train()
        loss, acc = loss_acc(tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 50 == 0 or epoch == epochs:
            head.eval()
            with torch.no_grad():
                vl, vacc = loss_acc(va)
            run.append_metrics({"kind": "epoch", "epoch": epoch, "train_loss": float(loss.detach()),
                                "train_accuracy": acc, "val_loss": float(vl), "val_accuracy": vacc})
            log(f"epoch {epoch}: loss {float(loss.detach()):.4f}, held-out pair accuracy {vacc:.3f}")
    run.save_weights(head)
    run.write_config({"family": "reward", "genlab_version": __version__, "embedder": EMBEDDER,
                      "data": {"source": str(Path(data).resolve()), "pairs": len(pairs), "held_out": len(val),
                               "half": half},
                      "train": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "seed": seed},
                      "val_accuracy": vacc})
    log(f"reward model saved in {run.path} (held-out pair accuracy {vacc:.3f} on {len(val)} pairs)")
    return RewardModel(run.path, embedder=emb)


class RewardModel:
    family = "reward"
    kind = "reward"

    def __init__(self, path, embedder: Embedder | None = None, device=None):
        self.family_plugin.open_run(self, path)
        check(self.config.get("family") == RewardFamily.name,
              f"{self.path}: a '{self.config.get('family')}' run, not a reward model")
        self.head = RewardHead()
        self.dir.load_weights(self.head)
        self.head.eval()
        self.embed = embedder or Embedder()

    @torch.no_grad()
    def score(self, prompts: list, responses: list) -> torch.Tensor:
        check(len(prompts) == len(responses), "one prompt per response")
        return self.head(self.embed(prompts), self.embed(responses))

    def compare(self, model, baseline, prompts: list, max_new_tokens: int = 48, seed: int = 0, log=print) -> dict:
        """Win rate of `model` over `baseline` under this reward model (see compare())."""
        return compare(self, model, baseline, prompts, max_new_tokens=max_new_tokens, seed=seed, log=log)


# -- comparing two models under the reward model -------------------------------------------------

@torch.no_grad()
def completion_logprobs(model, seqs: list, batch: int = 8) -> torch.Tensor:
    """Sum of log-probabilities of each (prompt ids, reply ids) reply under `model`."""
    lm = CausalLM(model.model)
    engine = Engine(model.device)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        out.append(sequence_logprobs(lm, [p + r for p, r in chunk], [len(p) for p, _ in chunk], pad, engine))
    return torch.cat(out)


def compare(rm: RewardModel, model, baseline, prompts: list, max_new_tokens: int = 48, seed: int = 0,
            log=print) -> dict:
    """Win rate of `model` over `baseline` under the reward model on `prompts`, and
    KL(model || baseline) per reply, estimated from the model's own samples."""
    check(len(prompts) >= 1, "no prompts to compare on")
    log(f"sampling {len(prompts)} replies from each model ...")
    a, seqs_a = sample_responses(model, prompts, max_new_tokens, seed=seed)
    b, _ = sample_responses(baseline, prompts, max_new_tokens, seed=seed + 1)
    ra, rb = rm.score(prompts, a), rm.score(prompts, b)
    wins = (ra > rb).float() + 0.5 * (ra == rb).float()
    kl = (completion_logprobs(model, seqs_a) - completion_logprobs(baseline, seqs_a)).mean()
    n = len(prompts)
    p = float(wins.mean())
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-9) / n)
    return {"kind": "compare", "prompts": n, "win_rate": p, "win_rate_ci95": [max(0.0, p - half), min(1.0, p + half)],
            "reward_model": float(ra.mean()), "reward_baseline": float(rb.mean()),
            "kl_to_baseline": float(kl), "examples": [{"prompt": q, "model": x, "baseline": y}
                                                       for q, x, y in list(zip(prompts, a, b))[:3]]}


@register
class RewardFamily(Family):
    name, title, plural, order, train_verb = "reward", "reward-model", "reward models", 50, False
    a_run, command = "a reward-model run", "genlab reward train"
    help = "fit a reward model to preference pairs"
    options = (
        Opt("data", str, required=True, help="JSONL preference pairs"),
        Opt("epochs", int, 200, check=at_least(1), label="--epochs"),
        Opt("lr", float, 3e-3, cli=False),
        Opt("weight_decay", float, 1e-2, cli=False),
        Opt("on_error", str, "stop", choices=("stop", "skip"), label="--on-error"),
        Opt("half", int, choices=(1, 2), what="half",
            help="train on the odd-numbered (1) or even-numbered (2) pairs only: two reward models that "
                 "share no ranking (train a policy on one, check it with the other)"),
    )
    common = (OUT, SEED, OVERWRITE)
    resumable = ()
    run_class = RewardModel

    def load(self, path, device="cpu"):
        return RewardModel(path)

    def fresh(self, out, o, log):
        check(out is not None, "--out is needed: the directory to write the reward model into")
        return _fit_reward(o["data"], out, epochs=o["epochs"], lr=o["lr"], weight_decay=o["weight_decay"],
                           seed=o["seed"], overwrite=o.get("overwrite", False), on_error=o["on_error"], log=log,
                           half=o.get("half"))
