"""Sampling replies in batches from a Hugging Face chat model: what reward-model
comparisons and on-policy RL (train/rlhf.py) draw. Each prompt is laid out with the
model's chat template; prompts are left-padded and decoded together with the KV cache."""
from __future__ import annotations

import torch

from ..util.errors import check
from .hf import HFModel


def chat_prompt(model, prompt: str) -> str:
    """`prompt` as the user's turn of the model's chat layout, ready for the reply (under
    its system prompt, for a data.Prompt that has one)."""
    chat = model.new_chat(getattr(prompt, "system", None))
    chat.add("user", prompt)
    return chat.prompt()


def check_fit(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt that leaves no room in the context for the reply."""
    check(prompt_tokens + max_new_tokens <= model.context,
          f"a prompt of {prompt_tokens} tokens in the chat layout and {max_new_tokens} new tokens do not fit the "
          f"model's context of {model.context} tokens")


def cut_reply(model, text: str) -> str:
    """The reply up to the template's stop string (genlab's text templates)."""
    stop = getattr(model.template, "stop", None)
    return (text.split(stop)[0] if stop else text).strip()


@torch.no_grad()
def sample_responses(model, prompts: list, max_new_tokens: int = 48, seed: int = 0, batch: int = 16,
                     temperature: float = 1.0, generator: torch.Generator | None = None) -> tuple[list, list]:
    """One reply per prompt, plain sampling at `temperature` (from `generator`, else a
    fresh one seeded with `seed`). Returns (replies, [(prompt ids, reply ids)]): the reply
    ids end with the end-of-turn token, or, for genlab's text templates (a stop string, no
    end-of-turn token), with the tokens that complete the stop string -- what SFT trains
    the model to write, so that on-policy RL scores the reply and its end (and not the
    text sampled after it)."""
    check(isinstance(model, HFModel), "sampling in batches needs a Hugging Face model")
    tok, hf = model.tokenizer, model.model
    dev = model.device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    stop = None if model.eos else getattr(model.template, "stop", None)
    texts, seqs = [], []
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch):
        chunk = [model.encode_prompt(chat_prompt(model, p)) for p in prompts[i:i + batch]]
        check_fit(model, max(len(c) for c in chunk), max_new_tokens)
        T = max(len(c) for c in chunk)
        ids = torch.tensor([[pad] * (T - len(c)) + c for c in chunk], device=dev)          # left padding
        mask = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in chunk], device=dev)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        out = [[] for _ in chunk]
        cache, cur, pos = None, ids, (mask.cumsum(-1) - 1).clamp(min=0)
        for _ in range(max_new_tokens):
            o = hf(input_ids=cur, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
            cache = o.cache
            probs = torch.softmax(o.logits[:, -1].float().cpu() / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=g).squeeze(-1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    out[j].append(t)
                    # (each token is at least one character: the stop string, if just
                    # completed, lies in the last len(stop) + 1 tokens)
                    done[j] = t in model.eos or bool(stop and stop in model.decode(out[j][-(len(stop) + 1):]))
            if bool(done.all()):
                break
            cur = nxt.unsqueeze(-1).to(dev)
            mask = torch.cat([mask, torch.ones(len(chunk), 1, dtype=mask.dtype, device=dev)], 1)
            pos = pos[:, -1:] + 1
        for c, o_ in zip(chunk, out):
            texts.append(cut_reply(model, model.decode(o_)))
            seqs.append((c, o_))
    return texts, seqs
