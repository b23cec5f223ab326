"""What the server keeps between requests: the limits it enforces, the runs it may name,
the models it has loaded (an LRU cache within a memory cap), the bounded queue of work
for the CPU, and the sessions (chats, games, ranking and real-or-fake rounds) whose
secrets never leave the server."""
from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import api
from ..util.memory import tensor_bytes

# Hard limits: part of the API's contract (the OpenAPI schema states them).
MAX_N = 1024                 # images per request
MAX_NEW_TOKENS = 2048        # tokens per generation
MAX_PROMPT_CHARS = 4000      # characters of any prompt, message or system prompt
MAX_WALK = 64                # pairs or steps of a latent walk (at most MAX_N images in all)
MAX_TURNS = 100              # turns a chat or a game round keeps
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class Limits:
    """What the operator may tune (genlab serve's flags)."""
    max_body: int = 64 * 1024    # bytes of a request body
    queue: int = 8               # requests running or waiting for the CPU; past it, 429
    workers: int = 1             # requests computed at once (each uses all of torch's threads)
    timeout: float = 120.0       # seconds a request may wait and run
    cache_mb: float = 2048       # memory the loaded models may hold
    sessions: int = 256          # chats, games and rounds kept (oldest dropped first)
    session_ttl: float = 3600.0  # seconds a session lives unused


class ApiError(Exception):
    """An answer other than success: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- runs, by name only ----------------------------------------------------------------------

class Catalogue:
    """The runs directly inside the --runs folder and the installed built-in models, each
    addressed by its name alone. A name is letters, digits, '.', '_' and '-' (no '/', no
    '..'); a run folder that is a symlink must point inside the folder. Nothing a request
    sends is ever used as a path."""

    def __init__(self, root):
        self.root = Path(root)
        self.real_root = self.root.resolve()

    def runs(self) -> list[dict]:
        """The runs and models a request may name (a link out of the folder is left out)."""
        out = []
        for r in api.list_runs(self.root):
            try:
                self.locate(r["name"])
            except ApiError:
                continue
            out.append(r)
        return out

    def _builtin(self, name: str) -> bool:
        return any(m["name"] == name and m.get("installed") for m in api.models())

    def locate(self, name: str) -> Path | None:
        """The run folder of `name` (resolved), or None for a built-in foundation model."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
            raise ApiError(404, f"unknown run {name[:80]!r}: a run is named by its folder's name "
                                "(letters, digits, '.', '_', '-'); GET /api/runs lists them")
        p = self.root / name
        if p.is_dir():
            real = p.resolve()
            if real != self.real_root and self.real_root in real.parents and (real / "config.json").is_file():
                return real
        if self._builtin(name):
            return None
        raise ApiError(404, f"unknown run '{name}' (GET /api/runs lists the runs and models this server has)")

    def describe(self, name: str) -> dict:
        where = self.locate(name)
        return {"name": name, **(api.describe_model(name) if where is None else api.describe(where))}

    def require(self, name: str, verb: str) -> dict:
        """describe(name), refused (400) with what the run can do when `verb` is not among it."""
        d = self.describe(name)
        if verb not in d["verbs"]:
            raise ApiError(400, f"'{name}': {_a(d)}, which cannot {verb} (it can: {', '.join(d['verbs']) or 'nothing'})")
        return d


def _a(d: dict) -> str:
    return "a built-in foundation model" if d["family"] == "foundation" else f"a '{d['family']}' run"


# -- loaded models ---------------------------------------------------------------------------

