"""Language models from scratch: corpora and their held-out split, tokenizers, the GPT and
its KV cache, training (loss falls, best checkpoint, bit-exact resume), generation,
the chat template, evaluation, and the command line with its bad inputs."""
from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab
from conftest import GENLAB, cli
from genlab.data.text import HELD_OUT, load_corpus
from genlab.data.tokenizer import CharTokenizer, encoded_corpus, train_tokenizer
from genlab.errors import GenlabError
from genlab.llm.chat import Chat, ChatTemplate
from genlab.models.gpt import GPT, GPTConfig, KVCache, sample_next

TINY = dict(recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16,
            lr=5e-3, warmup_iters=20, eval_interval=100, log_interval=25)


@pytest.fixture(scope="session")
def shakespeare():
    return load_corpus("shakespeare")


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, shakespeare) -> Path:
    """A small char-level GPT trained for 400 steps (about 12 s)."""
    out = tmp_path_factory.mktemp("lm") / "run"
    genlab.train("lm", corpus="shakespeare", out=out, max_iters=400, progress=False,
                 log=lambda *a: None, **TINY)
    return out


# -- corpora ---------------------------------------------------------------------------

def test_shakespeare_has_38_plays_and_holds_out_whole_plays(shakespeare):
    assert len(shakespeare.docs) == 38
    names = [n for n, _ in shakespeare.docs]
    assert set(HELD_OUT["shakespeare"]) <= set(names)
    val = shakespeare.split_docs("val")
    assert sorted(n for n, _ in val) == sorted(HELD_OUT["shakespeare"])
    train_text = shakespeare.text("train")
    # no held-out speech is trained on: long held-out lines never occur in the training text
    long_lines = {ln for _, t in val for ln in t.splitlines() if len(ln) > 40}
    assert len(long_lines) > 1500
    leaked = [ln for ln in long_lines if ln in train_text]
    assert len(leaked) <= 0.01 * len(long_lines), leaked[:5]  # (a few stock lines recur across plays)
    # rendered like tiny-shakespeare: speaker lines, no Markdown left
    assert "\nMACBETH:\n" in shakespeare.text("val")
    assert not any(c in shakespeare.text("train") for c in "*_#")


def test_austen_and_kjv_corpora():
    austen = load_corpus("austen")
    assert [n for n, _ in austen.docs] == ["sense-and-sensibility", "pride-and-prejudice", "mansfield-park",
                                          "emma", "northanger-abbey", "persuasion"]
    assert austen.split_docs("val")[0][1].startswith("Persuasion")
    assert "It is a truth universally acknowledged" in austen.text("train")
    kjv = load_corpus("kjv")
    assert len(kjv.docs) == 66 and kjv.docs[0][1].startswith("Genesis\n\n1:1 In the beginning God created")
    assert "Ruth" in [n for n, _ in kjv.split_docs("val")]


def test_corrupt_corpus_cache_is_refused(tmp_path, monkeypatch, shakespeare):
    from genlab.data.text import corpus_path as _cache_file
    src = _cache_file("shakespeare").read_bytes()
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path))
    monkeypatch.setenv("GENLAB_SOURCES", "cache")
    target = _cache_file("shakespeare")
    target.parent.mkdir(parents=True)
    target.write_bytes(src[:-100])
    with pytest.raises(GenlabError, match="corrupt"):
        load_corpus("shakespeare", quiet=True)
    target.write_bytes(src)
    assert load_corpus("shakespeare", quiet=True).fingerprint == shakespeare.fingerprint


def test_text_corpus_file_and_folder(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("".join(f"line {i} of the book\n" for i in range(100)))
    c = load_corpus(f"text:{f}")
    assert c.text("train").count("\n") + c.text("val").count("\n") >= 100
    assert "line 99 of the book" in c.text("val") and "line 99 of the book" not in c.text("train")
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(12):
        (d / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    (d / ".hidden").write_text("skip me")
    c = load_corpus(f"text:{d}")
    assert len(c.docs) == 12 and c.held_out == ("doc09.txt",)


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"caf\xe9 latin-1\n" * 10, "not UTF-8"),
    (b"one line only", "too short")])
