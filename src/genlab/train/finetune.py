"""The fine-tuning steps: instruction tuning (the loss on the reply tokens only) and direct
preference optimisation, on any causal LM with genlab's GPT interface (llm/hf.py's
CausalLM); `Trainable` is what their checkpoints hold (every weight, or LoRA's)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import CPU, Engine
from .lm import StepTask

# Sequences scored at once in evaluation (and in DPO's reference pass): with a large
# vocabulary the logits are the biggest tensor, and evaluation must not set the peak memory.
EVAL_BATCH = 2


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


def pad_batch(seqs, n_prompt, pad_id):
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


def sequence_logprobs(model, seqs, n_prompt, pad_id, engine: Engine = CPU) -> torch.Tensor:
    """Sum of log-probabilities of each sequence's completion tokens (after n_prompt)."""
    ids, labels, mask = pad_batch(seqs, n_prompt, pad_id)
    ids, labels, mask = (engine.batch(t) for t in (ids, labels, mask))
    with engine.autocast():
        logits, _ = model(ids, attention_mask=mask)
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * (labels != -100)).sum(-1)


class SFTTask(StepTask):
    """Instruction tuning: next-token loss on the reply tokens only."""

    def __init__(self, model, train, val, *, pad_id, eval_batch=EVAL_BATCH, **kw):
        super().__init__(model, **kw)
        self.train_ex, self.val_ex, self.pad_id, self.eval_batch = train, val, pad_id, eval_batch

    def _loss(self, batch, net=None):
        ids, labels, mask = pad_batch([s for s, _ in batch], [k for _, k in batch], self.pad_id)
        _, loss = (net or self.model)(ids[:, :-1].to(self.device), labels[:, 1:].to(self.device),
                             attention_mask=mask[:, :-1].to(self.device))
        return loss, int((labels[:, 1:] != -100).sum())

    def batch_loss(self):
        pick = self.engine.split(torch.randint(0, len(self.train_ex), (self.batch,), generator=self.gen).tolist())
        return self._loss([self.train_ex[i] for i in pick], self.net)[0]

    @torch.no_grad()
    def evaluate(self) -> dict:
        total, n = 0.0, 0
        for i in range(0, len(self.val_ex), self.eval_batch):
            with self.engine.autocast():
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

    def _pair_logps(self, pairs, net=None) -> torch.Tensor:
        """(n, 2): log-probabilities of (chosen, rejected) under the current model."""
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        k = [p["n_prompt"] for p in pairs] * 2
        lp = sequence_logprobs(net or self.model, seqs, k, self.pad_id, self.engine)
        return torch.stack([lp[:len(pairs)], lp[len(pairs):]], 1)

    def _dpo(self, lp, ref):
        margin = self.beta * ((lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1]))
        return -F.logsigmoid(margin).mean(), margin

    def batch_loss(self):
        pick = self.engine.split(torch.randint(0, len(self.train_ex), (self.batch,), generator=self.gen))
        lp = self._pair_logps([self.train_ex[i] for i in pick.tolist()], self.net)
        return self._dpo(lp, self.ref_train[pick].to(self.device))[0]

    @torch.no_grad()
    def evaluate(self) -> dict:
        lp = torch.cat([self._pair_logps(self.val_ex[i:i + self.eval_batch])
                        for i in range(0, len(self.val_ex), self.eval_batch)])
        loss, margin = self._dpo(lp, self.ref_val.to(self.device))
        return {"val_loss": float(loss), "reward_accuracy": float((margin > 0).float().mean()),
                "reward_margin": float(margin.mean() / self.beta)}
