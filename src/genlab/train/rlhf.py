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

PPO (Schulman et al., 2017, as applied to language models by Ziegler et al. and Ouyang
et al.): the KL penalty is paid per token, the reward at the reply's last token; a value
head on the policy's last hidden state estimates the return from each token on, GAE
(gamma, lambda) turns the per-token rewards and values into advantages, and a few epochs
over each batch of samples optimise the clipped surrogate
-min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = pi(token) / pi_old(token), plus the
clipped value loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

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
    -0.2, 0.2) * n / horizon (n: replies in the step). target None: the coefficient is fixed.
    Their horizon, 10,000 replies, suits batches of 512 over 10^5 episodes; a CPU run samples
    8 replies a step for ~100 steps, where it would move the coefficient by 2% in all. genlab's
    default, 64 replies, lets it move 2.5% a step (x10 in ~90 steps)."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 64):
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        err = max(-0.2, min(0.2, kl / self.target - 1))
        self.coef *= 1 + err * n / self.horizon


def token_logprobs(model, seqs, pad_id, engine: Engine = CPU, value_head=None):
    """For [(prompt ids, reply ids)], right-padded: (log-probabilities of the tokens (B, T),
    with grad; mask of the reply tokens (B, T); mean entropy of the next-token distribution
    over the reply tokens (detached); and, with `value_head`, the value of each position
    (B, T) from the last hidden state, else None). Position t scores token t + 1."""
    ids, labels, mask = pad_batch([p + r for p, r in seqs], [len(p) for p, _ in seqs], pad_id)
    ids, labels, mask = (engine.batch(t) for t in (ids, labels, mask))
    hf = getattr(model, "hf", model)  # a CausalLM's Hugging Face model, or one (in DDP) itself
    with engine.autocast():
        out = hf(input_ids=ids, attention_mask=mask, use_cache=False,
                       output_hidden_states=value_head is not None)
    logits, labels = out.logits[:, :-1].float(), labels[:, 1:]
    logp = torch.log_softmax(logits, -1)
    keep = labels != -100
    lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    with torch.no_grad():
        ent = -(logp.exp() * logp).sum(-1)
        entropy = (ent * keep).sum() / keep.sum().clamp(min=1)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, :-1].float()).squeeze(-1) * keep
    return lp, keep, entropy, values


def reply_logprobs(model, seqs, pad_id, engine: Engine = CPU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For [(prompt ids, reply ids)]: (sum of the reply tokens' log-probabilities (with
    grad), mean entropy over the reply tokens (detached), reply lengths)."""
    lp, keep, entropy, _ = token_logprobs(model, seqs, pad_id, engine)
    return lp.sum(-1), entropy, keep.sum(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over the reply tokens of
    right-padded (B, T) rows (`keep` marks them; a reply ends where its row's marks end):
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}, with V and A
    zero after the reply. Returns (advantages, returns = advantages + values), zero off it."""
    keep = keep.float()
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_a = torch.zeros_like(next_v)
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = (delta + gamma * lam * next_a) * keep[:, t]
        adv[:, t] = a
        next_v, next_a = values[:, t] * keep[:, t], a
    return adv, (adv + values) * keep