def test_bad_text_corpus_files(tmp_path, content, fragment):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(GenlabError, match=fragment):
        load_corpus(f"text:{f}")


# -- tokenizers ------------------------------------------------------------------------

def test_char_tokenizer_roundtrip_and_refuses_unknown_characters():
    tok = CharTokenizer.train(["hello world\n"])
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    with pytest.raises(GenlabError, match=r"outside .* vocabulary.*'z'"):
        tok.encode("hazel")


def test_bpe_tokenizer_roundtrip_any_text(shakespeare, tmp_path):
    tok = train_tokenizer("bpe", shakespeare, vocab_size=400)
    assert tok.vocab_size == 400
    text = "O Romeo, Romeo! wherefore art thou Romeo?\nCafé — naïve 東京 🙂\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges compress
    assert tok.encode_array(text).tolist() == ids
    from genlab.data.tokenizer import load_tokenizer, save_tokenizer
    save_tokenizer(tok, tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == ids


def test_encoded_corpus_is_the_split_text(shakespeare):
    tok = train_tokenizer("char", shakespeare)
    data = encoded_corpus(shakespeare, tok)
    assert data["train"].dtype == np.uint16 and isinstance(data["train"], np.memmap)
    assert len(data["train"]) == len(shakespeare.text("train"))
    assert tok.decode(data["val"][:500].tolist()) == shakespeare.text("val")[:500]


# -- the model -------------------------------------------------------------------------

def _model(block=32, dropout=0.0):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=block, n_layer=2, n_head=2, n_embd=32, dropout=dropout)).eval()


def test_gpt_ties_embedding_and_head_and_saves_once(tmp_path):
    from genlab.runs import RunDir
    m = _model()
    assert m.lm_head.weight is m.transformer.wte.weight
    RunDir(tmp_path).save_weights(m)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in stored or "transformer.wte.weight" not in stored
    m2 = GPT(m.cfg)
    RunDir(tmp_path).load_weights(m2)
    assert m2.lm_head.weight is m2.transformer.wte.weight
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_kv_cache_gives_the_same_logits():
    m = _model()
    idx = torch.randint(0, 50, (2, 20))
    full, _ = m(idx)
    cache = KVCache(m.cfg, 2)
    parts = [m(idx[:, :7], cache=cache)[0]]            # prefill
    parts.append(m(idx[:, 7:12], cache=cache)[0])      # several tokens after cached ones
    parts += [m(idx[:, i:i + 1], cache=cache)[0] for i in range(12, 20)]  # one by one
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_and_without_cache_agree():
    m = _model(block=32)
    idx = torch.tensor([[1, 2, 3]])
    a = list(m.generate(idx, 29, temperature=0, use_cache=True))
    b = list(m.generate(idx, 29, temperature=0, use_cache=False))
    assert a == b
    # past the window: the window slides and generation goes on
    assert len(list(m.generate(idx, 100, temperature=0))) == 100


