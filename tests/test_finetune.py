"""Foundation models and fine-tuning: a genlab GPT exported to Hugging Face (same logits,
same generation), LoRA and full fine-tuning on real text (loss falls, PEFT adapter that
peft itself loads, merge = base + adapter, bit-exact resume), instruction tuning that
changes replies, DPO that raises the chosen-over-rejected margin, a Bradley-Terry reward
model, SmolLM2 out of the box, and every bad input as one clear line."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

import genlab
from conftest import _assert_same_weights, _expect_user_error, _snapshot, cli
from genlab.api import finetune
from genlab.errors import GenlabError
from genlab.families.finetune import load_finetuned
from genlab.families.lm import LMRun
from genlab.llm import data as ftdata
from genlab.llm.data import encode_pair as _encode_pair
from genlab.train.finetune import pad_batch as _pad

TINY = dict(recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16,
            lr=5e-3, warmup_iters=20, eval_interval=100, log_interval=25)
FT = dict(progress=False, log=lambda *a: None, block_size=64, eval_interval=20, log_interval=10,
          eval_examples=16)
quiet = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A small char-level GPT trained on Shakespeare for 300 steps (about 10 s)."""
    out = tmp_path_factory.mktemp("ftbase") / "run"
    genlab.train("lm", corpus="shakespeare", out=out, max_iters=300, progress=False, log=lambda *a: None, **TINY)
    return out


