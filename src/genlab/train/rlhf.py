"""The RL step of RLHF: on-policy reinforcement learning against a reward model, with a
KL leash to the starting policy (Ziegler et al., 2019; Ouyang et al., 2022).

Each step draws `batch` prompts and samples k replies to each from the current policy;
a reply's return is

    R = r(prompt, reply) - kl_coef * (log pi(reply) - log ref(reply)) - length_penalty * tokens

(the sampled log-ratio is an unbiased estimate of the reply's KL to the reference, in nats
per reply). RLOO, REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024):
each reply's advantage is its return minus the mean return of the prompt's other k-1
replies -- a baseline from the same prompt that needs no value network -- and the loss is
-mean(A * log pi(reply)). The KL coefficient is fixed, or adapted towards a target KL
per reply (Ziegler et al.'s proportional controller).
"""
from __future__ import annotations

import math

import torch

from ..llm.sample import sample_responses
from ..util.errors import check
from .engine import CPU, Engine
from .finetune import pad_batch
from .lm import StepTask


def rloo_advantages(returns: torch.Tensor) -> torch.Tensor:
    """(P, k) returns of k replies to each of P prompts -> (P, k) advantages:
    R_i - mean_{j != i} R_j."""
    check(returns.dim() == 2 and returns.shape[1] >= 2, "RLOO needs at least 2 replies per prompt")
    k = returns.shape[1]
    others = (returns.sum(1, keepdim=True) - returns) / (k - 1)
    return returns - others


class AdaptiveKL:
    """Ziegler et al. (2019): after a step with KL `kl`, coef *= 1 + clip(kl / target - 1,
    -0.2, 0.2) * n / horizon (n: replies in the step). target None: the coefficient is fixed."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10_000):
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        err = max(-0.2, min(0.2, kl / self.target - 1))
        self.coef *= 1 + err * n / self.horizon


def reply_logprobs(model, seqs, pad_id, engine: Engine = CPU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For [(prompt ids, reply ids)]: (sum of the reply tokens' log-probabilities (with
    grad), mean entropy of the next-token distribution over the reply tokens (detached),
    reply lengths)."""
    ids, labels, mask = pad_batch([p + r for p, r in seqs], [len(p) for p, _ in seqs], pad_id)
    ids, labels, mask = (engine.batch(t) for t in (ids, labels, mask))
    with engine.autocast():
        logits, _ = model(ids, attention_mask=mask)
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    logp = torch.log_softmax(logits, -1)
    keep = labels != -100
    lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        ent = -(logp.exp() * logp).sum(-1)
        n = keep.sum(-1)
        entropy = (ent * keep).sum() / n.sum().clamp(min=1)
    return (lp * keep).sum(-1), entropy, n


class RLOOTask(StepTask):
    """RLOO with a KL penalty. `policy` is the model as an HFModel (sampling), `model` the
    same weights as a CausalLM (scoring, with grad); `reward_fn(prompts, replies)` gives a
    tensor of rewards; `reference(seqs)` the starting policy's log-probabilities;
    `heldout_fn`, a second reward model (trained on other rankings) that only scores the
    held-out replies: a gain under reward_fn that it does not share is reward hacking."""

    def __init__(self, model, policy, train_prompts, val_prompts, reward_fn, reference, *, pad_id,
                 samples: int = 4, kl_coef: float = 0.05, kl_target: float | None = None,
                 length_penalty: float = 0.0, max_new_tokens: int = 48, temperature: float = 1.0,
                 eval_seed: int = 1234, heldout_fn=None, **kw):
        super().__init__(model, **kw)
        check(samples >= 2, "RLOO needs at least 2 samples per prompt (--samples)")
        self.policy, self.train_prompts, self.val_prompts = policy, train_prompts, val_prompts
        self.reward_fn, self.reference, self.pad_id = reward_fn, reference, pad_id
        self.k, self.kl = samples, AdaptiveKL(kl_coef, kl_target)
        self.length_penalty, self.max_new, self.temperature = length_penalty, max_new_tokens, temperature
        self.eval_seed, self.heldout_fn = eval_seed, heldout_fn
        self.last: dict = {}

    def _rollout(self, prompts, generator):
        """k sampled replies per prompt, their rewards and the reference's log-probabilities."""
        rep = [p for p in prompts for _ in range(self.k)]
        was = self.model.training
        self.model.eval()
        texts, seqs = sample_responses(self.policy, rep, self.max_new, generator=generator,
                                       temperature=self.temperature, batch=len(rep))
        self.model.train(was)
        with torch.no_grad():
            rewards = torch.as_tensor(self.reward_fn(rep, texts), dtype=torch.float32).flatten().cpu()
            ref = self.reference(seqs).float().cpu()
        return texts, seqs, rewards, ref

    def batch_loss(self) -> torch.Tensor:
        pick = torch.randint(0, len(self.train_prompts), (self.batch,), generator=self.gen).tolist()
        texts, seqs, rewards, ref = self._rollout([self.train_prompts[i] for i in pick], self.gen)
        was = self.model.training
        self.model.eval()        # no dropout: the log-probabilities are those of the policy that sampled
        lp, entropy, n = reply_logprobs(self.model, seqs, self.pad_id, self.engine)
        self.model.train(was)
        kl = lp.detach().cpu() - ref
        returns = rewards - self.kl.coef * kl - self.length_penalty * n.cpu().float()
        adv = rloo_advantages(returns.view(-1, self.k)).flatten().to(lp.device)
        loss = -(adv * lp).mean()
        self.last = {"reward": float(rewards.mean()), "kl": float(kl.mean()), "entropy": float(entropy),
                     "reply_tokens": float(n.float().mean()), "kl_coef": self.kl.coef}
        self.kl.update(float(kl.mean()), len(texts))
        return loss

    def train_step(self) -> float:
        """The step's loss is RLOO's surrogate; the loop's "loss" is the negated mean return
        (reward - KL penalty), so lower is better as everywhere else."""
        super().train_step()
        return -(self.last["reward"] - self.last["kl_coef"] * self.last["kl"])

    @torch.no_grad()
    def evaluate(self) -> dict:
        """On the held-out prompts, one reply each from a fixed seed: the mean reward, KL
        per reply and length; val_loss = -(reward - kl_coef * KL)."""
        g = torch.Generator().manual_seed(self.eval_seed)
        k, self.k = self.k, 1
        try:
            texts, seqs, rewards, ref = self._rollout(self.val_prompts, g)
        finally:
            self.k = k
        lp, _, n = reply_logprobs(self.model, seqs, self.pad_id, self.engine)
        kl = float((lp.cpu() - ref).mean())
        reward = float(rewards.mean())
        rec = {"val_loss": -(reward - self.kl.coef * kl), "val_reward": reward, "val_kl": kl,
               "val_reply_tokens": float(n.float().mean()), "example": texts[0][:200]}
        if self.heldout_fn is not None:
            rec["val_heldout_reward"] = float(torch.as_tensor(self.heldout_fn(self.val_prompts, texts)).mean())
        return rec

    def log_fields(self) -> dict:
        return {**super().log_fields(), **{k: v for k, v in self.last.items() if math.isfinite(v)}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kl_coef": self.kl.coef}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl.coef = float(state["kl_coef"])
