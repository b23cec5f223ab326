"""genlab serve under load, on loopback, measured in one run (about 5 minutes on 2 cores).

    python benchmarks/serve.py                          # trains the two runs it serves (~1 min)
    python benchmarks/serve.py --runs DIR --image-run R --text-model M --clients 32 --seconds 60

- start: seconds from `genlab serve` starting to its first answered request (/api/runs),
  to the first sample (the model loaded on that first request), and the first-token
  latency of a streamed generation (the first, which loads the model; then with it loaded);
- load: `--clients` concurrent clients for `--seconds` each on `sample` (16 images) and
  `generate` (32 new tokens, streamed), at most `--cap` requests per phase: throughput,
  p50 / p95 / p99 latency of the answered requests, first-token latency of the streams,
  how many were refused with 429 (the bounded queue; a refused client waits 0.2 s and
  asks again), how many 5xx (there should be none), and the server's memory (RSS) before
  and after each phase;
- reference: the same work through the Python API in this process, one request at a
  time (run.sample + PNG encoding; model.stream): what serving adds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

GENLAB = [sys.executable, "-m", "genlab"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def train_runs(root: Path) -> None:
    """A convolutional VAE on MNIST (60 s) and a character-level GPT on Shakespeare (60 s)."""
    for args in (["vae", "--dataset", "mnist", "--arch", "conv", "--time-budget", "60", "--out", root / "vae"],
                 ["lm", "--corpus", "shakespeare", "--time-budget", "60", "--out", root / "lm"]):
        r = subprocess.run(GENLAB + ["train", *map(str, args), "--seed", "0", "--no-progress"],
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])


async def one_sample(c: httpx.AsyncClient, run: str, i: int) -> dict:
    t = time.perf_counter()
    r = await c.post(f"/api/runs/{run}/sample", json={"n": 16, "seed": i})
    return {"status": r.status_code, "s": time.perf_counter() - t}


async def one_generate(c: httpx.AsyncClient, model: str, i: int) -> dict:
    t = time.perf_counter()
    first = None
    async with c.stream("POST", f"/api/runs/{model}/generate",
                        json={"prompt": "ROMEO:", "max_new_tokens": 32, "seed": i, "temperature": 0.8}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code, "s": time.perf_counter() - t}
        async for chunk in r.aiter_text():
            if first is None and "event: token" in chunk:
                first = time.perf_counter() - t
    return {"status": 200, "s": time.perf_counter() - t, "first": first}


async def load(url: str, call, name: str, clients: int, seconds: float, cap: int) -> list:
    out: list = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client(c):
        while time.perf_counter() < stop and len(out) < cap:
            res = await call(c, name, next(counter))
            out.append(res)
            if res["status"] == 429:
                await asyncio.sleep(0.2)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return out


def summarise(phase: str, res: list, seconds: float, before: float, after: float) -> dict:
    ok = [r for r in res if r["status"] == 200]
    lat = [r["s"] for r in ok]
    firsts = [r["first"] for r in ok if r.get("first") is not None]
    return {"phase": phase, "requests": len(res), "answered": len(ok), "throughput_rps": len(ok) / seconds,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99),
            "first_token_p50_s": pct(firsts, 50) if firsts else None,
            "first_token_p95_s": pct(firsts, 95) if firsts else None,
            "refused_429": sum(r["status"] == 429 for r in res), "errors_5xx": sum(r["status"] >= 500 for r in res),
            "other_4xx": sum(400 <= r["status"] < 500 and r["status"] != 429 for r in res),
            "rss_before_mb": before, "rss_after_mb": after}


def reference(runs: Path, image_run: str, text_model: str, rounds: int = 20) -> dict:
    """The same work through the Python API, in this process, one at a time."""
    import genlab
    from genlab import api
    run = genlab.load(runs / image_run)
    run.sample(16, seed=0)
    t = time.perf_counter()
    for i in range(rounds):
        api.image_bytes(run.sample(16, seed=i), "png")
    sample_s = (time.perf_counter() - t) / rounds
    m = api.open_any(str(runs / text_model)) if (runs / text_model).is_dir() else api.load_model(text_model)
    firsts, totals = [], []
    for i in range(5):
        t = time.perf_counter()
        first = None
        for _ in m.stream("ROMEO:", 32, temperature=0.8, seed=i):
            first = first or time.perf_counter() - t
        firsts.append(first)
        totals.append(time.perf_counter() - t)
    return {"sample_s": sample_s, "generate_s": statistics.median(totals), "first_token_s": statistics.median(firsts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, help="a folder of runs (default: train two into a temporary one)")
    ap.add_argument("--image-run", default="vae")
    ap.add_argument("--text-model", default="lm", help="a run in --runs or a built-in model (smollm2)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--cap", type=int, default=20_000, help="at most this many requests per phase")
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genlab-serve-bench-"))
    runs = a.runs
    if runs is None:
        runs = tmp / "runs"
        runs.mkdir()
        print("training the runs it serves (a conv VAE, a GPT; 60 s each) ...", flush=True)
        train_runs(runs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(GENLAB + ["serve", "--runs", str(runs), "--port", str(port), "--queue", str(a.queue)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results: dict = {"clients": a.clients, "seconds": a.seconds, "queue": a.queue, "phases": []}
    try:
        while True:
            try:
                r = httpx.get(url + "/api/runs", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read())
            time.sleep(0.02)
        results["first_answer_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        r = httpx.post(url + f"/api/runs/{a.image_run}/sample", json={"n": 16, "seed": 0}, timeout=120)
        assert r.status_code == 200, r.text
        results["first_sample_s"] = time.perf_counter() - t
        results["first_sample_after_start_s"] = time.perf_counter() - t0
        results["rss_idle_mb"] = rss_mb(proc.pid)
        t = time.perf_counter()
        first = None
        with httpx.stream("POST", url + f"/api/runs/{a.text_model}/generate",
                          json={"prompt": "ROMEO:", "max_new_tokens": 32, "seed": 0}, timeout=300) as r:
            for chunk in r.iter_text():
                if first is None and "event: token" in chunk:
                    first = time.perf_counter() - t
        results["first_generate_first_token_s"] = first   # includes loading the model
        warm = []
        one = httpx.Client(base_url=url, timeout=300)   # (one client: a new one per request costs ~20 ms itself)
        for i in range(11):   # one client, the model loaded (the first call discarded): what a person waits for
            t = time.perf_counter()
            with one.stream("POST", f"/api/runs/{a.text_model}/generate",
                            json={"prompt": "ROMEO:", "max_new_tokens": 32, "seed": i + 1}) as r:
                first = None
                for chunk in r.iter_text():   # (read to the end: a client that leaves early delays the next)
                    if first is None and "event: token" in chunk:
                        first = time.perf_counter() - t
            warm.append(first)
        results["warm_first_token_s"] = statistics.median(warm[1:])
        one.close()
        for phase, call, name in (("sample", one_sample, a.image_run), ("generate", one_generate, a.text_model)):
            before = rss_mb(proc.pid)
            print(f"{phase}: {a.clients} clients for {a.seconds:g} s ...", flush=True)
            t = time.perf_counter()
            res = asyncio.run(load(url, call, name, a.clients, a.seconds, a.cap))
            results["phases"].append(summarise(phase, res, time.perf_counter() - t, before, rss_mb(proc.pid)))
        results["health"] = httpx.get(url + "/api/health", timeout=10).json()
        results["rss_end_mb"] = rss_mb(proc.pid)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print("reference: the Python API in this process, one request at a time ...", flush=True)
    results["reference"] = reference(runs, a.image_run, a.text_model)

    ref = results["reference"]
    print(f"\nstart: first answer {results['first_answer_s']:.2f} s after `genlab serve`; first sample "
          f"{results['first_sample_s']:.2f} s (loads the run); first streamed token of the first generation "
          f"{results['first_generate_first_token_s']:.2f} s (loads the model), then "
          f"{results['warm_first_token_s'] * 1e3:.0f} ms with the model loaded and one client "
          f"(direct: {ref['first_token_s'] * 1e3:.0f} ms)\n")
    print("| phase | clients | answered | req/s | p50 | p95 | p99 | first token p50 / p95 | 429 | 5xx | RSS before → after "
          "| direct API, one at a time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in results["phases"]:
        ft = f"{p['first_token_p50_s'] * 1e3:.0f} / {p['first_token_p95_s'] * 1e3:.0f} ms" \
            if p["first_token_p50_s"] is not None else ""
        direct = f"{ref['sample_s'] * 1e3:.1f} ms" if p["phase"] == "sample" else \
            f"{ref['generate_s'] * 1e3:.0f} ms (first token {ref['first_token_s'] * 1e3:.0f} ms)"
        print(f"| {p['phase']} | {a.clients} | {p['answered']} | {p['throughput_rps']:.1f} | {p['p50_s'] * 1e3:.0f} ms | "
              f"{p['p95_s'] * 1e3:.0f} ms | {p['p99_s'] * 1e3:.0f} ms | {ft} | {p['refused_429']} | {p['errors_5xx']} | "
              f"{p['rss_before_mb']:.0f} → {p['rss_after_mb']:.0f} MB | {direct} |")
    q, cache = results["health"]["queue"], results["health"]["cache"]
    print(f"\nserver: idle after the first sample {results['rss_idle_mb']:.0f} MB, at the end "
          f"{results['rss_end_mb']:.0f} MB; model cache {cache['bytes'] / 2**20:.1f} MB ({', '.join(cache['models'])}); "
          f"queue: {q['completed']} completed, {q['rejected']} refused, {q['timed_out']} timed out")
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))
    if a.runs is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