@pytest.fixture(scope="module")
def exported(base_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "hf"
    genlab.export(base_run, out, **quiet)
    return out


@pytest.fixture(scope="module")
def verses(base_run, tmp_path_factory) -> str:
    """text:PATH of King James verses (characters the Shakespeare model knows): new text
    for a model trained on plays; its last 10% is held out."""
    from genlab.data.text import load_corpus
    known = set(LMRun(base_run).tokenizer.chars)
    lines = [ln.split(" ", 1)[1] for _, t in load_corpus("kjv").docs[:5] for ln in t.splitlines()
             if ln[:1].isdigit() and " " in ln]
    p = tmp_path_factory.mktemp("verses") / "verses.txt"
    p.write_text("\n".join(ln for ln in lines if set(ln) <= known) + "\n")
    return f"text:{p}"


@pytest.fixture(scope="module")
def lora_run(base_run, verses, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    finetune(str(base_run), verses, out, method="lora", max_iters=40, lr=5e-3, lora={"r": 4}, **FT)
    return out


def _number_jsonl(path: Path, n: int = 40, bad_lines: dict | None = None) -> Path:
    lines = [json.dumps({"prompt": f"Say {i}.", "response": f"The number is {i}, my lord."}) for i in range(n)]
    for k, v in (bad_lines or {}).items():
        lines.insert(k - 1, v)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- Hugging Face export -------------------------------------------------------------------

def test_export_gives_a_gpt2_directory_with_the_same_logits_and_tokens(base_run, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tok = AutoTokenizer.from_pretrained(exported)
    run = LMRun(base_run)
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    ids = tok(text)["input_ids"]
    assert ids == run.tokenizer.encode(text)
    assert tok.decode(ids) == text
    x = torch.tensor([ids])
    with torch.no_grad():
        theirs = model(x).logits
        ours, _ = run.model(x)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    # the chat template travels as a Jinja template that renders the same text
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    chat = run.new_chat("Be brief.")
    chat.add("user", "Who art thou?")
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == chat.prompt()


def test_hf_model_generates_what_the_genlab_run_generates(base_run, exported):
    run = LMRun(base_run)
    hf = genlab.load_model(str(exported), **quiet)
    want = run.generate("JULIET:", 40, temperature=0)
    assert hf.generate("JULIET:", 40, temperature=0) == want
    assert hf.generate("JULIET:", 40, temperature=0, use_cache=False) == want
    # past the context of 64 tokens the window slides the same way, with and without the cache
    for cache in (True, False):
        assert (hf.generate("JULIET:", 120, temperature=0, use_cache=cache)
                == run.generate("JULIET:", 120, temperature=0, use_cache=cache))
    assert hf.generate("JULIET:", 30, temperature=0.8, seed=3) == hf.generate("JULIET:", 30, temperature=0.8, seed=3)


# -- fine-tuning on a corpus -----------------------------------------------------------------

def test_lora_on_a_new_corpus_lowers_its_held_out_loss(base_run, lora_run):
    cfg = json.loads((lora_run / "config.json").read_text())
    assert cfg["family"] == "finetune" and cfg["method"] == "lora"
    assert cfg["trainable_params"] < 0.1 * cfg["total_params"]
    vals = [r["val_loss"] for r in map(json.loads, (lora_run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "val"]
    before = genlab.load_model(str(base_run), **quiet)  # the char GPT, scored the same way below
    ft = load_finetuned(lora_run, **quiet)
    ev = ft.evaluate()  # by default on the held-out part of the fine-tuning text
    assert "held-out" in ev["source"] and ev["val_loss"] > 0
    from genlab.data.text import load_corpus
    held = lora_run.parent / "held.txt"
    held.write_text(load_corpus(cfg["data"]["source"]).text("val"))
    assert ft.evaluate(text=str(held))["val_loss"] < before.evaluate(text=str(held))["val_loss"] - 0.05
    assert vals[-1] < vals[0] or min(vals) < vals[0]
    # model.safetensors holds the adapter only
    from safetensors.torch import load_file
    keys = list(load_file(str(lora_run / "model.safetensors")))
    assert keys and all("lora_" in k for k in keys)


def test_adapter_is_in_peft_format_and_merge_gives_the_same_outputs(lora_run, exported, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    adapter = lora_run / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    x = torch.tensor([[5, 9, 13, 2, 7, 1, 30, 31]])
    base = AutoModelForCausalLM.from_pretrained(exported).eval()
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()  # peft itself reads our adapter
    with torch.no_grad():
        want = peft_model(x).logits
    merged_dir = genlab.merge(lora_run, tmp_path / "merged", **quiet)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        got = merged(x).logits
        ours = load_finetuned(lora_run, **quiet).model(x).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert torch.allclose(ours, want, atol=1e-4)
    assert not torch.allclose(want, AutoModelForCausalLM.from_pretrained(exported)(x).logits, atol=1e-3)


def test_full_finetune_resume_is_bit_exact(base_run, verses, tmp_path):
    kw = dict(method="full", lr=1e-3, schedule="constant", **FT)  # the same schedule for 15 or 30 steps
    finetune(str(base_run), verses, tmp_path / "a", max_iters=30, **kw)
    finetune(str(base_run), verses, tmp_path / "b", max_iters=15, **kw)
    finetune(str(base_run), verses, tmp_path / "b", resume=True, max_iters=30, progress=False, log=lambda *a: None)
    from safetensors.torch import load_file
    last = [load_file(str(tmp_path / r / "last.safetensors")) for r in ("a", "b")]
    _assert_same_weights(*last)
    assert not torch.equal(last[0]["transformer.h.0.mlp.c_fc.weight"],
                           LMRun(base_run).model.transformer.h[0].mlp.c_fc.weight.detach().t())


# -- instructions and preferences ---------------------------------------------------------------

def test_instruction_tuning_learns_the_replies_and_masks_the_prompt(base_run, tmp_path):
    data = _number_jsonl(tmp_path / "numbers.jsonl")
    base = genlab.load_model(str(base_run), **quiet)
    before = base.reply(base.new_chat(), "Say 7.", temperature=0, max_new_tokens=30)
    ft = finetune(str(base_run), str(data), tmp_path / "sft", method="full", max_iters=60, lr=1e-3, **FT)
    after = ft.reply(ft.new_chat(), "Say 7.", temperature=0, max_new_tokens=30)
    assert "The number is" not in before
    assert after.startswith("The number is"), after
    # loss only on the reply: the prompt's labels are -100
    ids, k = _encode_pair(ft.tokenizer, ft.template, None, [{"role": "user", "content": "Say 1."},
                                                             {"role": "assistant", "content": "One."}], 64)
    _, labels, mask = _pad([ids], [k], 0)
    assert (labels[0, :k] == -100).all() and (labels[0, k:] != -100).all() and mask.sum() == len(ids)
    assert ft.tokenizer.decode(ids[k:]) == "One." + ft.template.stop


def test_dpo_raises_the_margin_of_chosen_over_rejected(base_run, tmp_path):
    rows = [{"prompt": f"Speak of {w}.", "chosen": f"Thou speakest of {w}, and I hear thee.",
             "rejected": f"You talk about {w} and I listen to you."}
            for w in ("the sea", "the king", "bread", "wine", "fire", "gold", "a river", "the moon",
                      "a tree", "the wind", "rain", "a stone", "the field", "the night", "the sun",
                      "a star", "the earth", "war", "peace", "love")]
    p = tmp_path / "prefs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft = finetune(str(base_run), str(p), tmp_path / "dpo", method="lora", max_iters=30, lr=5e-3, beta=0.1, **FT)
    vals = [r for r in map(json.loads, (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "val"]
    assert vals[-1]["reward_accuracy"] == 1.0 and vals[-1]["reward_margin"] > 0
    assert ft.summary["best_val_loss"] < 0.69  # log 2: where DPO starts
    cfg = json.loads((tmp_path / "dpo" / "config.json").read_text())
    assert cfg["data"]["objective"] == "dpo"


def test_reward_model_learns_a_register_from_pairs(tmp_path):
    from genlab.data.text import load_corpus
    from genlab.families.reward import RewardModel, train_reward
    kjv = [ln.split(" ", 1)[1] for _, t in load_corpus("kjv").docs[:3] for ln in t.splitlines()
           if ln[:1].isdigit() and 40 < len(ln) < 160][:60]
    austen = [s.strip() + "." for _, t in load_corpus("austen").docs[:1] for s in t.split(".")
              if 40 < len(s.strip()) < 160][:60]
    rows = [{"prompt": "Say something.", "chosen": a, "rejected": b} for a, b in zip(kjv, austen)]
    p = tmp_path / "prefs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = train_reward(p, tmp_path / "rm", **quiet)
    assert rm.config["val_accuracy"] >= 0.8
    again = RewardModel(tmp_path / "rm", embedder=rm.embed)
    s = again.score(["Say something."] * 2, ["And the LORD spake unto Moses, saying,",
                                             "She was delighted with the ball and the company."])
    assert s[0] > s[1]


# -- SmolLM2, the built-in foundation model ------------------------------------------------------

def test_smollm2_lists_generates_and_chats_with_its_chat_template():
    r = cli("models", "list")
    assert r.returncode == 0 and "smollm2" in r.stdout
    r = cli("generate", "smollm2", "--prompt", "The capital of France is", "--max-new-tokens", "6",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    r = cli("chat", "smollm2", "--system", "You are a pirate.", "--max-new-tokens", "8", "--temperature", "0",
            input_text="/prompt\nHello!\n")
    assert r.returncode == 0, r.stderr
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in r.stdout
    assert r.stdout.count("<|im_start|>assistant") == 1 and len(r.stdout.strip().splitlines()) >= 3


# -- bad input: one line, exit 2, nothing written lost ---------------------------------------------

def test_jsonl_errors_name_the_line_and_skip_works(tmp_path):
    bad = _number_jsonl(tmp_path / "bad.jsonl", n=12, bad_lines={3: "{not json", 6: json.dumps({"prompt": "x"})})
    with pytest.raises(GenlabError, match=r"bad.jsonl:3: not valid JSON"):
        ftdata.read_jsonl(bad)
    notes = []
    kind, ex = ftdata.read_jsonl(bad, on_error="skip", warn=notes.append)
    assert kind == "sft" and len(ex) == 12 and "3, 6" in notes[0]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(GenlabError, match=r"missing.jsonl:2: field 'response'"):
        ftdata.read_jsonl(missing)


def test_cli_bad_inputs_are_one_line_and_write_nothing(base_run, exported, lora_run, tmp_path, cli_here):
    out = tmp_path / "out"
    bad = _number_jsonl(tmp_path / "bad.jsonl", n=12, bad_lines={4: "[1, 2"})
    _expect_user_error(cli_here("finetune", base_run, "--data", bad, "--out", out), "bad.jsonl:4", "--on-error skip")
    assert not out.exists()
    # a directory that is not a model
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_user_error(cli_here("generate", empty, "--prompt", "x"), "not a model")
    # weights only as a pickle: refused, never unpickled
    pick = tmp_path / "pickled"
    shutil.copytree(exported, pick)
    (pick / "model.safetensors").rename(pick / "pytorch_model.bin")
    _expect_user_error(cli_here("generate", pick, "--prompt", "x"), "pickled", "safetensors")
    # a tokenizer from another model
    mixed = tmp_path / "mixed"
    shutil.copytree(exported, mixed)
    from genlab.data.text import load_corpus
    from genlab.data.tokenizer import BPETokenizer
    from genlab.llm.export import hf_tokenizer
    big = BPETokenizer.train([load_corpus("kjv").text("train")[:200_000]], vocab_size=300)
    hf_tokenizer(big).save_pretrained(mixed)
    _expect_user_error(cli_here("generate", mixed, "--prompt", "x"), "tokenizer", "another model")
    # a model too large for the memory left: said before loading
    _expect_user_error(cli_here("generate", exported, "--prompt", "x", env={"GENLAB_MEMORY_LIMIT": "1000"}),
                       "memory")
    huge = tmp_path / "huge"
    shutil.copytree(exported, huge)
    header = json.dumps({"w": {"dtype": "F32", "shape": [200_000, 200_000], "data_offsets": [0, 0]}}).encode()
    (huge / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    _expect_user_error(cli_here("generate", huge, "--prompt", "x"), "GiB of memory")
    # a Hub id without a network
    _expect_user_error(cli_here("generate", "someone/some-model", "--prompt", "x", env={"HF_HUB_OFFLINE": "1"}),
                       "no network")
    # an adapter for a different base model
    other = tmp_path / "other-base"
    genlab.train("lm", corpus="shakespeare", out=other, max_iters=5, progress=False, log=lambda *a: None,
                 **{**TINY, "n_embd": 32})
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "adapter", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(other)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    _expect_user_error(cli_here("generate", adapter, "--prompt", "x"), "different base model")
    # an existing run is never clobbered
    before = _snapshot(lora_run)
    _expect_user_error(cli_here("finetune", base_run, "--data", "shakespeare", "--out", lora_run), "already exists")
    # a corpus with characters the char-level model cannot read
    _expect_user_error(cli_here("finetune", base_run, "--data", "kjv", "--out", out, "--max-iters", "1"),
                       "cannot encode")
    assert not (out / "model.safetensors").exists()
    assert _snapshot(lora_run) == before


def test_cli_export_finetune_merge_generate_eval(base_run, tmp_path):
    r = cli("export", base_run, "--format", "hf", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    data = _number_jsonl(tmp_path / "n.jsonl", n=20)
    r = cli("finetune", base_run, "--data", data, "--method", "lora", "--max-iters", "6", "--eval-interval", "3",
            "--lr", "5e-3", "--out", tmp_path / "ft", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "iter 6: val loss" in r.stdout and "trainable parameters" in r.stdout
    r = cli("merge", tmp_path / "ft")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ft" / "merged" / "model.safetensors").is_file()
    r = cli("generate", tmp_path / "ft", "--prompt", "Say 3.", "--system", "Be brief.", "--max-new-tokens", "10",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    text = tmp_path / "t.txt"
    text.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 3)
    r = cli("eval", tmp_path / "ft", "--text", text)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["val_loss"] > 0


@pytest.mark.slow
def test_smollm2_lora_trains_under_2_percent_and_peft_reads_the_adapter(tmp_path):
    ft = finetune("smollm2", "shakespeare", tmp_path / "ft", method="lora", max_iters=8, eval_interval=8,
                  batch_size=2, block_size=128, eval_examples=4, lr=2e-3, progress=False, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["kind"] == "val"
    assert ft.config["trainable_params"] < 0.02 * ft.config["total_params"]
    from peft import PeftConfig
    assert PeftConfig.from_pretrained(str(tmp_path / "ft" / "adapter")).r == 8
