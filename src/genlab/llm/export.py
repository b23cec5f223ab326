"""A genlab GPT run as a Hugging Face GPT-2 model (`genlab export RUN --format hf`).

genlab's GPT is GPT-2's architecture (pre-norm blocks, learned positions, tied head,
exact GELU), so the weights map one to one: GPT-2's Conv1D layers store the transposed
matrix, and a model trained without biases gets zero biases. The tokenizer becomes a
`tokenizers` file (char-level: one token per character; bpe: as trained), and the run's
chat template a Jinja chat template. The exported directory gives the same logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import GenlabError
from ..runs import atomic_path


def _jinja(template) -> str:
    """genlab's ChatTemplate written as a Jinja chat template (the same text)."""
    def part(s, slot, var):
        pre, post = s.split(slot)
        return f"{{{{ {json.dumps(pre)} + {var} + {json.dumps(post)} }}}}"
    return ("{% for m in messages %}"
            "{% if m['role'] == 'system' %}" + part(template.system, "{system}", "m['content']") +
            "{% elif m['role'] == 'user' %}" + part(template.user, "{user}", "m['content']") +
            "{% else %}" + part(template.assistant, "{assistant}", "m['content']") + "{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}" + "{{ " + json.dumps(template.reply_prefix) + " }}"
            "{% endif %}")


def hf_tokenizer(tok):
    """genlab's tokenizer as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    if tok.kind == "char":
        t = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tok.chars)}, unk_token=None))
        t.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        t.decoder = decoders.Fuse()
    else:
        t = Tokenizer.from_str(json.dumps(tok.to_json()["tokenizer"]))
    return PreTrainedTokenizerFast(tokenizer_object=t, clean_up_tokenization_spaces=False)


def gpt_to_hf(run):
    """(GPT2LMHeadModel, tokenizer) with the weights of the LMRun `run`."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = run.model.cfg
    if run.config.get("compress", {}).get("quantize"):
        raise GenlabError(f"{run.path}: an int8 model; GPT-2 in transformers holds float weights "
                          "(export the run it was compressed from)")
    if c.hd * c.n_head != c.n_embd:
        raise GenlabError(f"{run.path}: attention heads were pruned ({c.n_head} heads of {c.hd}, "
                          f"width {c.n_embd}); GPT-2 needs n_head x head width = n_embd")
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                     n_head=c.n_head, n_inner=c.hidden, activation_function="gelu",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = GPT2LMHeadModel(cfg)
    ours = run.model.state_dict()
    theirs = model.state_dict()
    new = {}
    for k, v in theirs.items():
        if k == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        src = ours.get(k)
        if src is None:  # a bias genlab's model does not have: zero, as it is in effect
            if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
                continue  # GPT-2's causal-mask buffers (older transformers)
            if not k.endswith(".bias"):
                raise GenlabError(f"{run.path}: cannot map GPT-2 weight {k}")
            new[k] = torch.zeros_like(v)
        elif k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) and ".h." in k:
            new[k] = src.t().contiguous()  # Conv1D holds (in, out)
        else:
            new[k] = src.clone()
    missing = model.load_state_dict(new, strict=False)
    bad = [k for k in missing.missing_keys if k != "lm_head.weight"]
    if bad or missing.unexpected_keys:
        raise GenlabError(f"{run.path}: export mismatch (missing {bad[:3]}, unexpected {missing.unexpected_keys[:3]})")
    model.tie_weights()
    tok = hf_tokenizer(run.tokenizer)
    tok.chat_template = _jinja(run.template)
    return model.eval(), tok


def export_hf(run_path, out, overwrite: bool = False, log=print) -> Path:
    """Write the run at `run_path` as a Hugging Face directory at `out`."""
    from ..lmrun import LMRun
    from .hf import _quiet_transformers
    _quiet_transformers()
    run = LMRun(run_path)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GenlabError(f"{out}: exists and is not empty (use --overwrite or another --out)")
    model, tok = gpt_to_hf(run)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    with atomic_path(out / "genlab-source.json") as tmp:
        Path(tmp).write_text(json.dumps({"exported_from": str(run.path), "architecture": "GPT2LMHeadModel",
                                         "tokenizer": run.tokenizer.kind,
                                         "chat_stop": run.template.stop}, indent=2))
    log(f"exported {run.path} as a Hugging Face GPT-2 model -> {out}")
    return out