class RLOOTask(StepTask):
    name, min_samples = "RLOO", 2

    """RLOO with a KL penalty. `policy` is the model as an HFModel (sampling), `model` the
    same weights as a CausalLM (scoring, with grad); `reward_fn(prompts, replies)` gives a
    tensor of rewards; `reference(seqs)` the starting policy's log-probabilities of each
    reply's tokens (a list of 1-d tensors);
    `heldout_fn`, a second reward model (trained on other rankings) that only scores the
    held-out replies: a gain under reward_fn that it does not share is reward hacking."""

    def __init__(self, model, policy, train_prompts, val_prompts, reward_fn, reference, *, pad_id,
                 samples: int = 4, kl_coef: float = 0.05, kl_target: float | None = None, kl_horizon: int = 64,
                 length_penalty: float = 0.0, max_new_tokens: int = 48, temperature: float = 1.0,
                 eval_seed: int = 1234, heldout_fn=None, **kw):
        super().__init__(model, **kw)
        check(samples >= self.min_samples, f"{self.name} needs at least {self.min_samples} samples per prompt (--samples)")
        self.policy, self.train_prompts, self.val_prompts = policy, train_prompts, val_prompts
        self.reward_fn, self.reference, self.pad_id = reward_fn, reference, pad_id
        self.k, self.kl = samples, AdaptiveKL(kl_coef, kl_target, kl_horizon)
        self.length_penalty, self.max_new, self.temperature = length_penalty, max_new_tokens, temperature
        self.eval_seed, self.heldout_fn = eval_seed, heldout_fn
        self.last: dict = {}

    def distribute(self, engine: Engine) -> None:
        """Under torchrun: the Hugging Face model in DDP (token_logprobs calls it directly)."""
        self.engine = engine
        self.net = engine.wrap(self.model.hf, "mean")

    def _prompts(self) -> tuple[list, torch.Generator]:
        """This step's prompts (this rank's part of the global batch) and the generator that
        samples their replies: the shared one in one process; under torchrun one per rank,
        seeded from the shared one (which every rank then keeps in step)."""
        pick = self.engine.split(torch.randint(0, len(self.train_prompts), (self.batch,), generator=self.gen).tolist())
        gen = self.gen
        if self.engine.distributed:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
            gen = torch.Generator().manual_seed(seed + self.engine.rank)
        return [self.train_prompts[i] for i in pick], gen

    def _rollout(self, prompts, generator):
        """k sampled replies per prompt, their rewards and the reference's log-probabilities
        of each reply's tokens."""
        rep = [p for p in prompts for _ in range(self.k)]
        was = self.model.training
        self.model.eval()
        texts, seqs = sample_responses(self.policy, rep, self.max_new, generator=generator,
                                       temperature=self.temperature, batch=len(rep))
        self.model.train(was)
        with torch.no_grad():
            rewards = torch.as_tensor(self.reward_fn(rep, texts), dtype=torch.float32).flatten().cpu()
            ref = [x.float().cpu() for x in self.reference(seqs)]
        return texts, seqs, rewards, ref

    def batch_loss(self) -> torch.Tensor:
        texts, seqs, rewards, ref = self._rollout(*self._prompts())
        ref = torch.stack([x.sum() for x in ref])
        was = self.model.training
        self.model.eval()        # no dropout: the log-probabilities are those of the policy that sampled
        lp, entropy, n = reply_logprobs(self.net, seqs, self.pad_id, self.engine)
        self.model.train(was)
        kl = lp.detach().cpu() - ref
        returns = rewards - self.kl.coef * kl - self.length_penalty * n.cpu().float()
        adv = rloo_advantages(returns.view(-1, self.k)).flatten().to(lp.device)
        loss = -(adv * lp).mean()
        reward, kl_mean, ent, tokens = self.engine.average(float(rewards.mean()), float(kl.mean()), float(entropy),
                                                           float(n.float().mean()))
        self.last = {"reward": reward, "kl": kl_mean, "entropy": ent, "reply_tokens": tokens, "kl_coef": self.kl.coef}
        self.kl.update(kl_mean, len(texts) * self.engine.world_size)
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
        kl = float((lp.cpu() - torch.stack([x.sum() for x in ref])).mean())
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