class ModelCache:
    """Loaded models by key, the least recently used dropped first when together they hold
    more than `cap` bytes (the newest always stays). Each entry has a lock: one request at
    a time uses a model (their generation state is not shared between threads)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.items: OrderedDict = OrderedDict()   # key -> (obj, bytes, lock)
        self.lock = threading.Lock()
        self.loads = self.hits = self.evictions = 0

    def get(self, key, load):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                self.hits += 1
                return self.items[key][0], self.items[key][2]
            obj = load()
            size = tensor_bytes(obj)
            self.items[key] = (obj, size, threading.Lock())
            self.loads += 1
            while len(self.items) > 1 and sum(v[1] for v in self.items.values()) > self.cap:
                self.items.popitem(last=False)
                self.evictions += 1
            return obj, self.items[key][2]

    def drop_other_versions(self, name, stamp) -> None:
        with self.lock:
            for key in [k for k in self.items if k[0] == name and k[1] != stamp]:
                del self.items[key]

    def stats(self) -> dict:
        with self.lock:
            return {"models": [str(k[0]) for k in self.items], "bytes": sum(v[1] for v in self.items.values()),
                    "cap_bytes": self.cap, "loads": self.loads, "hits": self.hits, "evictions": self.evictions}


# -- the CPU's queue -------------------------------------------------------------------------

class Busy(ApiError):
    def __init__(self, depth: int):
        super().__init__(429, f"the server is busy ({depth} requests running or waiting): try again shortly",
                         headers={"Retry-After": "1"})


class WorkQueue:
    """A fixed pool of worker threads and a bound on the requests running or waiting:
    past it a request is refused at once (429), so concurrent clients never oversubscribe
    the cores and waiting never grows without end."""

    def __init__(self, workers: int, depth: int):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="genlab-worker")
        self.depth = depth
        self.active = 0
        self.lock = threading.Lock()
        self.rejected = self.completed = self.timed_out = 0

    def submit(self, fn) -> Future:
        with self.lock:
            if self.active >= self.depth:
                self.rejected += 1
                raise Busy(self.depth)
            self.active += 1
        fut = self.pool.submit(fn)
        fut.add_done_callback(self._release)
        return fut

    def _release(self, fut) -> None:
        with self.lock:
            self.active -= 1
            self.completed += 1

    async def run(self, fn, timeout: float):
        """fn() on a worker; its result, or 503 when it has not finished within `timeout`
        (a request still waiting is dropped; one that started finishes unseen)."""
        fut = self.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except asyncio.TimeoutError:
            fut.cancel()
            with self.lock:
                self.timed_out += 1
            raise ApiError(503, f"the request took longer than the server's limit of {timeout:g} s") from None

    def stats(self) -> dict:
        with self.lock:
            return {"active": self.active, "depth": self.depth, "rejected": self.rejected,
                    "completed": self.completed, "timed_out": self.timed_out}

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Pipe:
    """Items from a worker thread to the event loop: the loop is woken once for whatever has
    come since it last looked, not once per item (a token stream costs a few wake-ups, not
    one per token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.ready = loop, deque(), asyncio.Event()
        self.signalled = threading.Event()

    def put(self, item) -> None:          # (the worker's side)
        self.items.append(item)
        if not self.signalled.is_set():
            self.signalled.set()
            self.loop.call_soon_threadsafe(self.ready.set)

    async def get_all(self) -> list:      # (the loop's side)
        while True:
            await self.ready.wait()
            self.ready.clear()
            self.signalled.clear()        # before draining: a later put wakes the loop again
            out = []
            while self.items:
                out.append(self.items.popleft())
            if out:
                return out


# -- sessions --------------------------------------------------------------------------------

class Sessions:
    """Server-side objects by random id (a chat with its system prompt, a game with its
    secret, a pending ranking or real-or-fake round), each with its own lock; at most
    `cap` kept, the least recently used dropped first, and none unused for `ttl` seconds."""

    def __init__(self, cap: int, ttl: float):
        self.cap, self.ttl = cap, ttl
        self.items: OrderedDict = OrderedDict()   # id -> [kind, obj, last used, lock]
        self.lock = threading.Lock()

    def new(self, kind: str, obj) -> str:
        sid = secrets.token_urlsafe(12)
        with self.lock:
            self._expire()
            self.items[sid] = [kind, obj, time.monotonic(), threading.Lock()]
            while len(self.items) > self.cap:
                self.items.popitem(last=False)
        return sid

    def get(self, kind: str, sid: str, what: str):
        """(obj, lock) of session `sid` of this kind, or 404."""
        with self.lock:
            self._expire()
            item = self.items.get(sid)
            if item is None or item[0] != kind:
                raise ApiError(404, f"unknown {what} '{str(sid)[:40]}' (it may have expired: start a new one)")
            item[2] = time.monotonic()
            self.items.move_to_end(sid)
            return item[1], item[3]

    def pop(self, kind: str, sid: str, what: str):
        obj, lock = self.get(kind, sid, what)
        with self.lock:
            self.items.pop(sid, None)
        return obj, lock

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self.items.items() if now - v[2] > self.ttl]:
            del self.items[sid]

    def count(self) -> dict:
        with self.lock:
            out: dict = {}
            for v in self.items.values():
                out[v[0]] = out.get(v[0], 0) + 1
            return out
