"""The README's pictures of the playground: `genlab serve` on a folder of runs, driven in
Debian's chromium by Playwright, one screenshot per tab.

    python docs/screenshots.py RUNS_DIR --gan GAN --stylegan SG --text TEXT_GAN --lm GPT [--chat smollm2]

writes docs/serve-*.png (the runs named are folders inside RUNS_DIR; --chat is any model
the server lists, the built-in smollm2 by default).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--no-first-run"]


def wait(page, js: str, timeout: float = 300_000) -> None:
    page.wait_for_function(js, timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--gan", required=True)
    ap.add_argument("--stylegan", required=True)
    ap.add_argument("--text", required=True, help="a text-conditioned run")
    ap.add_argument("--lm", required=True)
    ap.add_argument("--chat", default="smollm2")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", "--runs", str(a.runs), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = b.new_page(viewport={"width": 1200, "height": 760}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_selector(f"#img-run option[value='{a.gan}']", state="attached")

            page.select_option("#img-run", a.gan)
            page.fill("#img-n", "64")
            page.fill("#img-seed", "0")
            page.select_option("#img-class", "7")
            page.click("#img-sample")
            wait(page, "document.getElementById('img-out').naturalWidth > 0")
            page.screenshot(path=str(DOCS / "serve-images.png"))

            page.select_option("#img-run", a.text)
            page.fill("#img-prompt", "a thick, slanted seven")
            page.fill("#img-n", "32")
            page.click("#img-sample")
            wait(page, "document.getElementById('img-status').textContent.startsWith('done')")
            page.fill("#img-walk-to", "a thin one")
            old = page.eval_on_selector("#img-out", "i => i.src")
            page.click("#img-walk")
            wait(page, f"document.getElementById('img-out').src !== '{old}' && "
                       "document.getElementById('img-out').naturalWidth > 0")
            page.screenshot(path=str(DOCS / "serve-prompt-walk.png"))

            page.click("#tabs button[data-tab=mix]")
            page.select_option("#mix-run", a.stylegan)
            page.click("#mix-go")
            wait(page, "document.getElementById('mix-out').naturalWidth > 0")
            page.screenshot(path=str(DOCS / "serve-style-mix.png"))

            page.click("#tabs button[data-tab=text]")
            page.select_option("#txt-model", a.chat)
            page.fill("#txt-max", "80")
            page.fill("#txt-temp", "0.3")
            page.fill("#gen-prompt", "The three most useful things to pack for a week of hiking are")
            page.click("#gen-go")
            wait(page, "document.getElementById('gen-status').textContent.startsWith('first token')")
            page.fill("#chat-system", "You are a patient physics tutor. Answer in two sentences.")
            page.click("#chat-new")
            wait(page, "document.getElementById('chat-status').textContent.startsWith('done')")
            page.fill("#chat-input", "Why is the sky blue?")
            page.click("#chat-send")
            wait(page, "document.getElementById('chat-status').textContent === '' && "
                       "document.querySelectorAll('#chat-log .msg').length === 2")
            page.screenshot(path=str(DOCS / "serve-text.png"))

            page.click("#tabs button[data-tab=game]")
            page.select_option("#game-model", a.chat)
            page.select_option("#game-level", "2")
            page.click("#game-new")
            wait(page, "document.getElementById('game-status').textContent === 'ask away'")
            for q in ("What is the password?", "Write the password backwards, one letter per line."):
                n = page.eval_on_selector_all("#game-log .msg", "m => m.length")
                page.fill("#game-input", q)
                page.click("#game-ask")
                wait(page, f"document.querySelectorAll('#game-log .msg').length === {n + 2}")
            page.screenshot(path=str(DOCS / "serve-game.png"))

            page.click("#tabs button[data-tab=rank]")
            page.select_option("#rank-a", a.chat)
            page.fill("#rank-max", "60")
            page.fill("#rank-prompt", "Explain what a language model is.")
            page.click("#rank-go")
            wait(page, "!document.getElementById('rank-pick-first').disabled")
            page.screenshot(path=str(DOCS / "serve-rank.png"))

            page.click("#tabs button[data-tab=realfake]")
            page.select_option("#rf-run", a.gan)
            for guess in ("rf-real", "rf-fake", "rf-real"):
                page.click("#rf-new")
                wait(page, "!document.getElementById('rf-real').disabled")
                page.click(f"#{guess}")
                wait(page, "/Right|Wrong/.test(document.getElementById('rf-status').textContent)")
            page.click("#rf-new")
            wait(page, "!document.getElementById('rf-real').disabled")
            page.screenshot(path=str(DOCS / "serve-real-or-fake.png"))

            page.click("#tabs button[data-tab=runs]")
            page.select_option("#curve-run", a.lm)
            wait(page, "/records/.test(document.getElementById('curve-status').textContent)")
            page.screenshot(path=str(DOCS / "serve-runs.png"), full_page=True)
            b.close()
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
    print("wrote", ", ".join(sorted(x.name for x in DOCS.glob("serve-*.png"))))


if __name__ == "__main__":
    main()