class PPOTask(RLOOTask):
    """PPO with a value head (a linear map of the policy's last hidden state, zero at the
    start), the KL penalty per token, GAE and `ppo_epochs` passes over each batch of samples
    with the clipped surrogate and value losses (one optimiser step per pass)."""

    name, min_samples = "PPO", 1

    def __init__(self, *a, hidden_size: int, ppo_epochs: int = 2, clip: float = 0.2, vf_coef: float = 0.1,
                 gamma: float = 1.0, lam: float = 0.95, **kw):
        super().__init__(*a, **kw)
        self.ppo_epochs, self.clip, self.vf_coef, self.gamma, self.lam = ppo_epochs, clip, vf_coef, gamma, lam
        self.value_head = nn.Linear(hidden_size, 1).to(self.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.optimizer.add_param_group({"params": list(self.value_head.parameters()), "weight_decay": 0.0})
        self.value_net = self.value_head

    def distribute(self, engine: Engine) -> None:
        super().distribute(engine)
        self.value_net = engine.wrap(self.value_head, "mean")

    def _scored(self, seqs, train: bool = False):
        if train:  # the wrapped modules (under torchrun their gradients are averaged)
            return token_logprobs(self.net, seqs, self.pad_id, self.engine, self.value_net)
        return token_logprobs(self.model, seqs, self.pad_id, self.engine, self.value_head)

    def train_step(self) -> float:
        texts, seqs, rewards, ref = self._rollout(*self._prompts())
        was = self.model.training
        self.model.eval()        # no dropout: every pass scores the policy that sampled
        try:
            with torch.no_grad(), self.engine.autocast():
                old_lp, keep, entropy, old_v = self._scored(seqs)
            ref_lp = torch.zeros_like(old_lp)
            if keep.any():
                ref_lp[keep] = torch.cat(ref).to(ref_lp.device)
            kl_tok = (old_lp - ref_lp) * keep
            n = keep.sum(-1)
            r = -self.kl.coef * kl_tok
            last = (torch.arange(keep.shape[1], device=keep.device) * keep).max(-1).values
            ended = n > 0
            total = rewards.to(r.device) - self.length_penalty * n.float()
            r[ended, last[ended]] += total[ended]
            adv, ret = gae(r, old_v, keep, self.gamma, self.lam)
            a = adv[keep]
            if self.engine.distributed:  # normalised over the global batch
                s, s2, m = self.engine.total(torch.stack([a.sum(), (a * a).sum(), torch.tensor(float(a.numel()))]))
                if m > 1:
                    mean = s / m
                    std = ((s2 - m * mean * mean) / (m - 1)).clamp(min=0).sqrt()
                    adv = (adv - mean.to(adv.dtype)) / (std.to(adv.dtype) + 1e-8) * keep
            elif a.numel() > 1:
                adv = (adv - a.mean()) / (a.std() + 1e-8) * keep
            params = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
            denom = keep.sum().clamp(min=1)
            clipped = vloss = 0.0
            for _ in range(self.ppo_epochs):
                with self.engine.autocast():
                    lp, _, _, v = self._scored(seqs, train=True)
                ratio = torch.exp(lp - old_lp) * keep
                pg = -torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
                v_clip = old_v + (v - old_v).clamp(-self.clip, self.clip)
                vl = 0.5 * torch.max((v - ret) ** 2, (v_clip - ret) ** 2)
                loss = (pg * keep).sum() / denom + self.vf_coef * (vl * keep).sum() / denom
                loss.backward()
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                clipped = float((((ratio.detach() - 1).abs() > self.clip) & keep).sum() / denom)
                vloss = float((vl.detach() * keep).sum() / denom)
        finally:
            self.model.train(was)
        kl = kl_tok.sum(-1).cpu()
        reward, kl_mean, ent, tokens, vloss, clipped = self.engine.average(
            float(rewards.mean()), float(kl.mean()), float(entropy), float(n.float().mean()), vloss, clipped)
        self.last = {"reward": reward, "kl": kl_mean, "entropy": ent, "reply_tokens": tokens,
                     "kl_coef": self.kl.coef, "value_loss": vloss, "clip_fraction": clipped}
        self.kl.update(kl_mean, len(texts) * self.engine.world_size)
        return -(self.last["reward"] - self.last["kl_coef"] * self.last["kl"])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "value_head": self.value_head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.value_head.load_state_dict(state["value_head"])
