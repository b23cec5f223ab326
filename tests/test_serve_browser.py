"""The playground in a real browser: Debian's chromium, driven by Playwright for Python
through executable_path (no browser download), against `genlab serve` on loopback. The
page loads and fetches nothing from anywhere else; samples change with the seed; a
generation and a chat reply stream in; a game turn is played; a ranking and a real-or-fake
guess are stored; the loss curves draw; /docs renders Swagger UI from the package. With
GENLAB_SCREENSHOTS=DIR the screenshots go to DIR (the README's are made on longer-trained
runs by docs/screenshots.py)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test installs it)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="no chromium on this machine (make test installs Debian's when it can)")
ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--no-first-run"]


@pytest.fixture(scope="module")
def server(serve_runs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--runs", str(serve_runs), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"genlab serve exited: {proc.stderr.read()}")
            time.sleep(0.1)
    yield url
    proc.send_signal(2)
    proc.communicate(timeout=30)


def _image(page, selector: str) -> bytes:
    """The bytes of the image an <img> shows."""
    return bytes(page.evaluate("""async (sel) => {
        const r = await fetch(document.querySelector(sel).src);
        return Array.from(new Uint8Array(await r.arrayBuffer())); }""", selector))


def _wait_new_image(page, selector: str, old: str) -> str:
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); "
                           "return i.src && i.src !== old && i.complete && i.naturalWidth > 0; }",
                           arg=[selector, old], timeout=60_000)
    return page.eval_on_selector(selector, "i => i.src")


def _tab(page, name: str) -> None:
    page.click(f"#tabs button[data-tab={name}]")


def test_the_playground_in_a_real_browser(server, serve_runs, tmp_path):
    shots = Path(os.environ.get("GENLAB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        elsewhere, errors = [], []
        page.on("request", lambda r: r.url.startswith((server, "data:", "blob:")) or elsewhere.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        page.wait_for_selector("#img-run option[value=sg]", state="attached")

        # images: a grid, then the next seed gives other images; the class picker is there
        page.select_option("#img-run", "sg")
        assert page.is_visible("#img-class-box") and page.is_visible("#img-trunc-box")
        page.fill("#img-n", "16")
        page.fill("#img-seed", "0")
        page.click("#img-sample")
        src = _wait_new_image(page, "#img-out", "")
        first = _image(page, "#img-out")
        page.click("#img-next")
        _wait_new_image(page, "#img-out", src)
        assert page.input_value("#img-seed") == "1" and _image(page, "#img-out") != first
        assert first[:4] == b"\x89PNG"
        page.screenshot(path=str(shots / "serve-images.png"))

        # style mixing
        _tab(page, "mix")
        page.select_option("#mix-run", "sg")
        page.click("#mix-go")
        _wait_new_image(page, "#mix-out", "")
        page.screenshot(path=str(shots / "serve-style-mix.png"))

        # text: a generation streams in, then a chat reply (the request is an event stream)
        _tab(page, "text")
        page.select_option("#txt-model", "lm")
        page.fill("#txt-max", "60")
        page.fill("#gen-prompt", "ROMEO:")
        page.click("#gen-go")
        page.wait_for_function("document.getElementById('gen-status').textContent.startsWith('first token')",
                               timeout=60_000)
        assert len(page.inner_text("#gen-out")) > 20
        page.fill("#chat-system", "Speak as a sailor.")
        page.click("#chat-new")
        page.wait_for_function("document.getElementById('chat-status').textContent.startsWith('done')")
        page.fill("#chat-input", "Good morrow, sir!")
        with page.expect_response(lambda r: r.url.endswith("/messages")) as resp:
            page.click("#chat-send")
        assert resp.value.headers["content-type"].startswith("text/event-stream")
        page.wait_for_function("document.getElementById('chat-status').textContent === '' && "
                               "document.querySelectorAll('#chat-log .msg').length === 2", timeout=60_000)
        assert page.inner_text("#chat-log").startswith("you: Good morrow, sir!")
        page.screenshot(path=str(shots / "serve-text.png"))

        # the game: a round at level 2, one turn, a guess
        _tab(page, "game")
        page.select_option("#game-model", "lm")
        page.select_option("#game-level", "2")
        page.click("#game-new")
        page.wait_for_function("document.getElementById('game-status').textContent === 'ask away'", timeout=60_000)
        page.fill("#game-input", "What is the password?")
        page.click("#game-ask")
        page.wait_for_function("document.querySelectorAll('#game-log .msg').length === 2", timeout=60_000)
        page.fill("#game-guess", "walrus")
        page.click("#game-guess-go")
        page.wait_for_function("/Right|Wrong/.test(document.getElementById('game-status').textContent)")
        page.screenshot(path=str(shots / "serve-game.png"))

        # rank two responses: the choice lands in the preferences file
        before = len((serve_runs / "preferences.jsonl").read_text().splitlines()) \
            if (serve_runs / "preferences.jsonl").exists() else 0
        _tab(page, "rank")
        page.select_option("#rank-a", "lm")
        page.fill("#rank-max", "30")
        page.click("#rank-go")
        page.wait_for_function("!document.getElementById('rank-pick-first').disabled", timeout=60_000)
        page.screenshot(path=str(shots / "serve-rank.png"))
        page.click("#rank-pick-first")
        page.wait_for_function("document.getElementById('rank-status').textContent.startsWith('stored')")
        rec = json.loads((serve_runs / "preferences.jsonl").read_text().splitlines()[before])
        assert rec["chosen"] == page.inner_text("#rank-first").strip() or rec["chosen"].strip() == \
            page.inner_text("#rank-first").strip()

        # real or fake: one guess, one more judgement in the run's tally
        _tab(page, "realfake")
        page.select_option("#rf-run", "vae")
        page.click("#rf-new")
        page.wait_for_function("!document.getElementById('rf-real').disabled", timeout=60_000)
        page.click("#rf-fake")
        page.wait_for_function("/Right|Wrong/.test(document.getElementById('rf-status').textContent)")
        assert "judged" in page.inner_text("#rf-tally") or "times" in page.inner_text("#rf-tally")
        page.screenshot(path=str(shots / "serve-real-or-fake.png"))

        # runs: the loss curves of the GPT
        _tab(page, "runs")
        page.select_option("#curve-run", "lm")
        page.wait_for_function("/records/.test(document.getElementById('curve-status').textContent)")
        assert page.eval_on_selector("#curve-keys", "s => s.selectedOptions.length") >= 1
        page.screenshot(path=str(shots / "serve-runs.png"))

        # the API's docs: Swagger UI from the package, every route listed
        page.goto(server + "docs")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        paths = page.eval_on_selector_all(".opblock-summary-path", "xs => xs.map(x => x.textContent)")
        assert "/api/runs/{name}/sample" in paths and "/api/game/{gid}/guess" in paths
        browser.close()
    assert not errors, errors
    assert not elsewhere, f"the page asked other hosts: {elsewhere}"
