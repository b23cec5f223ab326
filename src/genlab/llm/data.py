"""Fine-tuning data: JSONL files of instructions or of ranked response pairs.

    {"prompt": "...", "response": "..."}                          instruction tuning
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"prompt": "...", "chosen": "...", "rejected": "..."}          preference tuning (DPO)
                                     (+ "system": the system prompt the replies were written under)

A line that is not JSON, or lacks a field, is reported with its line number; with
on_error="skip" it is left out (and counted), with "stop" (the default) the run stops
before anything is written. Every 10th example is held out for validation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.text import load_corpus
from ..data.tokenizer import encoded_corpus
from ..util.errors import GenlabError, check
from .hf import _encode, encode_prompt_text

ROLES = ("system", "user", "assistant")


def _bad(path, n, msg):
    return GenlabError(f"{path}:{n}: {msg}")


def _text(obj, key, path, n):
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise _bad(path, n, f"field '{key}' is missing or not a non-empty string")
    return v


def _parse(obj, path, n) -> tuple[str, dict]:
    """("sft", {"system", "messages"}) or ("dpo", {"prompt", "chosen", "rejected"})."""
    if not isinstance(obj, dict):
        raise _bad(path, n, "not a JSON object")
    if "chosen" in obj or "rejected" in obj:
        pair = {k: _text(obj, k, path, n) for k in ("prompt", "chosen", "rejected")}
        if obj.get("system") is not None:
            pair["system"] = _text(obj, "system", path, n)
        return "dpo", pair
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _bad(path, n, "'messages' must be a non-empty list")
        system, turns = None, []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise _bad(path, n, f"message {i + 1} needs a role ({', '.join(ROLES)}) and a string content")
            if m["role"] == "system":
                if i:
                    raise _bad(path, n, "a system message may only come first")
                system = m["content"]
            else:
                turns.append({"role": m["role"], "content": m["content"]})
        if not turns or turns[-1]["role"] != "assistant":
            raise _bad(path, n, "the last message must be the assistant's (the reply to learn)")
        return "sft", {"system": system, "messages": turns}
    if "prompt" in obj or "response" in obj:
        return "sft", {"system": obj.get("system") if isinstance(obj.get("system"), str) else None,
                       "messages": [{"role": "user", "content": _text(obj, "prompt", path, n)},
                                    {"role": "assistant", "content": _text(obj, "response", path, n)}]}
    raise _bad(path, n, "needs 'prompt' and 'response', 'messages', or 'prompt', 'chosen' and 'rejected'")


def _lines(path, on_error: str, what: str = "") -> tuple[Path, list]:
    if on_error not in ("stop", "skip"):
        raise GenlabError(f"--on-error must be stop or skip, not '{on_error}'")
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"{p}: no such file{what}")
    try:
        return p, p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise GenlabError(f"{p}: not UTF-8 text ({e})") from None


def _json_lines(p: Path, lines: list, parse, on_error: str, warn) -> list:
    """parse(obj, path, line number) of each non-blank line's JSON object; a bad line stops
    with its number, or (on_error="skip") is left out and named in one warning."""
    out, skipped = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(p, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
            out.append(parse(obj, p, n))
        except GenlabError as e:
            if on_error == "stop":
                raise GenlabError(f"{e} (--on-error skip leaves such lines out)") from None
            skipped.append(n)
    if skipped and warn:
        warn(f"{p}: skipped {len(skipped)} bad line(s): {', '.join(map(str, skipped[:10]))}"
             + (" ..." if len(skipped) > 10 else ""))
    return out


def read_jsonl(path, on_error: str = "stop", warn=None) -> tuple[str, list]:
    """(kind, examples) of a JSONL file; kind is "sft" or "dpo" (all lines one kind)."""
    p, lines = _lines(path, on_error)
    kinds: list = []

    def parse(obj, p, n):
        k, ex = _parse(obj, p, n)
        if kinds and k != kinds[0]:
            raise _bad(p, n, f"a {'preference pair' if k == 'dpo' else 'instruction'} among "
                             f"{'preference pairs' if kinds[0] == 'dpo' else 'instructions'} (one kind per file)")
        kinds.append(k)
        return ex
    out = _json_lines(p, lines, parse, on_error, warn)
    if len(out) < 2:
        raise GenlabError(f"{p}: needs at least 2 valid examples, found {len(out)}")
    return kinds[0], out


def split(examples: list) -> tuple[list, list]:
    """(train, held-out): every 10th example held out (at least one)."""
    val = examples[9::10] or examples[-1:]
    held = {id(e) for e in val}
    return [e for e in examples if id(e) not in held], val


def encode_pair(tok, template, system, messages, max_len):
    """(ids, number of prompt tokens) for training on the last assistant turn of
    `messages`, laid out with the chat template and cut to max_len tokens."""
    if hasattr(template, "split_last"):
        prompt, completion = template.split_last(system, messages)
    else:  # genlab's text template: the reply, then its stop string
        prompt = template.render(system, messages[:-1])
        completion = messages[-1]["content"] + template.stop
    p = encode_prompt_text(tok, prompt)
    c = _encode(tok, completion, add_special_tokens=False)
    check(len(p) < max_len, f"a prompt of {len(p)} tokens does not fit the --block-size of {max_len}")
    return (p + c)[:max_len], len(p)


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


def encoded(corpus: str, tok, log) -> dict:
    """The splits of `corpus` in a transformers tokenizer's ids (cached like genlab's own)."""
    return encoded_corpus(load_corpus(corpus), _HFTokenizer(tok), log=log)


class Prompt(str):
    """A user's message with the system prompt it is asked under (`.system`, None: none):
    a str everywhere else (a reward model reads the message alone)."""
    system: str | None = None

    def __new__(cls, text: str, system: str | None = None):
        p = super().__new__(cls, text)
        p.system = system
        return p


def read_prompts(path, on_error: str = "stop", warn=None) -> list:
    """The prompts RLHF samples replies to: a text file with one prompt per line (blank
    lines ignored), or a JSONL file whose lines each hold a non-empty "prompt" string
    (instruction and preference files qualify) and optionally a "system" prompt to ask it
    under (a Prompt). A bad JSONL line is reported with its number (skipped with
    on_error="skip")."""
    p, lines = _lines(path, on_error, " (RLHF's --data is a file of prompts)")
    if p.suffix != ".jsonl":
        out = [line.strip() for line in lines if line.strip()]
    else:
        def parse(obj, p, n):
            if not isinstance(obj, dict):
                raise _bad(p, n, "not a JSON object")
            system = _text(obj, "system", p, n) if obj.get("system") is not None else None
            return Prompt(_text(obj, "prompt", p, n).strip(), system)
        out = _json_lines(p, lines, parse, on_error, warn)
    if len(out) < 2:
        raise GenlabError(f"{p}: needs at least 2 prompts, found {len(out)}")
    return out


def record_ranking(path, prompt: str, first: str, second: str, choice: str, **extra) -> dict:
    """One person's ranking of two replies to `prompt` ("first", "second" or "tie"), appended
    to the JSONL file `path` as {"prompt", "chosen", "rejected", **extra} -- the form
    `genlab reward train` and `genlab finetune --method dpo` read -- and fsynced. A tie is no
    preference pair: it goes to the sibling file PATH.ties.jsonl. Returns how many pairs
    and ties the files then hold."""
    check(choice in ("first", "second", "tie"), f"choice must be first, second or tie, not {choice!r}")
    for name, v in (("prompt", prompt), ("first", first), ("second", second)):
        check(isinstance(v, str) and v.strip() != "", f"the {name} reply is empty" if name != "prompt"
              else "the prompt is empty")
    p = Path(path)
    ties = p.with_name(p.stem + ".ties.jsonl")
    if choice == "tie":
        _append_line(ties, {"prompt": prompt, "responses": [first, second], **extra})
    else:
        chosen, rejected = (first, second) if choice == "first" else (second, first)
        _append_line(p, {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra})
    return {"pairs": _count_lines(p), "ties": _count_lines(ties)}


def _append_line(path: Path, obj: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise GenlabError(f"{path}: cannot write it ({e.strerror or e}); the lines before it are kept") from None


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