def test_sampling_controls():
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert sample_next(logits, temperature=0) == 1
    assert sample_next(logits, 1.0, top_k=1, generator=g()) == 1
    assert sample_next(logits, 1.0, top_p=0.01, generator=g()) == 1
    draws = {sample_next(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(50)}
    assert draws == {1, 2}
    draws = {sample_next(logits, 1.0, top_p=0.9, generator=torch.Generator().manual_seed(s)) for s in range(50)}
    assert draws == {1, 2}


# -- training --------------------------------------------------------------------------

def test_training_loss_falls_and_best_checkpoint_is_kept(lm_run):
    recs = [json.loads(x) for x in (lm_run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if r["kind"] == "val"]
    iters = [r for r in recs if r["kind"] == "iter"]
    assert iters[0]["loss"] > 4.0                      # ~ln(76): uniform over the characters
    assert vals[-1]["val_loss"] < 2.75                 # learned far more than unigram statistics
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.2
    best = min(r["val_loss"] for r in vals)
    # model.safetensors holds the best weights: re-evaluating them gives the best val loss
    run = genlab.load(lm_run)
    from genlab.families.lm import run_data as _run_data
    from genlab.train.lm import LMTask
    _, data = _run_data(run.dir, run.config, run.tokenizer)
    task = LMTask(run.model, data, block_size=64, batch_size=16)
    assert task.evaluate()["val_loss"] == pytest.approx(best, abs=1e-5)
    assert (lm_run / "loss.png").stat().st_size > 1000
    cfg = json.loads((lm_run / "config.json").read_text())
    assert cfg["family"] == "lm" and cfg["data"]["held_out"] == list(HELD_OUT["shakespeare"])


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    """Ctrl-C mid-run, then --resume: the same weights as an uninterrupted run."""
    args = ["train", "lm", "--recipe", "nanogpt", "--n-layer", "2", "--n-head", "2", "--n-embd", "64",
            "--batch-size", "16", "--lr", "3e-3", "--warmup-iters", "20", "--max-iters", "80",
            "--eval-interval", "30", "--log-interval", "5", "--no-progress"]
    straight = cli(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    p = subprocess.Popen(GENLAB + args + ["--out", str(tmp_path / "split")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("iter 40: loss"):
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "continue it with --resume" in out
    state = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    assert 40 <= state["iter"] < 80
    r = cli("train", "lm", "--out", tmp_path / "split", "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "split" / name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_gradient_accumulation_matches_the_big_batch(shakespeare):
    """2 micro-batches of 8 accumulate to the same update as one batch of 16."""
    from genlab.train.lm import LMTask
    tok = train_tokenizer("char", shakespeare)
    data = encoded_corpus(shakespeare, tok)
    weights = []
    for batch, accum in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
        task = LMTask(m, data, block_size=32, batch_size=batch, grad_accum=accum, lr=1e-2, warmup_iters=0)
        losses = []
        for it in range(3):
            task.set_progress(it, it / 3)
            losses.append(task.train_step())
        weights.append((m.state_dict(), losses))
    (a, la), (b, lb) = weights
    assert la == pytest.approx(lb, abs=1e-5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)


def test_bf16_autocast_trains(tmp_path):
    run = genlab.train("lm", corpus="shakespeare", out=tmp_path / "bf16", dtype="bfloat16", max_iters=6,
                       progress=False, log=lambda *a: None,
                       **dict(TINY, n_layer=1, n_embd=32, batch_size=4, eval_interval=6))
    vals = [r for r in run.dir.read_metrics() if r["kind"] == "val"]
    assert run.config["train"]["dtype"] == "bfloat16" and math.isfinite(vals[-1]["val_loss"])


def test_time_budget_stops_training(tmp_path):
    run = genlab.train("lm", corpus="shakespeare", out=tmp_path / "r", time_budget=3, progress=False,
                       log=lambda *a: None, **{k: v for k, v in TINY.items() if k != "recipe"})
    assert run.summary["stopped"] == "time budget" and run.summary["iters"] > 5
    t = run.config["train"]
    assert t["recipe"] == "genlab" and t["time_budget"] == 3 and t["max_iters"] is None


def test_genlab_recipe_follows_the_budget():
    from genlab.families.lm import GENLAB, GENLAB_SHORT, NANOGPT, genlab_recipe
    assert genlab_recipe(None) is GENLAB and genlab_recipe(600) is GENLAB
    assert genlab_recipe(120) is GENLAB_SHORT
    assert GENLAB["time_budget"] == 600 and GENLAB["max_iters"] is None
    assert (NANOGPT["n_layer"], NANOGPT["n_head"], NANOGPT["n_embd"], NANOGPT["block_size"],
            NANOGPT["batch_size"], NANOGPT["max_iters"], NANOGPT["lr"], NANOGPT["dropout"]) == \
        (4, 4, 128, 64, 12, 2000, 1e-3, 0.0)


def test_bpe_run_trains_and_generates(tmp_path):
    run = genlab.train("lm", corpus="shakespeare", out=tmp_path / "bpe", tokenizer="bpe", vocab_size=300,
                       max_iters=40, progress=False, log=lambda *a: None, **TINY)
    text = run.generate("KING HENRY:\nCafé 🙂", max_new_tokens=30, temperature=1.0, seed=0)
    assert isinstance(text, str) and text
    assert run.evaluate()["bits_per_char"] > 0


# -- generation, chat, evaluation -------------------------------------------------------

def test_generation_is_seeded_and_greedy_matches_no_cache(lm_run):
    run = genlab.load(lm_run)
    a = run.generate("ROMEO:\n", max_new_tokens=80, temperature=0.8, seed=3)
    assert a == run.generate("ROMEO:\n", max_new_tokens=80, temperature=0.8, seed=3)
    assert a != run.generate("ROMEO:\n", max_new_tokens=80, temperature=0.8, seed=4)
    assert len(a) == 80
    g1 = run.generate("ROMEO:\n", max_new_tokens=50, temperature=0)
    assert g1 == run.generate("ROMEO:\n", max_new_tokens=50, temperature=0, use_cache=False)
    # words, not noise: of its words of 3+ letters, twice the share are real words as of
    # those in characters drawn at their training frequencies
    train = load_corpus("shakespeare").text("train")
    vocab = set(train.split())
    chars, counts = np.unique(np.array(list(train)), return_counts=True)
    noise = "".join(np.random.default_rng(0).choice(chars, 800, p=counts / counts.sum()))
    text = run.generate("ROMEO:\n", max_new_tokens=800, temperature=0.8, seed=0)
    share = lambda t: np.mean([w in vocab for w in t.split() if len(w) >= 3])  # noqa: E731
    assert share(text) > 2 * share(noise), (share(text), share(noise))


def test_chat_template_separates_system_prompt_and_transcript(lm_run):
    run = genlab.load(lm_run)
    chat = run.new_chat(system="Speak of the sea.")
    reply = run.reply(chat, "What news?", max_new_tokens=40, seed=0)
    t = run.template
    assert chat.prompt().startswith(t.system.replace("{system}", "Speak of the sea."))
    assert t.user.replace("{user}", "What news?") in chat.prompt()
    assert "Speak of the sea" not in chat.transcript()
    assert chat.messages == [{"role": "user", "content": "What news?"}, {"role": "assistant", "content": reply}]
    assert t.stop not in reply
    # the template renders exactly
    tpl = ChatTemplate(system="<s>{system}</s>", user="<u>{user}</u>", assistant="<a>{assistant}</a>", stop="</a>")
    c = Chat(tpl, "SYS", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "ok"}])
    assert c.prompt() == "<s>SYS</s><u>hi</u><a>yo</a><u>ok</u><a>"
    assert Chat(tpl, None, [{"role": "user", "content": "hi"}]).prompt() == "<u>hi</u><a>"


def test_evaluate_reports_loss_perplexity_bpc(lm_run, tmp_path):
    run = genlab.load(lm_run)
    res = run.evaluate()
    assert res["perplexity"] == pytest.approx(math.exp(res["val_loss"]))
    assert res["bits_per_char"] == pytest.approx(res["val_loss"] / math.log(2))  # char model: 1 char/token
    assert res["tokens_scored"] == len(load_corpus("shakespeare").text("val")) - 1
    f = tmp_path / "t.txt"
    f.write_text("To be, or not to be, that is the question:\n" * 20)
    rep = run.evaluate(text=str(f))
    assert rep["val_loss"] < res["val_loss"]  # a line repeated 20 times is easy to predict


# -- the command line ------------------------------------------------------------------

def test_cli_train_generate_eval_chat(cli, tmp_path, lm_run):
    r = cli("train", "lm", "--corpus", "shakespeare", "--recipe", "nanogpt", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--max-iters", "20", "--eval-interval", "10",
            "--log-interval", "5", "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert "iter 5: loss" in r.stdout and "iter 20: val loss" in r.stdout
    r = cli("generate", lm_run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "0")
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) >= 46
    r2 = cli("generate", lm_run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "0")
    assert r2.stdout == r.stdout
    r = cli("eval", lm_run)
    assert r.returncode == 0 and json.loads(r.stdout)["bits_per_char"] > 0
    r = cli("generate", lm_run, "--prompt", "A", "--max-new-tokens", "100", "--temperature", "0")
    assert r.returncode == 0 and len(r.stdout) == 102 and "window slides" in r.stderr
    r = cli("chat", lm_run, "--system", "Be brief.", "--max-new-tokens", "20", "--seed", "0",
            input_text="Good morrow.\n/prompt\n")
    assert r.returncode == 0, r.stderr
    assert "Be brief." in r.stdout and "Good morrow." in r.stdout


def test_cli_bad_inputs(cli, expect_user_error, snapshot, lm_run, trained_run, tmp_path, cli_here):
    before = snapshot(lm_run)
    expect_user_error(cli_here("generate", lm_run, "--prompt", "Café"), "outside", "vocabulary", "'é'")
    expect_user_error(cli_here("generate", lm_run, "--prompt", ""), "prompt is empty")
    expect_user_error(cli_here("generate", lm_run, "--prompt", "x", "--max-new-tokens", "0"), "--max-new-tokens")
    expect_user_error(cli_here("generate", lm_run, "--prompt", "x", "--top-p", "1.5"), "--top-p")
    expect_user_error(cli_here("generate", trained_run, "--prompt", "x"), "'vae' run", "language-model")
    expect_user_error(cli_here("sample", lm_run, "--out", tmp_path / "x.png"), "language-model run", "generate")
    expect_user_error(cli_here("train", "lm", "--out", lm_run), "already exists")
    expect_user_error(cli_here("train", "lm", "--out", lm_run, "--resume", "--n-layer", "3"), "only --max-iters")
    expect_user_error(cli_here("train", "vae", "--out", lm_run, "--resume"), "'lm' run")
    expect_user_error(cli_here("train", "lm", "--out", trained_run, "--resume"), "'vae' run")
    expect_user_error(cli_here("train", "lm", "--corpus", "nope", "--out", tmp_path / "o"), "unknown corpus")
    expect_user_error(cli_here("train", "lm", "--corpus", "text:" + str(tmp_path / "missing.txt"),
                          "--out", tmp_path / "o"), "no such file")
    expect_user_error(cli_here("train", "lm", "--n-embd", "100", "--n-head", "3", "--out", tmp_path / "o"),
                      "multiple of --n-head")
    expect_user_error(cli_here("train", "lm", "--vocab-size", "1000", "--out", tmp_path / "o"), "--tokenizer bpe")
    expect_user_error(cli_here("eval", lm_run, "--text", tmp_path / "missing.txt"), "no such file")
    expect_user_error(cli_here("generate", lm_run, "--system", "Soyez bref, s'il vous plaît", "--prompt", "x"),
                      "outside", "'î'")
    small = tmp_path / "small.txt"
    small.write_text("".join(f"a short line number {i}\n" for i in range(20)))
    expect_user_error(cli_here("train", "lm", "--corpus", f"text:{small}", "--out", tmp_path / "o"),
                      "held-out split has", "fewer than the context window")
    expect_user_error(cli_here("eval", trained_run, "--text", tmp_path / "x.txt"), "language-model runs")
    assert snapshot(lm_run) == before
