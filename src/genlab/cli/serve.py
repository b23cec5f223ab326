"""genlab serve: the REST API and the browser playground (genlab.serve)."""
from __future__ import annotations

import argparse

from .options import command


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return v
    return parse


def register(commands) -> None:
    sv = command(
        commands, "serve", "a browser playground and a REST API over your runs (http://127.0.0.1:8000/)",
        "Serves the page (images: samples, seeds, truncation, class or prompt, latent walks;\n"
        "style mixing; text: generate and chat, streamed; the secret-keeping game; rank two\n"
        "responses; real or fake?; runs: live loss curves) and the REST API it uses (OpenAPI\n"
        "docs at /docs). Everything is inside the package: no request leaves this machine.\n"
        "\n"
        "Runs are named by their folder inside --runs (no request names a path); the\n"
        "installed built-in models (smollm2) are there too. Rankings are appended to\n"
        "--preferences ({prompt, chosen, rejected}, what genlab reward train and genlab\n"
        "finetune --method dpo read); real-or-fake guesses to each run's human_eval.jsonl.\n"
        "\n"
        "Safety: binds 127.0.0.1 unless --host says otherwise; another host needs --token\n"
        "(every request must carry it: Authorization: Bearer TOKEN, or open /?token=TOKEN).\n"
        "Limits: 1,024 images and 2,048 new tokens per request, 4,000 characters per prompt,\n"
        "--max-body bytes per body; --queue requests run or wait at once (more: 429), each\n"
        "for at most --timeout seconds (then 503); loaded models stay in an LRU cache of\n"
        "--cache-mb.",
        "examples:\n"
        "  genlab serve                                  # runs/ and smollm2 on http://127.0.0.1:8000/\n"
        "  genlab serve --runs runs --port 8080\n"
        "  genlab serve --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"   # reachable from the network")
    sv.add_argument("--runs", default="runs", metavar="DIR", help="the folder whose runs to serve (default runs)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="default 8000")
    sv.add_argument("--token", default=None, help="a secret every request must carry (needed off loopback)")
    sv.add_argument("--preferences", default=None, metavar="FILE",
                    help="the JSONL the ranking tab appends to (default RUNS/preferences.jsonl)")
    sv.add_argument("--workers", type=_positive(int), default=1,
                    help="requests computed at once (default 1: each uses all cores)")
    sv.add_argument("--queue", type=_positive(int), default=8, help="requests running or waiting (default 8)")
    sv.add_argument("--timeout", type=_positive(float), default=120.0, metavar="SECONDS",
                    help="longest a request may wait and run (default 120)")
    sv.add_argument("--cache-mb", type=_positive(float), default=2048, metavar="MB",
                    help="memory the loaded models may hold (default 2048)")
    sv.add_argument("--max-body", type=_positive(int), default=65536, metavar="BYTES",
                    help="largest request body (default 65536)")
    sv.set_defaults(func=_serve)


def _serve(a) -> int:
    from .. import serve as server  # (FastAPI and uvicorn: most commands never need them)
    server.serve(a.runs, host=a.host, port=a.port, token=a.token, preferences=a.preferences,
                 limits=server.Limits(max_body=a.max_body, queue=a.queue, workers=a.workers, timeout=a.timeout,
                                      cache_mb=a.cache_mb))
    return 0
