"""Fast decoding: genlab's GPT decoder gives the reference path's tokens (greedy and seeded
sampling, across a window slide, int8 layers included), decodes a batch of continuations
as a batched reference would, and `genlab generate --num-samples / --stats` work and
refuse bad input."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import genlab
from genlab.models.decode import GPTDecoder, decode_gpt
from genlab.models.gpt import GPT, GPTConfig, sample_rows
from genlab.models.int8 import quantize_int8

TINY = dict(recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16,
            lr=5e-3, warmup_iters=20, eval_interval=100, log_interval=25)
SAMPLING = [dict(temperature=0), dict(temperature=1.0, top_k=20), dict(temperature=0.8, top_p=0.9)]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A small char-level GPT trained on Shakespeare for 300 steps (about 8 s)."""
    out = tmp_path_factory.mktemp("decode") / "run"
    genlab.train("lm", corpus="shakespeare", out=out, max_iters=300, progress=False, log=lambda *a: None, **TINY)
    return out


def _fast(model, ids, n, batch=1, seed=0, **kw):
    steps = decode_gpt(model, ids, n, batch, generator=torch.Generator().manual_seed(seed), **kw)
    return [list(r) for r in zip(*steps)]


@pytest.mark.parametrize("kw", SAMPLING, ids=["greedy", "top_k", "top_p"])
def test_decoder_gives_the_reference_tokens(lm_run, kw):
    run = genlab.load(lm_run)
    model, ids = run.model, run.encode_prompt("ROMEO:\n")
    ref = list(model.generate(torch.tensor([ids]), 150, generator=torch.Generator().manual_seed(0), **kw))
    assert _fast(model, ids, 150, **kw)[0] == ref          # 150 > the 64-token window: it slides twice
    # inside the window the uncached path agrees too
    unc = list(model.generate(torch.tensor([ids]), 50, generator=torch.Generator().manual_seed(0),
                              use_cache=False, **kw))
    assert ref[:50] == unc
    # and the text the run streams is the decoder's
    text = run.generate("ROMEO:\n", 150, seed=0, top_k=kw.get("top_k"), top_p=kw.get("top_p"),
                        temperature=kw["temperature"])
    assert text == run.decode(ref)


