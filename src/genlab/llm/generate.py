"""What every language model genlab can talk to shares: streaming generation with the
same sampling options, chat with a hidden system prompt, and the checks on their input.

`TextModel` is the base of a genlab GPT run (`LMRun`) and of a Hugging Face causal LM
(`HFModel`, for SmolLM2, any local HF directory and fine-tuned runs). A subclass supplies
`encode_prompt`, `decode`, `context`, `template` and `_token_ids` (the token-by-token
generator); everything the user sees is written once, here.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..data.text import read_text_file
from ..metrics.text import sliding_loss, text_scores
from ..util.errors import GenlabError, check as _check
from ..util.options import Opt, at_least, open_range
from .chat import Chat

# The sampling options of every text model (validated here, offered by the CLI).
MAX_NEW_TOKENS = Opt("max_new_tokens", int, check=at_least(1), label="--max-new-tokens")
TEMPERATURE = Opt("temperature", float, 0.8, check=at_least(0), label="--temperature", help="0 = greedy (default 0.8)")
TOP_K = Opt("top_k", int, 200, check=at_least(1), label="--top-k",
            help="sample from the k most likely tokens (default 200)")
TOP_P = Opt("top_p", float, check=open_range(0, 1), label="--top-p",
            help="nucleus sampling: the smallest set of tokens with this much probability")
GEN_SEED = Opt("seed", int, help="same seed, same text (default: random)")
SYSTEM = Opt("system", str, help="a system prompt, placed as the chat template says")
GENERATION_OPTIONS = (SYSTEM, MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P, GEN_SEED)
NUM_SAMPLES = Opt("num_samples", int, 1, check=at_least(1), label="--num-samples",
                  help="continuations of the prompt, decoded together as one batch (default 1)")


def stats_line(stats: dict) -> str:
    """`500 tokens in 0.21 s: 2380.9 tokens/s, first token 3.1 ms (...)`: the decode after the
    first token, with the prompt's processing (up to the first token) apart. A batch of
    sequences is timed as a whole, prompt included."""
    n, dt = stats["decode_tokens"], stats["decode_s"]
    rate = f"{n / dt:.1f} tokens/s" if dt > 0 and n else "no decode steps"
    if stats.get("rows", 1) > 1:
        return (f"{n} tokens in {dt:.2f} s: {rate} ({stats['rows']} sequences of a {stats['prompt_tokens']}-token "
                f"prompt decoded at once, {n / stats['rows'] / max(dt, 1e-9):.1f} tokens/s each, prompt "
                f"processing included; {stats['path']})")
    first = stats["first_token_s"]
    return (f"{n} tokens in {dt:.2f} s: {rate}, first token {first * 1e3:.1f} ms (prompt: "
            f"{stats['prompt_tokens']} tokens, {stats['prompt_tokens'] / max(first, 1e-9):.0f} tokens/s "
            f"up to the first token; {stats['path']})")


def read_eval_file(text) -> tuple[str, str]:
    """(text, source) of a UTF-8 file to score; a missing or empty file is a clear error."""
    p = Path(text)
    _check(p.is_file(), f"{p}: no such file")
    raw = read_text_file(p)
    _check(raw.strip() != "", f"{p}: the file is empty")
    return raw, str(p)


class TextModel:
    template = None     # a ChatTemplate-like object: render(system, messages), stop
    context: int = 0    # tokens the model reads at once
    last_stats: dict | None = None  # timings of the latest generation (see stats_line)

    # -- what a subclass supplies ---------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list:
        raise NotImplementedError

    def decode(self, ids: list) -> str:
        raise NotImplementedError

    def _token_ids(self, ids: list, max_new_tokens: int, temperature: float, top_k, top_p,
                   generator: torch.Generator, use_cache: bool) -> Iterator[int]:
        raise NotImplementedError

    def _token_rows(self, ids: list, max_new_tokens: int, num: int, temperature: float, top_k, top_p,
                    generator: torch.Generator) -> list:
        """`num` continuations of `ids` (lists of token ids). A model with a batched decoder
        decodes them together; this default decodes them one after another."""
        return [list(self._token_ids(list(ids), max_new_tokens, temperature, top_k, top_p, generator, True))
                for _ in range(num)]

    def decode_path(self, use_cache: bool = True) -> str:
        """Which decoder generation uses (what --stats names)."""
        return "KV cache" if use_cache else "no cache"

    def _fast_note(self) -> str | None:
        """A one-time note when this model has no fast decoder and a slower path decodes it."""
        return None

    def _window_note(self, n_prompt: int, max_new_tokens: int, use_cache: bool) -> str | None:
        """A note for the user when prompt + new tokens exceed the context (None: fine).
        Every model here slides its window the same way: with the KV cache, once the window
        is full it is refilled with its most recent three quarters."""
        if n_prompt + max_new_tokens <= self.context:
            return None
        return (f"prompt + new tokens ({n_prompt} + {max_new_tokens}) exceed the context of "
                f"{self.context} tokens: the window slides (the model sees only the most recent "
                f"{self.context}{' (a quarter less right after a slide, with the KV cache)' if use_cache else ''})")

    def scoring_module(self):
        """The network as forward(idx) -> (logits (B, T, vocab), _): what scoring reads."""
        raise NotImplementedError

    def encode_plain(self, text: str) -> list:
        """Token ids of a piece of text inside a longer one (no special tokens added)."""
        return self.encode_prompt(text)

    def special_ids(self) -> set:
        """Token ids that are not text (BOS, EOS, chat markers)."""
        return set()

    def token_embeddings(self) -> torch.Tensor:
        """The input embedding matrix (vocab, dim)."""
        raise NotImplementedError

    def logits_from_embeddings(self, embeds: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token embeddings (B, T, dim) in place of token ids."""
        raise NotImplementedError

    @property
    def chat_model(self) -> bool:
        """Does the model know a chat layout (a system prompt, turns)?"""
        return self.template is not None

    # -- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def token_nll(self, ids: list, start: int = 1) -> torch.Tensor:
        """-log p(ids[t] | ids[:t]) for t = start .. len(ids) - 1 (nats), one forward pass
        (the most recent `context` tokens)."""
        ids = list(ids)[-self.context:]
        start = max(1, start - max(0, len(ids) - self.context))
        x = torch.tensor([ids], device=self.device)
        logits, _ = self.scoring_module()(x)
        lp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        nll = -lp.gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)
        return nll[start - 1:].cpu()

    @torch.no_grad()
    def continue_logits(self, prefix: list, rest: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) at the positions of `rest` (B, T), each row read after the
        same `prefix` token ids (models with a KV cache compute the prefix once)."""
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(rest.shape[0], -1), rest], dim=1)
        return self.scoring_module()(ids.to(self.device))[0][:, len(prefix):]

    @torch.no_grad()
    def next_token_logprobs(self, text: str) -> torch.Tensor:
        """log p(next token | text) over the vocabulary."""
        ids = self.encode_prompt(text)[-self.context:]
        logits, _ = self.scoring_module()(torch.tensor([ids], device=self.device))
        return torch.log_softmax(logits[0, -1].float(), dim=-1).cpu()

    # -- generation ----------------------------------------------------------------------------
    def stream(self, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8,
               top_k: int | None = 200, top_p: float | None = None, seed: int | None = None,
               use_cache: bool = True, stop: str | None = None, warn=None) -> Iterator[str]:
        """Yield the generated text piece by piece as tokens come (greedy at temperature 0).
        With `stop`, generation ends where that string appears (it is not yielded)."""
        for opt, v in ((MAX_NEW_TOKENS, max_new_tokens), (TEMPERATURE, temperature), (TOP_K, top_k), (TOP_P, top_p)):
            opt.validate(v)
        _check(max_new_tokens is not None, "--max-new-tokens must be given")
        ids = self.encode_prompt(prompt)
        for note in (self._window_note(len(ids), max_new_tokens, use_cache), use_cache and self._fast_note()):
            if warn and note:
                warn(note)
        g = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        pending, held = [], ""
        stats = self.last_stats = {"prompt_tokens": len(ids), "decode_tokens": 0, "decode_s": 0.0,
                                   "first_token_s": 0.0, "path": self.decode_path(use_cache)}
        t0 = t1 = time.perf_counter()
        for i, tok in enumerate(self._token_ids(ids, max_new_tokens, temperature, top_k, top_p, g, use_cache)):
            now = time.perf_counter()
            if i == 0:
                stats["first_token_s"], t1 = now - t0, now
            else:
                stats["decode_tokens"], stats["decode_s"] = i, now - t1
            pending.append(tok)
            piece = self.decode(pending)
            if piece.endswith("\ufffd") and len(pending) < 8:
                continue  # a byte-level token ended mid-character: wait for the rest
            pending = []
            if stop is not None:
                held += piece
                cut = held.find(stop)
                if cut >= 0:
                    if held[:cut]:
                        yield held[:cut]
                    return
                # hold back what could be the start of the stop string
                keep = next((k for k in range(min(len(stop) - 1, len(held)), 0, -1)
                             if stop.startswith(held[-k:])), 0)
                piece, held = held[:len(held) - keep], held[len(held) - keep:]
            if piece:
                yield piece
        if held:
            yield held

    def generate(self, prompt: str, max_new_tokens: int = 500, **kw) -> str:
        """The generated continuation of `prompt` (the prompt not included)."""
        return "".join(self.stream(prompt, max_new_tokens, **kw))

    def generate_many(self, prompt: str, num_samples: int, max_new_tokens: int = 500, temperature: float = 0.8,
                      top_k: int | None = 200, top_p: float | None = None, seed: int | None = None,
                      stop: str | None = None, warn=None) -> list[str]:
        """`num_samples` continuations of `prompt`, decoded as one batch where the model has
        a batched decoder (genlab's GPT, Llama-shaped models); each cut at `stop`."""
        NUM_SAMPLES.validate(num_samples)
        for opt, v in ((MAX_NEW_TOKENS, max_new_tokens), (TEMPERATURE, temperature), (TOP_K, top_k), (TOP_P, top_p)):
            opt.validate(v)
        ids = self.encode_prompt(prompt)
        note = self._window_note(len(ids), max_new_tokens, True)
        if warn and note:
            warn(note)
        g = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        t0 = time.perf_counter()
        rows = self._token_rows(ids, max_new_tokens, num_samples, temperature, top_k, top_p, g)
        dt = time.perf_counter() - t0
        self.last_stats = {"prompt_tokens": len(ids), "decode_tokens": sum(len(r) for r in rows), "decode_s": dt,
                           "rows": num_samples, "path": self.decode_path(True) + ", batched"}
        texts = [self.decode(r) for r in rows]
        return [t[:t.find(stop)] if stop and stop in t else t for t in texts]

    # -- chat ---------------------------------------------------------------------------
    def new_chat(self, system: str | None = None) -> Chat:
        if system is not None:
            _check(system.strip() != "", "--system is empty: give the system prompt's text or leave it out")
            self.encode_prompt(system)  # refuse text the model cannot read, up front
        return Chat(self.template, system)

    def reply_stream(self, chat: Chat, user: str, max_new_tokens: int = 300, **kw) -> Iterator[str]:
        """Add the user's turn, stream the model's reply (ending at the template's stop
        string or the model's end-of-turn token), then add the reply to the transcript (a
        reply whose reader stopped early: as far as it went)."""
        _check(isinstance(user, str) and user.strip() != "", "empty message")
        chat.add("user", user)
        parts, happened = [], True
        try:
            for piece in self.stream(chat.prompt(), max_new_tokens, stop=chat.template.stop, **kw):
                parts.append(piece)
                yield piece
        except GenlabError:
            happened = False
            chat.messages.pop()  # the turn did not happen
            raise
        finally:
            if happened:  # a reply stopped early (the reader left) is kept as far as it went
                chat.add("assistant", "".join(parts).strip())

    def reply(self, chat: Chat, user: str, **kw) -> str:
        return "".join(self.reply_stream(chat, user, **kw)).strip()

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, module, ids, raw: str, block: int, source: str, stride: int | None = None,
               batch: int = 32, log=None) -> dict:
        """Loss (nats per token), perplexity and bits per character of the token ids `ids`
        (the encoding of `raw`) under `module` (forward(idx) -> (logits, _)), every token
        scored once with a sliding window of `block` tokens (stride: half of it)."""
        ids = np.asarray(ids)
        _check(len(ids) >= 2, f"{source}: too short to evaluate (needs at least two tokens)")
        bar = None
        if log is not None and sys.stderr.isatty():
            bar = tqdm(total=None, unit="window", leave=False, file=sys.stderr)
        try:
            loss, n = sliding_loss(module, ids, block, stride=stride, batch=batch, device=self.device,
                                   progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        chars = len(raw) - len(self.decode(ids[:1].tolist()))
        return {"kind": "eval", "family": "lm", "source": source, "tokens_scored": n,
                **text_scores(loss, n, chars), "context": block, "stride": stride or block // 2}
