"""`genlab serve`: a REST API (OpenAPI docs at /docs) and a browser playground over
genlab's Python API, shipped inside the package (no CDN: the page works offline).

    from genlab.serve import create_app, serve
    app = create_app("runs")          # a FastAPI app (test it with httpx / TestClient)
    serve("runs", port=8000)          # uvicorn on 127.0.0.1:8000 until Ctrl-C

It sits beside the CLI, above genlab.api: like the CLI it calls the API and nothing else
of genlab (an import-linter contract checks it).
"""
from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import uvicorn

from ..util.errors import GenlabError, check
from .app import create_app
from .state import MAX_N, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, Limits, is_loopback

__all__ = ["Limits", "MAX_N", "MAX_NEW_TOKENS", "MAX_PROMPT_CHARS", "check_address", "create_app", "serve"]


def check_address(host: str, port: int, token: str | None) -> None:
    """Refuse, before anything starts, a host other than loopback without a token, a bad
    port, or a port something else already holds."""
    check(isinstance(port, int) and 0 <= port <= 65535, f"--port {port}: give a port number 0-65535")
    if not is_loopback(host):
        check(token, f"--host {host} is reachable from other machines: give --token SECRET too (every request "
                     "must then carry it), or serve on 127.0.0.1")
    check(token is None or len(token) >= 8, "--token: use at least 8 characters")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise GenlabError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise GenlabError(f"port {port} on {host} is in use (another server?): give --port with a free one") \
                    from None
            raise GenlabError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def serve(runs="runs", host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          limits: Limits | None = None, preferences=None, log=print, ready=None) -> None:
    """Serve the runs in the folder `runs` (and the installed built-in models) until
    interrupted. `ready`: called with the URL once the server answers."""
    root = Path(runs)
    check(root.is_dir() or str(runs) == "runs", f"--runs {runs}: no such folder")
    check_address(host, port, token)
    if not is_loopback(host):
        print(f"genlab serve: warning: listening on {host}, reachable from other machines; every request must "
              "carry the token", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"

    def started():
        log(f"genlab serve: {url}{'?token=...' if token else ''}  (the API's docs: {url}docs; Ctrl-C stops)")
        if ready:
            ready(url)
    app = create_app(root, limits=limits, token=token, preferences=preferences, on_start=started)
    if not root.is_dir():
        log(f"(no {root}/ folder here: serving the built-in models only; give --runs DIR for your runs)")
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                      timeout_graceful_shutdown=3)).run()
    except KeyboardInterrupt:   # (uvicorn shuts down, then passes Ctrl-C on): the usual way to stop
        pass
    log("genlab serve: stopped")
