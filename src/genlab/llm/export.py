"""A genlab GPT as a Hugging Face GPT-2 model (what `genlab export RUN --format hf` writes).

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
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ..util.errors import GenlabError
from ..util.io import write_text_atomic


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
    from transformers import PreTrainedTokenizerFast  # heavy: only when exporting
    if tok.kind == "char":
        t = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tok.chars)}, unk_token=None))
        t.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        t.decoder = decoders.Fuse()
    else:
        t = Tokenizer.from_str(json.dumps(tok.to_json()["tokenizer"]))
    return PreTrainedTokenizerFast(tokenizer_object=t, clean_up_tokenization_spaces=False)


def gpt_to_hf(run):
    """(GPT2LMHeadModel, tokenizer) with the weights of a genlab GPT run (anything with
    .model, .config, .path, .tokenizer and .template, as the lm family's LMRun has)."""
    from transformers import GPT2Config, GPT2LMHeadModel  # heavy: only when exporting
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


def write_hf(model, tok, out, source: dict, overwrite: bool = False) -> Path:
    """Save a transformers model and tokenizer as a Hugging Face directory at `out`, with
    genlab-source.json recording where it came from."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GenlabError(f"{out}: exists and is not empty (use --overwrite or another --out)")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_text_atomic(out / "genlab-source.json", json.dumps(source, indent=2))
    return out
