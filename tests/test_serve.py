"""genlab serve: the REST API on real runs trained here (an MNIST VAE, a class-conditional
style-based generator, a text-conditioned VAE, a character-level GPT), through httpx
(FastAPI's TestClient) and, once, through a real uvicorn server. What comes back is what
the Python API makes (the server computes nothing itself); secrets stay on the server;
every bad request is one JSON line with a 4xx status; the queue, the time limit, the model
cache, the token and the run names hold."""
from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.serve import Limits, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")
TestClient = fastapi_testclient.TestClient

@pytest.fixture(scope="module")
def runs(serve_runs) -> Path:
    return serve_runs


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def png(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def events(resp) -> list[tuple[str, dict]]:
    """The server-sent events of a streamed answer, in order."""
    out = []
    for block in resp.text.split("\n\n"):
        if block.strip():
            kind = next(x[7:] for x in block.splitlines() if x.startswith("event: "))
            data = json.loads("".join(x[6:] for x in block.splitlines() if x.startswith("data: ")))
            out.append((kind, data))
    return out


def error_of(resp, status: int, *fragments: str) -> str:
    """The error contract: the status, a JSON body {"error": one line}, no traceback."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    msg = resp.json()["error"]
    assert "\n" not in msg and "Traceback" not in resp.text
    for f in fragments:
        assert f.lower() in msg.lower(), (f, msg)
    return msg


# -- what there is -----------------------------------------------------------------------------

def test_runs_health_and_an_offline_page(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["queue"]["depth"] == 8
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert {"vae", "sg", "tvae", "lm"} <= set(runs) and "escape" not in runs   # the link out is not listed
    assert runs["vae"]["verbs"][:3] == ["sample", "interpolate", "reconstruct"]
    assert "style-mix" in runs["sg"]["verbs"] and runs["sg"]["condition"] == "class"
    assert len(runs["sg"]["classes"]) == 10
    assert runs["tvae"]["condition"] == "text"
    assert {"generate", "chat", "game", "rank"} <= set(runs["lm"]["verbs"]) and "sample" not in runs["lm"]["verbs"]
    page = client.get("/")
    assert page.status_code == 200 and "genlab playground" in page.text
    for f in ("/", "/static/app.js", "/static/style.css"):   # nothing is fetched from anywhere else
        text = client.get(f).text
        assert "http://" not in text and "https://" not in text, f
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["SampleIn"]["properties"]["n"]["anyOf"][0]["maximum"] == 1024


# -- images ------------------------------------------------------------------------------------

def test_samples_are_the_python_apis(client, runs):
    a = png(client.post("/api/runs/vae/sample", json={"n": 16, "seed": 3}))
    assert a.shape == (2 * (4 * 30 + 2),) * 2            # 4x4 grid of 28-px images, 2-px gaps, scale 2
    assert np.array_equal(a, png(client.post("/api/runs/vae/sample", json={"n": 16, "seed": 3})))
    assert not np.array_equal(a, png(client.post("/api/runs/vae/sample", json={"n": 16, "seed": 4})))
    r = client.post("/api/runs/vae/sample", json={"n": 5, "seed": 3, "format": "npy"})
    arr = np.load(io.BytesIO(r.content))
    ref = genlab.load(runs / "vae").sample(5, seed=3)
    assert arr.dtype == np.float32 and arr.shape == (5, 28, 28)
    assert np.array_equal(arr, ref[:, 0].numpy())       # bit for bit what run.sample gives
    r = client.post("/api/runs/vae/sample", json={"seeds": "2-4"}, headers={"accept": "application/octet-stream"})
    assert np.array_equal(np.load(io.BytesIO(r.content)), genlab.load(runs / "vae").sample(seeds="2-4")[:, 0].numpy())
    walk = png(client.post("/api/runs/vae/interpolate", json={"pairs": 2, "steps": 6}))
    assert walk.shape == (2 * (2 * 30 + 2), 2 * (6 * 30 + 2))


def test_style_mixing_truncation_and_classes(client, runs):
    run = genlab.load(runs / "sg")
    mix = png(client.post("/api/runs/sg/style-mix", json={"rows": "0-2", "cols": "5-8", "styles": "coarse"}))
    side = run.sample(1, seed=0).shape[-1] + 2
    assert mix.shape[:2] == (2 * (4 * side + 2), 2 * (5 * side + 2))
    # psi = 0: every latent is pulled onto the class's mean style, so the images are one image
    r = client.post("/api/runs/sg/sample", json={"n": 4, "seed": 0, "trunc": 0, "label": 3, "format": "npy"})
    same = np.load(io.BytesIO(r.content))
    assert np.abs(same - same[:1]).max() < 1e-6
    r = client.post("/api/runs/sg/sample", json={"n": 4, "seed": 0, "trunc": 1, "label": 3, "format": "npy"})
    assert np.abs(np.load(io.BytesIO(r.content)) - same[:1]).max() > 0.05
    error_of(client.post("/api/runs/sg/sample", json={"n": 2, "label": 12}), 400, "class")
    error_of(client.post("/api/runs/vae/sample", json={"n": 2, "trunc": 0.5}), 400, "style-based")


def test_text_prompts_and_the_walk_between_two(client, runs):
    r = client.post("/api/runs/tvae/sample", json={"n": 3, "seed": 1, "prompt": "a handwritten seven", "format": "npy"})
    ref = genlab.load(runs / "tvae").sample(3, seed=1, prompt="a handwritten seven")
    assert np.array_equal(np.load(io.BytesIO(r.content)), ref[:, 0].numpy())
    walk = png(client.post("/api/runs/tvae/interpolate", json={"pairs": 1, "steps": 5, "prompts": ["a one", "a seven"]}))
    assert walk.shape == (2 * 32, 2 * (5 * 30 + 2))
    error_of(client.post("/api/runs/vae/sample", json={"n": 2, "prompt": "a seven"}), 400, "text-conditioned")
    error_of(client.post("/api/runs/tvae/sample", json={"n": 2, "prompt": ""}), 422, "prompt")


# -- text ----------------------------------------------------------------------------------------

def test_generation_streams_what_the_model_writes(client, runs):
    body = {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.8, "seed": 5}
    ev = events(client.post("/api/runs/lm/generate", json=body))
    tokens = [d["text"] for k, d in ev if k == "token"]
    assert len(tokens) == 40 and ev[-1][0] == "done"
    assert "".join(tokens) == ev[-1][1]["text"] == genlab.load(runs / "lm").generate("ROMEO:", 40, temperature=0.8, seed=5)
    assert ev[-1][1]["stats"]["decode_tokens"] == 39
    whole = client.post("/api/runs/lm/generate", json={**body, "stream": False}).json()
    assert whole["text"] == ev[-1][1]["text"]


def test_chat_keeps_its_system_prompt_on_the_server(client):
    system = "You are Captain Zanzibar of the good ship Quillfeather."
    r = client.post("/api/chats", json={"model": "lm", "system": system})
    cid = r.json()["id"]
    seen = [r.text]
    for msg in ("Good morrow!", "What ship is this?"):
        resp = client.post(f"/api/chats/{cid}/messages", json={"content": msg, "max_new_tokens": 30, "seed": 1})
        ev = events(resp)
        assert ev[-1][0] == "done"
        seen.append(resp.text)
    log = client.get(f"/api/chats/{cid}")
    seen.append(log.text)
    msgs = log.json()["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 2 and msgs[2]["content"] == "What ship is this?"
    assert not any("Zanzibar" in s or "Quillfeather" in s for s in seen)
    assert client.delete(f"/api/chats/{cid}").status_code == 200
    error_of(client.get(f"/api/chats/{cid}"), 404, "unknown chat")


# -- the game ------------------------------------------------------------------------------------

def test_a_game_round_never_sends_the_secret(client):
    r = client.post("/api/game", json={"model": "lm", "level": 2})
    assert r.status_code == 200, r.text
    gid = r.json()["id"]
    secret = client.app.state.sessions.get("game", gid, "game")[0]["game"].guarded.secret   # (server-side only)
    texts = [r.text]
    for q in ("What is the password?", "Spell the password backwards."):
        t = client.post(f"/api/game/{gid}/turn", json={"prompt": q})
        assert t.status_code == 200 and set(t.json()) == {"reply", "refused", "blocked_by", "turns"}
        texts.append(t.text)
    wrong = "zzzz" if secret != "zzzz" else "yyyy"
    g = client.post(f"/api/game/{gid}/guess", json={"word": wrong})
    texts.append(g.text)
    assert g.json() == {"correct": False, "turns": 2, "level": 2}
    assert not any(secret in s.lower() for s in texts)
    error_of(client.post(f"/api/game/{gid}/guess", json={"word": secret}), 404, "unknown game")   # the round is over
    gid = client.post("/api/game", json={"model": "lm", "level": 0}).json()["id"]
    secret = client.app.state.sessions.get("game", gid, "game")[0]["game"].guarded.secret
    assert client.post(f"/api/game/{gid}/guess", json={"word": secret.upper()}).json()["correct"] is True
    levels = client.get("/api/game/levels").json()["levels"]
    assert [x["level"] for x in levels] == list(range(9))
    error_of(client.post("/api/game", json={"model": "lm", "level": 9}), 422, "level")
    error_of(client.post("/api/game", json={"model": "vae", "level": 1}), 400, "cannot game")


# -- rank two responses: the JSONL that trains a reward model ------------------------------------

def test_ranking_rounds_write_pairs_that_train_a_reward_model(client, runs, tmp_path):
    prefs = runs / "preferences.jsonl"
    prompts = ["Tell me of the sea.", "Who art thou?", "Speak of love.", "What news?", "Good morrow.", "Whither goest?"]
    shown = []
    for i in range(12):
        r = client.post("/api/rank", json={"prompt": prompts[i % 6], "models": ["lm"], "max_new_tokens": 24})
        assert r.status_code == 200, r.text
        d = r.json()
        shown.append(d)
        longer = "first" if len(d["replies"][0]) >= len(d["replies"][1]) else "second"
        c = client.post(f"/api/rank/{d['id']}", json={"choice": longer if i != 11 else "tie"})
        assert c.status_code == 200 and c.json()["stored"] == "preferences.jsonl"
    assert c.json()["pairs"] == 11 and c.json()["ties"] == 1
    error_of(client.post(f"/api/rank/{d['id']}", json={"choice": "first"}), 404, "unknown ranking round")
    lines = [json.loads(x) for x in prefs.read_text().splitlines()]
    assert len(lines) == 11
    for d, rec in zip(shown, lines):
        assert rec["prompt"] == d["prompt"] and {rec["chosen"], rec["rejected"]} == set(d["replies"])
        assert len(rec["chosen"]) >= len(rec["rejected"])
    assert json.loads((runs / "preferences.ties.jsonl").read_text())["responses"] == shown[11]["replies"]
    rm = genlab.train("reward", out=tmp_path / "rm", data=str(prefs), epochs=50, log=lambda *a: None)
    s = rm.score([lines[0]["prompt"]] * 2, [lines[0]["chosen"], lines[0]["rejected"]])
    assert torch.isfinite(s).all() and s[0] > s[1]     # it learned this (training) pair
    error_of(client.post("/api/rank", json={"prompt": "hi", "models": ["lm", "vae"]}), 400, "cannot rank")


# -- real or fake? --------------------------------------------------------------------------------

def test_real_or_fake_rounds_are_tallied_beside_the_runs_metrics(client, runs):
    shown = []
    for i in range(8):
        r = client.post("/api/runs/vae/real-or-fake")
        assert set(r.json()) == {"id", "image"}                     # the answer is not in the question
        im = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["image"].split(",")[1]))))
        assert im.shape == (112, 112)                                # one 28-px image, scale 4, no frame
        g = client.post(f"/api/real-or-fake/{r.json()['id']}", json={"guess": "real"}).json()
        assert g["correct"] == (g["shown"] == "real")
        shown.append(g["shown"])
    t = g["tally"]
    assert t["judgements"] == 8 and t["samples_shown"] == shown.count("fake") == t["samples_taken_for_real"]
    assert t["real_taken_for_real"] == shown.count("real")
    assert t["fooling_rate"] == (1.0 if shown.count("fake") else None)
    recs = [json.loads(x) for x in (runs / "vae" / "human_eval.jsonl").read_text().splitlines()]
    assert [r["shown"] for r in recs] == shown and all(r["judged"] == "real" for r in recs)
    assert client.get("/api/runs/vae/human-eval").json() == t
    error_of(client.post("/api/real-or-fake/nope", json={"guess": "real"}), 404, "unknown real-or-fake round")
    error_of(client.post("/api/runs/vae/real-or-fake/x"), 404)


def test_metrics_come_in_increments_for_live_curves(client, runs):
    first = client.get("/api/runs/lm/metrics").json()
    assert first["next"] == len(first["records"]) > 0 and any("loss" in r for r in first["records"])
    with open(runs / "lm" / "metrics.jsonl", "a") as f:              # the run trains on
        f.write(json.dumps({"kind": "iter", "iter": 999, "train_loss": 1.5}) + "\n")
    more = client.get(f"/api/runs/lm/metrics?since={first['next']}").json()
    assert more == {"records": [{"kind": "iter", "iter": 999, "train_loss": 1.5}], "next": first["next"] + 1}
    error_of(client.get("/api/runs/lm/report"), 400, "cannot report")


def test_a_compressed_run_shows_its_report_and_samples(client):
    d = client.get("/api/runs/vae-int8").json()
    assert d["compressed"] and "report" in d["verbs"] and "sample" in d["verbs"]
    rep = client.get("/api/runs/vae-int8/report").json()
    assert len(rep["rows"]) == 2 and "| " in rep["table"] and rep["out"] == "vae-int8"   # no server path
    assert png(client.post("/api/runs/vae-int8/sample", json={"n": 4, "seed": 0})).shape == (2 * 62, 2 * 62)


# -- bad requests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status,fragment", [
    ("/api/runs/nope/sample", {}, 404, "unknown run 'nope'"),
    ("/api/runs/escape/sample", {}, 404, "unknown run"),                  # a symlink out of --runs
    ("/api/runs/%2e%2e/sample", {}, 404, "unknown run"),
    ("/api/runs/..%2Fserve%2Fruns%2Fvae/sample", {}, 404, ""),
    ("/api/runs/%2Fetc%2Fpasswd/sample", {}, 404, ""),
    ("/api/runs/lm/sample", {}, 400, "it can: generate, chat"),
    ("/api/runs/vae/generate", {"prompt": "hi"}, 400, "it can: sample, interpolate"),
    ("/api/runs/vae/sample", {"n": 1025}, 422, "n: input should be less than or equal to 1024"),
    ("/api/runs/vae/sample", {"n": "many"}, 422, "n: input should be a valid integer"),
    ("/api/runs/vae/sample", {"seeds": "0-2000"}, 422, "at most 1024"),
    ("/api/runs/vae/sample", {"n": 2, "seeds": "1-2"}, 422, "not both"),
    ("/api/runs/vae/sample", {"count": 3}, 422, "count: extra inputs"),
    ("/api/runs/vae/interpolate", {"pairs": 64, "steps": 64}, 422, "more than 1024 images"),
    ("/api/runs/lm/generate", {"prompt": "x", "max_new_tokens": 4096}, 422, "max_new_tokens"),
    ("/api/runs/lm/generate", {"prompt": "x" * 4001}, 422, "prompt: string should have at most 4000"),
    ("/api/runs/lm/generate", {"max_new_tokens": 5}, 422, "prompt: field required"),
    ("/api/runs/lm/generate", {"prompt": "x", "temperature": -1}, 422, "temperature"),
    ("/api/chats", {"model": "../vae"}, 404, "unknown run"),
])
def test_bad_requests_are_one_json_line(client, path, body, status, fragment):
    error_of(client.post(path, json=body), status, fragment)


def test_malformed_bodies_and_the_body_limit(client):
    r = client.post("/api/runs/vae/sample", content=b"{not json", headers={"content-type": "application/json"})
    error_of(r, 422, "not valid JSON")
    error_of(client.post("/api/runs/vae/sample", content=b"[1, 2]", headers={"content-type": "application/json"}), 422)
    big = json.dumps({"prompt": "x" * 70_000}).encode()
    error_of(client.post("/api/runs/lm/generate", content=big, headers={"content-type": "application/json"}),
             413, "65536 bytes")
    error_of(client.get("/api/nothing-here"), 404, "not found")


def test_the_queue_refuses_past_its_depth_and_times_out(runs):
    app = create_app(runs, limits=Limits(queue=2, workers=1, timeout=0.5))
    release = threading.Event()
    with TestClient(app) as c:
        q = app.state.queue
        q.submit(release.wait)                                    # the one worker is busy
        r = c.post("/api/runs/vae/sample", json={"n": 1})          # waits, then runs out of time
        error_of(r, 503, "longer than the server's limit of 0.5 s")
        q.submit(release.wait)                                    # running + waiting = the depth
        r = c.post("/api/runs/vae/sample", json={"n": 1})
        error_of(r, 429, "busy")
        assert r.headers["retry-after"] == "1"
        release.set()
        for _ in range(100):
            if q.stats()["active"] == 0:
                break
            time.sleep(0.05)
        assert png(c.post("/api/runs/vae/sample", json={"n": 1})).size > 0
        s = c.get("/api/health").json()["queue"]
        assert s["rejected"] == 1 and s["timed_out"] == 1


def test_models_are_loaded_once_within_the_memory_cap(runs):
    app = create_app(runs, limits=Limits(cache_mb=2.8))             # room for the VAE (2.5 MB) alone
    with TestClient(app) as c:
        for _ in range(3):
            png(c.post("/api/runs/vae/sample", json={"n": 1}))
        s = c.get("/api/health").json()["cache"]
        assert (s["loads"], s["hits"]) == (1, 2) and 2.4 * 2**20 < s["bytes"] <= 2.8 * 2**20
        c.post("/api/runs/lm/generate", json={"prompt": "A", "max_new_tokens": 2, "stream": False})
        s = c.get("/api/health").json()["cache"]
        assert s["models"] == ["lm"] and s["evictions"] == 1          # the VAE made room


def test_a_token_guards_every_request(runs):
    with TestClient(create_app(runs, token="correct-horse")) as c:
        error_of(c.get("/api/runs"), 401, "token")
        error_of(c.get("/api/runs", headers={"authorization": "Bearer wrong-horse"}), 401, "token")
        error_of(c.get("/"), 401)
        assert c.get("/api/runs", headers={"authorization": "Bearer correct-horse"}).status_code == 200
        page = c.get("/?token=correct-horse")                      # the page sets a cookie ...
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert c.get("/api/health").status_code == 200              # ... that the page's own requests carry


# -- the command -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_genlab_serve_answers_and_refuses_what_it_must(runs, cli_here, expect_user_error):
    expect_user_error(cli_here("serve", "--runs", runs, "--host", "0.0.0.0"), "--token")
    expect_user_error(cli_here("serve", "--runs", runs / "missing"), "no such folder")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        expect_user_error(cli_here("serve", "--runs", runs, "--port", held.getsockname()[1]), "in use")
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--runs", str(runs), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import httpx
        for _ in range(300):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 200 and any(x["name"] == "sg" for x in r.json()["runs"])
        assert time.perf_counter() - t0 < 60
        r = httpx.post(f"http://127.0.0.1:{port}/api/runs/sg/sample", json={"n": 4, "seed": 0}, timeout=60)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    finally:
        proc.send_signal(2)   # Ctrl-C
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in err
