"""Compression: int8 layers (exact storage, close outputs, save/load bit-exact), global
magnitude pruning (the exact count, held through fine-tuning), structured pruning (the
small model equals the original with those heads and neurons zeroed), distillation, the
report table, Hugging Face int8 directories, image runs, and every bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import genlab
from conftest import cli
from genlab.compress.distill import parse_student
from genlab.compress.lm import count_weights
from genlab.compress.prune import magnitude_prune, prunable, prune_gpt_structured, sparsity
from genlab.errors import GenlabError
from genlab.families.lm import LMRun
from genlab.models.gpt import GPT, GPTConfig
from genlab.models.int8 import Int8Embedding, Int8Linear, quantize_int8
from genlab.runs import RunDir

TINY = dict(recipe="nanogpt", n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16,
            lr=5e-3, warmup_iters=20, eval_interval=100, log_interval=25)
FAST = dict(eval_tokens=4096, gen_tokens=8, batch=4, log=lambda *a: None)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    """A small char-level GPT trained on Shakespeare for 300 steps (about 10 s)."""
    out = tmp_path_factory.mktemp("cbase") / "run"
    genlab.train("lm", corpus="shakespeare", out=out, max_iters=300, progress=False, log=lambda *a: None, **TINY)
    return out


def _logits(model, seed=0, shape=(2, 30), vocab=65):
    x = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)[0]


# -- int8 --------------------------------------------------------------------------------

def test_int8_linear_stores_int8_and_stays_close_on_both_paths():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 200)
    q = Int8Linear.from_float(lin)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127 and q.scale.shape == (200,)
    # every row's largest weight maps to +-127 and dequantizes back within half a step
    err = (q.dequantize() - lin.weight).abs().max(dim=1).values
    assert bool((err <= q.scale / 2 + 1e-7).all())
    x = torch.randn(5, 7, 96)
    ref = lin(x).detach()
    fast = q(x)                                               # fbgemm int8 kernel
    slow = F.linear(x, q.dequantize(), q.bias)                # the float fallback
    assert fast.shape == ref.shape
    rel = lambda a, b: float((a - b).norm() / b.norm())       # noqa: E731
    assert rel(fast, ref) < 0.02 and rel(slow, ref) < 0.01


def test_smoothing_tames_an_outlier_channel_without_changing_the_function():
    """LLM activations have a few channels 100x larger than the rest; per-token int8 then
    rounds every other channel coarsely. Calibrated smoothing moves that range into the
    weights: the error falls, and the float function is unchanged."""
    from genlab.compress.quantize import int8
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(256, 64)
    x[:, 3] *= 100
    ref = lin(x).detach()
    errs = {}
    for alpha in (0.0, 0.8):
        m = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
        m[0].load_state_dict(lin.state_dict())
        int8(m, lambda m=m: m(x), alpha)
        errs[alpha] = float((m(x) - ref).norm() / ref.norm())
        q = m[0]   # the stored weight is W diag(s) in int8: W comes back within half a step / s
        bound = q.scale[:, None] / 2 / q.smooth[None, :] + 1e-6
        assert bool(((q.dequantize() - lin.weight).abs() <= bound).all())
    assert errs[0.8] < 0.5 * errs[0.0], errs
    assert not bool((m[0].smooth == 1).all())


def test_calibration_keeps_per_token_ranges_only_where_they_matter():
    from genlab.compress.quantize import int8
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    even = torch.randn(256, 64)
    even = even / even.abs().amax(dim=1, keepdim=True)            # every token the same range
    uneven = even * torch.logspace(-2, 2, 256)[:, None]           # tokens 10^4 apart in size
    for x, want in ((even, 0), (uneven, 1)):
        m = torch.nn.Sequential(torch.nn.Linear(64, 64))
        m[0].load_state_dict(lin.state_dict())
        n, per_token, _, _ = int8(m, lambda m=m, x=x: m(x), 0.0)
        assert (n, per_token, int(m[0].per_token.item())) == (1, want, want)
        with torch.no_grad():
            err = float((m(uneven) - lin(uneven)).norm() / lin(uneven).norm())
        assert (err < 0.02) == bool(want)   # one range per call cannot hold such tokens


def test_quantized_gpt_ties_its_embedding_and_reloads_bit_exactly(tmp_path):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=64, block_size=32))
    before = _logits(m)
    assert quantize_int8(m) == 2 * 4 + 1 + 1     # 4 Linear per block, the head, the tied embedding
    assert isinstance(m.transformer.wte, Int8Embedding)
    assert m.transformer.wte.weight.data_ptr() == m.lm_head.weight.data_ptr()
    after = _logits(m)
    assert float((after - before).abs().max()) < 0.05 * float(before.abs().max())
    run = RunDir(tmp_path)
    run.save_weights(m)
    fresh = GPT(m.cfg)
    quantize_int8(fresh)
    run.load_weights(fresh)
    assert torch.equal(_logits(fresh), after)
    assert count_weights(fresh) == count_weights(GPT(m.cfg))   # the same weights, 8 bits each
    # and it generates with the KV cache as it does without
    idx = torch.tensor([[1, 2, 3]])
    assert list(fresh.generate(idx, 40, temperature=0)) == list(fresh.generate(idx, 40, temperature=0, use_cache=False))


def test_compress_int8_gpt_run_through_the_cli(gpt_run, tmp_path):
    """--int8-layers all: every layer in int8 (4x smaller). The default keeps float where
    int8 is slower (on this tiny GPT, the batch-1 products) and says where and why."""
    out = tmp_path / "int8"
    r = cli("compress", gpt_run, "--quantize", "int8", "--int8-layers", "all", "--out", out, "--eval-tokens", "4096",
            "--gen-tokens", "8", "--batch", "4")
    assert r.returncode == 0, r.stderr
    assert "| original |" in r.stdout and "| compressed |" in r.stdout and "tokens/s" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    a, b = rep["rows"]
    assert a["params"] == b["params"] and a["disk_bytes"] / b["disk_bytes"] > 3.0
    assert abs(b["val_loss"] - a["val_loss"]) / a["val_loss"] < 0.01
    assert (out / "report.md").read_text().strip() == rep["table"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["compress"]["quantize"] == "int8" and cfg["compress"]["source"] == str(gpt_run)
    r = cli("generate", out, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout.strip()) > 10
    r = cli("eval", out, "--text", _held_out_file(tmp_path))
    assert r.returncode == 0 and "val_loss" in r.stdout
    assert torch.equal(_logits(LMRun(out).model), _logits(LMRun(out).model))


def _held_out_file(tmp_path) -> Path:
    from genlab.data.text import load_corpus
    p = tmp_path / "held.txt"
    p.write_text(load_corpus("shakespeare").text("val")[:3000])
    return p


# -- pruning -----------------------------------------------------------------------------

def test_global_magnitude_pruning_zeroes_exactly_the_smallest_weights():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=64, block_size=32))
    names = [n for n, _ in prunable(m)]
    assert "lm_head" not in names and len(names) == 8       # the tied head is left alone
    all_w = torch.cat([mod.weight.detach().abs().flatten() for _, mod in prunable(m)])
    cut = all_w.sort().values[round(0.3 * all_w.numel()) - 1]
    emb = m.transformer.wte.weight.detach().clone()
    masks = magnitude_prune(m, 0.3)
    z, n = sparsity(m)
    assert n == all_w.numel() and z == round(0.3 * n)
    for name, mod in prunable(m):
        assert not hasattr(mod, "weight_orig") and isinstance(mod.weight, torch.nn.Parameter)  # permanent
        kept = mod.weight.detach()[masks[name]]
        assert bool((kept.abs() >= cut).all())
    assert torch.equal(m.transformer.wte.weight, emb)


def test_prune_and_finetune_keeps_the_zeros_and_recovers(gpt_run, tmp_path):
    rep = genlab.compress(str(gpt_run), tmp_path / "p", prune=0.5, finetune_steps=30, **FAST)
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())["compress"]["prune"]
    assert cfg["sparsity"] >= 0.5 and cfg["zeros"] == round(0.5 * cfg["prunable"])
    model = LMRun(tmp_path / "p").model
    z, n = sparsity(model)
    assert z >= round(0.5 * n)
    # pruning alone costs quality; the fine-tune brings most of it back
    raw = genlab.compress(str(gpt_run), tmp_path / "raw", prune=0.5, **FAST)
    orig, tuned, untuned = rep["rows"][0]["val_loss"], rep["rows"][1]["val_loss"], raw["rows"][1]["val_loss"]
    assert untuned > orig and tuned < untuned


def test_structured_pruning_equals_the_original_with_those_heads_and_neurons_zeroed():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=4, n_embd=64, block_size=32)).eval()
    small = prune_gpt_structured(m, 0.5).eval()
    c = small.cfg
    assert (c.n_head, c.head_dim, c.n_inner) == (2, 16, 128)
    assert small.transformer.h[0].attn.c_attn.weight.shape == (3 * 32, 64)
    assert small.transformer.h[0].mlp.c_fc.weight.shape == (128, 64)
    # zero, in the original, every head and neuron the small model lacks: same function
    with torch.no_grad():
        for blk, sblk in zip(m.transformer.h, small.transformer.h):
            fc = blk.mlp.c_fc.weight
            keep = [i for i in range(fc.shape[0]) if any(torch.equal(fc[i], r) for r in sblk.mlp.c_fc.weight)]
            drop = sorted(set(range(fc.shape[0])) - set(keep))
            blk.mlp.c_fc.weight[drop] = 0
            q = blk.attn.c_attn.weight[:64].view(4, 16, 64)
            sq = sblk.attn.c_attn.weight[:32].view(2, 16, 64)
            gone = [h for h in range(4) if not any(torch.equal(q[h], s) for s in sq)]
            for h in gone:
                blk.attn.c_proj.weight[:, h * 16:(h + 1) * 16] = 0
    assert torch.allclose(_logits(m), _logits(small), atol=1e-5)
    idx = torch.tensor([[1, 2, 3]])
    assert list(small.generate(idx, 40, temperature=0)) == list(small.generate(idx, 40, temperature=0, use_cache=False))


def test_structured_compress_writes_a_smaller_run(gpt_run, tmp_path):
    rep = genlab.compress(str(gpt_run), tmp_path / "s", prune=0.5, structured=True, **FAST)
    a, b = rep["rows"]
    assert b["params"] < 0.6 * a["params"] and b["disk_bytes"] < 0.6 * a["disk_bytes"]
    run = LMRun(tmp_path / "s")
    assert run.model.cfg.n_head == 1 and run.model.cfg.n_inner == 128
    assert len(run.generate("ROMEO:", 10, temperature=0)) > 0
    r = cli("export", tmp_path / "s", "--out", tmp_path / "hf")
    assert r.returncode == 2 and "heads were pruned" in r.stderr


# -- distillation ----------------------------------------------------------------------------

def test_student_spec_follows_the_teacher_where_unnamed():
    t = GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=128)
    s = parse_student("layers=2,dim=64", t)
    assert (s.n_layer, s.n_embd, s.n_head, s.block_size, s.vocab_size) == (2, 64, 2, 128, 65)
    for bad, msg in (("layers=two", "whole number"), ("depth=2", "KEY=VALUE"), ("dim=60,heads=7", "multiple"),
                     ("", "empty"), ("layers=0", ">= 1")):
        with pytest.raises(ValueError, match=msg):
            parse_student(bad, t)


def test_distilled_student_learns_the_teachers_distribution(gpt_run, tmp_path):
    """A student trained only on the teacher's soft targets (alpha=1) comes to predict the
    held-out text far better than chance: it learned from the teacher alone."""
    rep = genlab.compress(str(gpt_run), tmp_path / "d", distill=True, student="layers=1,dim=32",
                          alpha=1.0, steps=150, **FAST)
    a, b = rep["rows"]
    assert b["params"] < 0.25 * a["params"]
    assert b["val_loss"] < math.log(65) - 1.0          # chance is log(vocab) = 4.17 nats
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["compress"]["distill"]["alpha"] == 1.0
    assert not (tmp_path / "d" / "state.pt").exists()


# -- Hugging Face models and image runs --------------------------------------------------------

def test_int8_hugging_face_directory_loads_and_scores_like_the_original(gpt_run, tmp_path):
    from genlab.families import load_model as load_text_model
    hf = genlab.export(gpt_run, tmp_path / "hf", log=lambda *a: None)
    rep = genlab.compress(str(hf), tmp_path / "hf8", quantize="int8", int8_layers="all", **FAST)
    a, b = rep["rows"]
    assert a["disk_bytes"] / b["disk_bytes"] > 3.0 and abs(b["val_loss"] - a["val_loss"]) / a["val_loss"] < 0.01
    cfg = json.loads((tmp_path / "hf8" / "config.json").read_text())
    assert cfg["genlab_quantization"] == "int8" and "model_type" in cfg
    m = load_text_model(str(tmp_path / "hf8"), log=lambda *a: None)
    assert sum(isinstance(x, Int8Linear) for x in m.model.modules()) == 2 * 4 + 1
    assert len(m.generate("ROMEO:", 12, temperature=0)) > 0
    r = cli("compress", tmp_path / "hf8", "--quantize", "int8", "--out", tmp_path / "again")
    assert r.returncode == 2 and "already quantized" in r.stderr and not (tmp_path / "again").exists()


def test_vae_run_quantizes_and_prunes_with_its_test_loss(trained_run, tmp_path):
    rep = genlab.compress(str(trained_run), tmp_path / "v8", quantize="int8", int8_layers="all", log=lambda *a: None)
    a, b = rep["rows"]
    assert "test_loss" in a and "tokens_per_s" not in a and a["disk_bytes"] / b["disk_bytes"] > 3.0
    assert abs(b["test_loss"] - a["test_loss"]) / a["test_loss"] < 0.01
    r = cli("sample", tmp_path / "v8", "--n", "16", "--out", tmp_path / "s.npy", "--seed", "0")
    assert r.returncode == 0, r.stderr
    rep = genlab.compress(str(trained_run), tmp_path / "p", prune=0.5, log=lambda *a: None)
    a, b = rep["rows"]
    info = json.loads((tmp_path / "p" / "config.json").read_text())["compress"]["prune"]
    assert info["zeros"] == round(0.5 * info["prunable"]) and a["params"] == b["params"]
    assert a["test_loss"] < b["test_loss"] < 1.2 * a["test_loss"]   # a cost, without a fine-tune


# -- bad input -------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_and_write_nothing(gpt_run, trained_run, tmp_path, expect_user_error, snapshot, cli_here):
    before = snapshot(gpt_run.parent)
    out = tmp_path / "o"
    cases = [
        (dict(prune=0.0), "strictly between 0 and 1"),
        (dict(prune=1.0), "strictly between 0 and 1"),
        (dict(quantize="int4"), "available: int8"),
        (dict(), "nothing to do"),
        (dict(structured=True), "needs --prune"),
        (dict(finetune_steps=10), "give --prune"),
        (dict(distill=True, student="layers=8,dim=256", steps=5), "not fewer than the teacher"),
        (dict(distill=True, steps=5), "--student"),
        (dict(distill=True, student="layers=1"), "--steps"),
        (dict(distill=True, student="depth=1", steps=5), "KEY=VALUE"),
        (dict(quantize="int8", steps=5), "are for --distill"),
        (dict(quantize="int8", smooth=1.0), "--smooth must be in"),
    ]
    for kw, msg in cases:
        with pytest.raises(GenlabError, match=msg):
            genlab.compress(str(gpt_run), out, **kw)
    assert not out.exists()
    # the command line: exit code 2 and the one line
    expect_user_error(cli_here("compress", gpt_run, "--prune", "1.5", "--out", out), "strictly between 0 and 1")
    expect_user_error(cli_here("compress", trained_run, "--distill", "--student", "layers=1", "--out", out),
                      "does not apply to a VAE run", "GPT run")
    expect_user_error(cli_here("compress", "smollm2", "--prune", "0.3", "--structured", "--out", out),
                      "--structured does not apply to a Hugging Face model")
    with pytest.raises(GenlabError, match="same directory"):
        genlab.compress(str(gpt_run), gpt_run, quantize="int8")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GenlabError, match="not empty"):
        genlab.compress(str(gpt_run), out, quantize="int8")
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    q = tmp_path / "q"
    genlab.compress(str(gpt_run), q, quantize="int8", **FAST)
    expect_user_error(cli_here("compress", q, "--quantize", "int8", "--out", tmp_path / "qq"), "already quantized")
    with pytest.raises(GenlabError, match="cannot be pruned"):
        genlab.compress(str(q), tmp_path / "qq", prune=0.5)
    assert not (tmp_path / "qq").exists()
    assert snapshot(gpt_run.parent) == before


@pytest.mark.slow
def test_smollm2_int8_is_four_times_smaller_and_keeps_its_perplexity(tmp_path):
    rep = genlab.compress("smollm2", tmp_path / "s8", quantize="int8", eval_tokens=4096, gen_tokens=8,
                          log=lambda *a: None)
    a, b = rep["rows"]
    assert a["disk_bytes"] / b["disk_bytes"] > 3.5
    assert (b["perplexity"] - a["perplexity"]) / a["perplexity"] < 0.02
    r = cli("generate", tmp_path / "s8", "--system", "Answer in one word.", "--prompt",
            "What is the capital of France?", "--max-new-tokens", "8", "--temperature", "0")
    assert r.returncode == 0 and "Paris" in r.stdout, r.stdout + r.stderr


# -- int8 that never slows a layer down ---------------------------------------------------------

def test_int8_timing_keeps_float_where_int8_loses():
    """A tiny layer at one token: fbgemm's quantize-multiply-rescale costs more than the float
    product, so it stays float. A large one: int8 moves a quarter of the bytes and wins."""
    from genlab.compress.quantize import slower_in_int8
    torch.manual_seed(0)
    small, large = nn.Linear(32, 32, bias=False), nn.Linear(4096, 4096, bias=False)
    why = slower_in_int8(small, Int8Linear.from_float(small), (1,))
    assert why is not None and "at 1 input row" in why and "int8" in why and "float" in why
    assert slower_in_int8(large, Int8Linear.from_float(large), (1,)) is None


def test_default_int8_lists_the_layers_it_kept_float_and_reloads(gpt_run, tmp_path):
    out = tmp_path / "timed"
    r = cli("compress", gpt_run, "--quantize", "int8", "--out", out, "--eval-tokens", "2048", "--gen-tokens", "8",
            "--batch", "4")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    kept = cfg["compress"]["float_layers"]
    assert all("int8" in why and "us vs float" in why for why in kept.values())
    run = genlab.load(out)
    names = {n for n, m in run.model.named_modules() if isinstance(m, Int8Linear)}
    linears = {n for n, m in run.model.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    assert names == linears - set(kept) and set(kept) <= linears
    if kept:
        assert "kept in float" in r.stderr
        assert f"Kept in float, since int8 was slower there ({len(kept)} layers" in (out / "report.md").read_text()
    rep = json.loads((out / "report.json").read_text())
    assert isinstance(rep["slower"], list)
    assert run.generate("ROMEO:", 10, temperature=0)


def test_the_report_flags_a_slower_compressed_model():
    from genlab.compress.report import slower, table
    a = {"model": "original", "params": 10, "disk_bytes": 100, "latency_b1_ms": 1.0, "latency_batch_ms": 4.0,
         "batch": 8, "tokens_per_s": 100.0}
    b = dict(a, model="compressed", latency_b1_ms=1.5, tokens_per_s=80.0)
    assert "SLOWER" in table([a, b]) and slower([a, b]) == ["latency at batch 1", "generation (tokens/s)"]
    assert "SLOWER" not in table([a, dict(a, model="compressed")])