def test_step_logits_match_the_full_forward():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=3, n_head=4, n_embd=64)).eval()
    idx = torch.randint(0, 50, (3, 20))
    with torch.inference_mode():
        full, _ = m(idx)
        dec = GPTDecoder(m, batch=3)
        parts = [dec.prefill(idx[:, :5])[:, None]]
        parts += [dec.step(idx[:, t])[:, None] for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full[:, 4:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache is full"):
        with torch.inference_mode():
            dec.prefill(idx[:, :1].repeat(1, 32))
            dec.step(idx[:, 0])


@pytest.mark.parametrize("kw", SAMPLING[:2], ids=["greedy", "top_k"])
def test_a_batch_decodes_as_a_batched_reference(lm_run, kw):
    """Each step of the batched decoder = the full forward of all rows (no cache), sampled
    by the same sampler with the same generator; greedy rows equal the batch-1 tokens."""
    model = genlab.load(lm_run).model
    ids, B, n = [5, 17, 3, 40], 6, 40
    got = _fast(model, ids, n, batch=B, seed=7, **kw)
    g, seq = torch.Generator().manual_seed(7), torch.tensor([ids] * B)
    with torch.inference_mode():
        for _ in range(n):
            nxt = sample_rows(model(seq)[0][:, -1], generator=g, **kw)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert got == seq[:, len(ids):].tolist()
    if kw["temperature"] == 0:
        assert got == [_fast(model, ids, n, **kw)[0]] * B
    else:
        assert len({tuple(r) for r in got}) == B  # six different continuations


def test_int8_layers_decode_through_the_decoder(lm_run):
    model = genlab.load(lm_run).model
    quantize_int8(model)
    ids = [1, 2, 3, 4]
    ref = list(model.generate(torch.tensor([ids]), 100, temperature=0))
    assert _fast(model, ids, 100, temperature=0)[0] == ref


def test_generate_num_samples_and_stats(lm_run, cli):
    r = cli("generate", str(lm_run), "--prompt", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "40",
            "--seed", "1", "--stats")
    assert r.returncode == 0, r.stderr
    samples = re.split(r"--- sample \d of 3 ---\n", r.stdout)[1:]
    assert len(samples) == 3 and all(s.startswith("ROMEO:") for s in samples)
    assert len(set(samples)) == 3
    assert re.search(r"120 tokens in [\d.]+ s: [\d.]+ tokens/s \(3 sequences", r.stderr), r.stderr
    again = cli("generate", str(lm_run), "--prompt", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "40",
                "--seed", "1")
    assert again.stdout == r.stdout
    one = cli("generate", str(lm_run), "--prompt", "ROMEO:", "--max-new-tokens", "50", "--temperature", "0",
              "--stats")
    assert one.returncode == 0, one.stderr
    m = re.search(r"49 tokens in [\d.]+ s: ([\d.]+) tokens/s, first token ([\d.]+) ms \(prompt: 6 tokens", one.stderr)
    assert m and float(m.group(1)) > 0, one.stderr
    assert "genlab's GPT decoder" in one.stderr


def test_bad_decode_input(lm_run, cli, expect_user_error):
    expect_user_error(cli("generate", str(lm_run), "--prompt", "A", "--num-samples", "0"), "--num-samples")
    expect_user_error(cli("generate", str(lm_run), "--prompt", "A", "--num-samples", "2", "--no-cache"),
                      "--no-cache")
    with pytest.raises(genlab.GenlabError, match="num-samples"):
        genlab.load(lm_run).generate_many("A", 0, 10)


# -- Llama-shaped models (SmolLM2) -------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    return genlab.load_model("smollm2", log=lambda *a: None)


def _chat_ids(tm, text="Tell me about the sea."):
    chat = tm.new_chat(None)
    chat.add("user", text)
    return tm.encode_prompt(chat.prompt())


def test_llama_decoder_gives_transformers_greedy_tokens(smollm2):
    assert smollm2.fast_path() is None and smollm2.decode_path() == "genlab's Llama decoder"
    ids, g = _chat_ids(smollm2), torch.Generator()
    ref = list(smollm2._hf_token_ids(ids, 200, 0.0, None, None, g, True))       # transformers' forward
    fast = list(smollm2._token_ids(ids, 200, 0.0, None, None, g, True))
    assert len(ref) >= 100 and fast == ref
    # seeded sampling: the same draws from the same logits
    kw = dict(temperature=0.9, top_k=50, top_p=None)
    ref = list(smollm2._hf_token_ids(ids, 40, generator=torch.Generator().manual_seed(5), use_cache=True, **kw))
    fast = list(smollm2._token_ids(ids, 40, generator=torch.Generator().manual_seed(5), use_cache=True, **kw))
    assert fast == ref


def test_llama_decoder_batches_and_prefills_at_an_offset(smollm2):
    from genlab.models.llama import LlamaDecoder
    ids = _chat_ids(smollm2, "Name a colour.")
    with torch.inference_mode():
        full = smollm2.model(input_ids=torch.tensor([ids] * 2)).logits
        dec = LlamaDecoder(smollm2.model, batch=2, capacity=len(ids))
        first = dec.prefill(torch.tensor([ids[:-3]] * 2))
        steps = [dec.step(torch.tensor([t, t])) for t in ids[-3:]]
    torch.testing.assert_close(first, full[:, -4], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(steps[:-1], 1), full[:, -3:-1], atol=2e-4, rtol=1e-4)
    greedy = smollm2._token_rows(ids, 12, 3, 0.0, None, None, torch.Generator())
    assert greedy == [list(smollm2._token_ids(ids, 12, 0.0, None, None, torch.Generator(), True))] * 3
    with pytest.raises(ValueError, match="cache is full"):
        with torch.inference_mode():
            dec.step(torch.tensor([1, 1]))


def test_a_model_without_a_fast_path_falls_back_with_a_note(lm_run, tmp_path):
    """A genlab GPT exported as GPT-2: no Llama fast path, so transformers decodes it, with a
    one-line note, never an error; the text is the run's own."""
    genlab.export(lm_run, tmp_path / "hf")
    hf = genlab.load_model(str(tmp_path / "hf"))
    assert "not Llama" in hf.fast_path()
    notes = []
    text = hf.generate("ROMEO:", 30, temperature=0, warn=notes.append)
    assert text == genlab.load(lm_run).generate("ROMEO:", 30, temperature=0)
    assert len(notes) == 1 and "no fast decode path" in notes[0] and "transformers decodes it" in notes[0]
    assert len(hf.generate_many("ROMEO:", 2, 10, temperature=0)) == 2


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2) -> Path:
    """A local Llama directory: 2 layers, 64 wide, 4 query heads over 2 key/value heads,
    random weights, SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    out = tmp_path_factory.mktemp("llama") / "tiny"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smollm2.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=smollm2.tokenizer.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    smollm2.tokenizer.save_pretrained(out)
    return out


def test_any_local_llama_directory_decodes_fast_and_the_same(tiny_llama, cli):
    tm = genlab.load_model(str(tiny_llama))
    assert tm.fast_path() is None
    ids, g = tm.encode_prompt("The sea is"), torch.Generator()
    fast = list(tm._token_ids(ids, 60, 0.0, None, None, g, True))
    assert fast == list(tm._hf_token_ids(ids, 60, 0.0, None, None, g, True)) and len(fast) > 10
    r = cli("generate", str(tiny_llama), "--prompt", "The sea is", "--max-new-tokens", "20", "--temperature", "0",
            "--stats")
    assert r.returncode == 0 and "genlab's Llama decoder" in r.stderr, r.stderr


def test_weights_that_do_not_match_the_config_are_one_clear_line(tiny_llama, tmp_path, cli, expect_user_error):
    import json
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 128
    (bad / "config.json").write_text(json.dumps(cfg))
    expect_user_error(cli("generate", str(bad), "--prompt", "A", "--max-new-tokens", "5"), str(bad))
