"""Knowledge distillation (Hinton et al., 2015): a small student learns from a large
teacher's temperature-softened next-token distribution as well as from the data.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross-entropy(student, next token)

The T^2 keeps the soft term's gradients on the scale of the hard one as T changes.
With alpha = 0 it is plain training, the baseline a distilled student must beat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tokenizer import windows
from ..models.gpt import GPT, GPTConfig
from ..train.lm import LMTask

# --student keys -> GPTConfig fields
STUDENT_KEYS = {"layers": "n_layer", "dim": "n_embd", "heads": "n_head", "inner": "n_inner"}


def parse_student(spec: str, teacher: GPTConfig) -> GPTConfig:
    """"layers=2,dim=128[,heads=4][,inner=512]" -> the student's GPTConfig. Unnamed
    settings follow the teacher (heads: the teacher's head width where it divides dim)."""
    fields = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or key not in STUDENT_KEYS:
            raise ValueError(f"--student: '{part.strip()}' is not KEY=VALUE with KEY one of {', '.join(STUDENT_KEYS)}")
        try:
            fields[STUDENT_KEYS[key]] = int(val)
        except ValueError:
            raise ValueError(f"--student: {key} must be a whole number, not '{val.strip()}'") from None
        if fields[STUDENT_KEYS[key]] < 1:
            raise ValueError(f"--student: {key} must be >= 1")
    if not fields:
        raise ValueError('--student is empty: give e.g. "layers=2,dim=128"')
    dim = fields.get("n_embd", teacher.n_embd)
    if "n_head" not in fields:
        fields["n_head"] = max(1, dim // teacher.hd) if dim % teacher.hd == 0 else teacher.n_head
    if dim % fields["n_head"]:
        raise ValueError(f"--student: dim ({dim}) must be a multiple of heads ({fields['n_head']})")
    base = {k: v for k, v in teacher.to_dict().items() if k not in ("arch", "n_inner", "head_dim")}
    return GPTConfig(**{**base, **fields})


class DistillTask(LMTask):
    """LMTask whose loss mixes the teacher's softened outputs with the data loss."""

    def __init__(self, student: GPT, teacher: GPT, data: dict, *, temperature: float = 2.0,
                 alpha: float = 0.9, **kw):
        super().__init__(student, data, **kw)
        self.teacher = teacher.eval().requires_grad_(False).to(self.device)
        self.T, self.alpha = temperature, alpha

    def batch_loss(self) -> torch.Tensor:
        hi = len(self.data["train"]) - self.block - 1
        starts = torch.randint(0, hi + 1, (self.batch,), generator=self.gen).tolist()
        x, y = windows(self.data["train"], starts, self.block)
        x, y = x.to(self.device), y.to(self.device)
        logits, hard = self.model(x, y)
        if self.alpha == 0:
            return hard
        with torch.no_grad():
            t_logits, _ = self.teacher(x)
        V = logits.size(-1)
        soft = F.kl_div(F.log_softmax(logits.float().view(-1, V) / self.T, dim=-1),
                        F.log_softmax(t_logits.float().view(-1, V) / self.T, dim=-1),
                        log_target=True, reduction="batchmean") * self.T ** 2
        return self.alpha * soft + (1 - self.alpha) * hard
