"""The REST API and the page: a FastAPI app over genlab's Python API (every route calls
genlab.api or the run objects it returns; nothing here trains, samples or scores by
itself). create_app() builds it; genlab serve (serve/__init__.py) runs it with uvicorn.

Errors are JSON, {"error": "one line"}, with a 4xx status (422 for a malformed body,
naming the field; 429 when the work queue is full; 503 past the time limit); never a
traceback. Streams are server-sent events: `token` events {"text": piece}, then one
`done` {"text": the whole reply, "stats": ...} or one `error` {"error": ...}.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import threading
import time
from importlib import resources
from typing import List, Literal, Optional, Union
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs with Swagger UI from the package, not a CDN
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import api
from ..util.errors import GenlabError
from ..util.version import __version__
from .state import (
    MAX_N,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_TURNS,
    MAX_WALK,
    ApiError,
    Catalogue,
    Limits,
    ModelCache,
    Pipe,
    Sessions,
    WorkQueue,
)

log = logging.getLogger("genlab.serve")
STATIC = resources.files("genlab.serve") / "static"
FLUSH_S = 0.005   # a stream's pieces are sent at most this often after the first (a person sees no delay)
Prompt = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
Seeds = Union[str, List[int]]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")   # a misspelt field is an error, not ignored


# -- request bodies (their limits are part of the OpenAPI schema at /docs) ---------------------

class SampleIn(Body):
    n: Optional[int] = Field(None, ge=1, le=MAX_N, description="number of images (default 64)")
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    seeds: Optional[Seeds] = Field(None, description='one image per seed: "0-35,40" or a list')
    trunc: Optional[float] = Field(None, ge=-2, le=2, description="truncation psi (style-based generators)")
    label: Optional[Union[int, str]] = Field(None, description="class index or name (class-conditional runs)")
    prompt: Optional[str] = Prompt
    format: Literal["png", "npy"] = "png"
    per_row: Optional[int] = Field(None, ge=1, le=64)


class InterpolateIn(Body):
    pairs: int = Field(4, ge=1, le=MAX_WALK)
    steps: int = Field(10, ge=2, le=MAX_WALK)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    space: Literal["z", "w"] = "z"
    prompts: Optional[List[str]] = Field(None, min_length=2, max_length=2, description="walk from one text to another")


class StyleMixIn(Body):
    rows: Seeds = "0-3"
    cols: Seeds = "10-14"
    styles: str = Field("coarse", max_length=200, description="coarse, middle, fine, or layer indices")
    trunc: float = Field(1.0, ge=-2, le=2)
    label: Optional[Union[int, str]] = None


class GenerateIn(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(200, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.8, ge=0, le=5)
    top_k: Optional[int] = Field(200, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    stream: bool = True


class ChatIn(Body):
    model: str = Field(..., min_length=1, max_length=128)
    system: Optional[str] = Prompt


class MessageIn(Body):
    content: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(200, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.7, ge=0, le=5)
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    stream: bool = True


class GameIn(Body):
    model: str = Field(..., min_length=1, max_length=128)
    level: int = Field(1, ge=0, le=8)
    max_new_tokens: int = Field(64, ge=8, le=512)


class TurnIn(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)


class GuessIn(Body):
    word: str = Field(..., min_length=1, max_length=64)


class RankIn(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
    models: List[str] = Field(..., min_length=1, max_length=2, description="one model (two samples) or two")
    max_new_tokens: int = Field(96, ge=1, le=512)
    temperature: float = Field(0.8, ge=0, le=5)


class ChoiceIn(Body):
    choice: Literal["first", "second", "tie"]


class JudgeIn(Body):
    guess: Literal["real", "fake"]


# -- the app ------------------------------------------------------------------------------------

def create_app(runs="runs", limits: Limits | None = None, token: str | None = None, preferences=None,
               on_start=None) -> FastAPI:
    """The server's app over the runs in the folder `runs`. `token`: every request must
    carry it (Authorization: Bearer TOKEN, or the cookie the page sets after /?token=TOKEN).
    `preferences`: the JSONL file the ranking tab appends to (default RUNS/preferences.jsonl).
    `on_start`: called once the server is up."""
    limits = limits or Limits()
    cat = Catalogue(runs)
    prefs = preferences or (cat.root / "preferences.jsonl")
    cache = ModelCache(int(limits.cache_mb * 2**20))
    queue = WorkQueue(limits.workers, limits.queue)
    sessions = Sessions(limits.sessions, limits.session_ttl)
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if on_start is not None:
            on_start()
        yield
        queue.shutdown()

    app = FastAPIOffline(title="genlab", version=__version__, lifespan=lifespan, redoc_url=None, description=(
        "genlab's playground API: sample, interpolate and style-mix image runs; generate and chat with language "
        "models (streamed as server-sent events); play the secret-keeping game; rank two replies (a preferences "
        "JSONL for genlab reward train / finetune); guess real or fake. Runs are named by their folder inside "
        "--runs. Errors: {\"error\": \"...\"} with a 4xx status."))
    app.state.catalogue, app.state.cache, app.state.queue, app.state.sessions = cat, cache, queue, sessions
    app.state.limits, app.state.preferences = limits, prefs
    app.add_middleware(Guard, token=token, max_body=limits.max_body)

    # -- errors: one JSON line each --------------------------------------------------------------
    root_text = str(cat.real_root) + "/"

    def clean(msg: str) -> str:
        return msg.replace(root_text, "").replace(str(cat.root) + "/", "")   # no server paths in answers

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": clean(e.message)}, status_code=e.status, headers=e.headers)

    @app.exception_handler(GenlabError)
    async def _genlab_error(request, e: GenlabError):
        return JSONResponse({"error": clean(str(e))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        msg = f"{where}: {first.get('msg', 'invalid')}"
        if first.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({(first.get('ctx') or {}).get('error', 'cannot parse it')})"
        return JSONResponse({"error": msg,
                             "detail": [{"loc": list(x.get("loc", ())), "msg": x.get("msg")} for x in errs]},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error in %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); the server log has the details"},
                            status_code=500)

    # -- helpers ----------------------------------------------------------------------------------
    def loaded(name: str):
        """(model, lock) for a run or built-in model, loaded once and kept in the cache."""
        where = cat.locate(name)
        if where is None:
            return cache.get((name, 0), lambda: api.load_model(name, log=log.info))
        weights = where / "model.safetensors"
        stamp = weights.stat().st_mtime_ns if weights.exists() else 0
        cache.drop_other_versions(name, stamp)   # a run that trained on since it was loaded: load it anew
        return cache.get((name, stamp), lambda: api.open_any(str(where), log=log.info))

    async def work(fn):
        return await queue.run(fn, limits.timeout)

    def with_model(name: str, verb: str, fn):
        """A job: fn(model) with the model loaded and locked."""
        cat.require(name, verb)

        def job():
            m, lock = loaded(name)
            with lock:
                return fn(m)
        return job

    def picture(data: bytes, fmt: str = "png") -> Response:
        return Response(data, media_type="image/png" if fmt == "png" else "application/octet-stream",
                        headers={"Cache-Control": "no-store"})

    async def sse(make_iter, name: str, verb: str):
        """Stream make_iter(model)'s pieces as server-sent events. Whatever goes wrong before
        the first piece is an ordinary JSON error; the stream stops when the client leaves
        or the time limit passes."""
        cat.require(name, verb)
        pipe = Pipe(asyncio.get_running_loop())
        put = pipe.put
        stop = threading.Event()
        deadline = time.monotonic() + limits.timeout

        def job():
            try:
                m, lock = loaded(name)
                with lock:
                    t0 = time.perf_counter()
                    it = make_iter(m)
                    parts = []
                    for piece in it:
                        parts.append(piece)
                        put(("token", piece))
                        if stop.is_set():
                            break
                        if time.monotonic() > deadline:
                            it.close()
                            put(("error", f"stopped at the server's time limit of {limits.timeout:g} s"))
                            return
                    close = getattr(it, "close", None)
                    if close:
                        close()   # a reply stopped early joins its chat as far as it went
                    done = {"text": "".join(parts), "seconds": round(time.perf_counter() - t0, 3)}
                    stats = getattr(m, "last_stats", None)
                    if stats:
                        done["stats"] = stats
                    put(("done", done))
            except GenlabError as e:
                put(("error", clean(str(e))))
            except Exception as e:  # noqa: BLE001 -- reported to the client as one line, logged whole
                log.exception("stream failed")
                put(("error", f"internal error ({type(e).__name__})"))

        fut = queue.submit(job)
        try:
            first = await asyncio.wait_for(pipe.get_all(), limits.timeout)
        except asyncio.TimeoutError:
            stop.set()
            fut.cancel()
            raise ApiError(503, f"the request took longer than the server's limit of {limits.timeout:g} s") from None
        if first[0][0] == "error":
            raise ApiError(400, first[0][1])

        def event(item) -> str:
            kind, payload = item
            data = {"text": payload} if kind == "token" else ({"error": payload} if kind == "error" else payload)
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        async def events():
            items = first
            try:
                while True:
                    yield "".join(event(x) for x in items)   # whatever came meanwhile: one write
                    if items[-1][0] != "token":
                        return
                    await asyncio.sleep(FLUSH_S)   # let a few tokens gather: fewer wake-ups and writes
                    items = await pipe.get_all()
            finally:
                stop.set()
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- the page -----------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    # -- what there is ---------------------------------------------------------------------------
    @app.get("/api/health")
    async def health():
        """Liveness, the queue, the model cache and the sessions."""
        return {"status": "ok", "version": __version__, "uptime_s": round(time.time() - started, 1),
                "queue": queue.stats(), "cache": cache.stats(), "sessions": sessions.count()}

    @app.get("/api/runs")
    async def runs_list():
        """The runs in --runs and the installed built-in foundation models: family, kind and verbs."""
        return {"runs": await asyncio.to_thread(cat.runs)}

    @app.get("/api/runs/{name}")
    async def run_info(name: str):
        return cat.describe(name)

    @app.get("/api/runs/{name}/metrics")
    async def metrics(name: str, since: int = Query(0, ge=0)):
        """metrics.jsonl's records from number `since` on, and the number to ask from next time
        (a page refreshing the curves of a run that is training asks for the new ones only)."""
        where = cat.locate(name)
        recs = api.read_metrics(where) if where is not None else []
        return {"records": recs[since:], "next": len(recs)}

    @app.get("/api/runs/{name}/report")
    async def report(name: str):
        """The compression report of a run genlab compress wrote."""
        cat.require(name, "report")
        return {**api.read_report(cat.locate(name)), "out": name}   # (report.json names the folder it wrote)

    # -- images ------------------------------------------------------------------------------------
    @app.post("/api/runs/{name}/sample")
    async def sample(name: str, body: SampleIn, request: Request):
        """A PNG grid of samples (or a float32 .npy array with format "npy" or Accept:
        application/octet-stream): `n` images from `seed`, or one per seed in `seeds`."""
        fmt = "npy" if body.format == "npy" or "application/octet-stream" in request.headers.get("accept", "") else "png"
        if body.seeds is not None:
            if body.n is not None:
                raise ApiError(422, "give n or seeds, not both")
            count = len(api.parse_seeds(body.seeds))
            if count > MAX_N:
                raise ApiError(422, f"seeds: {count} seeds; at most {MAX_N} images per request")
        n = None if body.seeds is not None else (body.n or 64)

        def fn(run):
            images = run.sample(n, seed=body.seed, label=body.label, seeds=body.seeds, trunc=body.trunc,
                                prompt=body.prompt)
            return api.image_bytes(images, fmt, per_row=body.per_row)
        return picture(await work(with_model(name, "sample", fn)), fmt)

    @app.post("/api/runs/{name}/interpolate")
    async def interpolate(name: str, body: InterpolateIn):
        """A latent walk as a PNG: one row per pair, `steps` images from one end to the other
        (in W with space "w"; from one text to another with `prompts`)."""
        if body.pairs * body.steps > MAX_N:
            raise ApiError(422, f"pairs x steps: {body.pairs} x {body.steps} make more than {MAX_N} images")

        def fn(run):
            if body.prompts is not None:
                images = run.prompt_walk(body.prompts, body.pairs, body.steps, seed=body.seed)
            elif body.space == "w":
                images = run.interpolate(body.pairs, body.steps, seed=body.seed, space="w")
            else:
                images = run.interpolate(body.pairs, body.steps, seed=body.seed)
            return api.image_bytes(images, "png", per_row=body.steps)
        return picture(await work(with_model(name, "interpolate", fn)))

    @app.post("/api/runs/{name}/style-mix")
    async def style_mix(name: str, body: StyleMixIn):
        """The StyleGAN paper's style-mixing figure: the top row's styles copied into each
        row image at the chosen layers."""
        rows, cols = api.parse_seeds(body.rows), api.parse_seeds(body.cols)
        if (len(rows) + 1) * (len(cols) + 1) > MAX_N:
            raise ApiError(422, f"rows x cols: {len(rows)} x {len(cols)} seeds make more than {MAX_N} images")

        def fn(run):
            images = run.style_mix(rows, cols, styles=body.styles, trunc=body.trunc, label=body.label)
            return api.image_bytes(images, "png", per_row=len(cols) + 1)
        return picture(await work(with_model(name, "style-mix", fn)))

    # -- text ----------------------------------------------------------------------------------------
    @app.post("/api/runs/{name}/generate")
    async def generate(name: str, body: GenerateIn):
        """The continuation of `prompt`, streamed as server-sent events (stream false: one JSON)."""
        kw = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                  top_p=body.top_p, seed=body.seed)
        if not body.stream:
            def fn(m):
                text = m.generate(body.prompt, **kw)
                return {"text": text, "stats": getattr(m, "last_stats", None)}
            return await work(with_model(name, "generate", fn))
        return await sse(lambda m: m.stream(body.prompt, **kw), name, "generate")

    @app.post("/api/chats")
    async def chat_new(body: ChatIn):
        """A chat with `model`; its system prompt stays on the server (never sent back)."""
        def fn(m):
            return m.new_chat(body.system)
        chat = await work(with_model(body.model, "chat", fn))
        return {"id": sessions.new("chat", {"model": body.model, "chat": chat}), "model": body.model,
                "system_prompt": "set" if body.system else "none"}

    @app.get("/api/chats/{cid}")
    async def chat_get(cid: str):
        """The conversation so far (the system prompt is not part of it)."""
        s, _ = sessions.get("chat", cid, "chat")
        return {"id": cid, "model": s["model"], "messages": [dict(m) for m in s["chat"].messages]}

    @app.delete("/api/chats/{cid}")
    async def chat_delete(cid: str):
        sessions.pop("chat", cid, "chat")
        return {"deleted": cid}

    @app.post("/api/chats/{cid}/messages")
    async def chat_message(cid: str, body: MessageIn):
        """The model's reply to `content`, streamed (stream false: one JSON)."""
        s, slock = sessions.get("chat", cid, "chat")
        if len(s["chat"].messages) >= MAX_TURNS * 2:
            raise ApiError(400, f"this chat has {MAX_TURNS} turns, the most a chat keeps: start a new one")
        kw = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature, seed=body.seed)
        if not body.stream:
            def fn(m):
                with slock:
                    return {"text": m.reply(s["chat"], body.content, **kw)}
            return await work(with_model(s["model"], "chat", fn))

        def turns(m):
            with slock:
                yield from m.reply_stream(s["chat"], body.content, **kw)
        return await sse(turns, s["model"], "chat")

    # -- the secret-keeping game -----------------------------------------------------------------
    @app.get("/api/game/levels")
    async def game_levels():
        return {"levels": [{"level": k, "description": v} for k, v in api.GUARD_LEVELS.items()]}

    @app.post("/api/game")
    async def game_new(body: GameIn):
        """A new round: a random secret word, kept on the server, behind the level's guards."""
        def fn(m):
            return api.guard_game(api.guard(m, body.level, max_new_tokens=body.max_new_tokens, log=log.info))
        game = await work(with_model(body.model, "game", fn))
        return {"id": sessions.new("game", {"model": body.model, "game": game}), "level": body.level,
                "description": api.GUARD_LEVELS[body.level], "guards": game.guarded.guards}

    @app.post("/api/game/{gid}/turn")
    async def game_turn(gid: str, body: TurnIn):
        """One question; the reply the player sees (a guard's refusal where one stopped it)."""
        s, slock = sessions.get("game", gid, "game")
        if s["game"].turns >= MAX_TURNS:
            raise ApiError(400, f"this round has {MAX_TURNS} turns, the most a round keeps: guess, or start a new one")

        def fn(m):
            with slock:
                t = s["game"].turn(body.prompt)
            return {"reply": t.reply, "refused": t.refused, "blocked_by": t.blocked_by, "turns": s["game"].turns}
        return await work(with_model(s["model"], "game", fn))

    @app.post("/api/game/{gid}/guess")
    async def game_guess(gid: str, body: GuessIn):
        """Guess the password: right or wrong, the round ends (the secret is not sent)."""
        s, slock = sessions.get("game", gid, "game")

        def guess():
            with slock:   # (after a turn still being answered)
                return s["game"].guess(body.word)
        correct = await asyncio.to_thread(guess)
        sessions.pop("game", gid, "game")
        return {"correct": correct, "turns": s["game"].turns, "level": s["game"].level}

    # -- rank two responses (the lecture's RLHF data) --------------------------------------------
    @app.post("/api/rank")
    async def rank_new(body: RankIn):
        """Two replies to `prompt` (from two models, or two samples of one), in random order."""
        names = body.models if len(body.models) == 2 else body.models * 2
        for n in set(names):
            cat.require(n, "rank")
        kw = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature)

        def reply(name, seed):
            def fn(m):
                if m.chat_model:
                    return m.reply(m.new_chat(), body.prompt, seed=seed, **kw)
                return m.generate(body.prompt, seed=seed, **kw).strip()
            return with_model(name, "rank", fn)
        seeds = [random.SystemRandom().randrange(2**31) for _ in names]
        replies = [await work(reply(n, s)) for n, s in zip(names, seeds)]
        order = [0, 1]
        random.SystemRandom().shuffle(order)
        rid = sessions.new("rank", {"prompt": body.prompt, "replies": [replies[i] for i in order],
                                    "models": [names[i] for i in order]})
        return {"id": rid, "prompt": body.prompt, "replies": [replies[i] for i in order]}

    @app.post("/api/rank/{rid}")
    async def rank_choose(rid: str, body: ChoiceIn):
        """Store the choice (first, second or tie) in the preferences JSONL; the round ends."""
        r, _ = sessions.pop("rank", rid, "ranking round")
        counts = await asyncio.to_thread(
            api.record_ranking_choice, prefs, r["prompt"], r["replies"][0], r["replies"][1], body.choice,
            models=r["models"] if body.choice != "second" else r["models"][::-1], source="genlab serve")
        return {"stored": prefs.name, **counts, "models": r["models"]}

    # -- real or fake? ------------------------------------------------------------------------------
    @app.post("/api/runs/{name}/real-or-fake")
    async def realfake_new(name: str):
        """One image: a held-out real one or a sample of the run, by a coin flip the server keeps."""
        real = secrets.randbits(1) == 1

        def fn(run):
            images = run.real_images(1) if real else run.sample(1)
            return api.image_bytes(images, "png", per_row=1, scale=4, pad=0)   # no frame: nothing tells them apart
        data = await work(with_model(name, "real-or-fake", fn))
        rid = sessions.new("realfake", {"run": name, "shown": "real" if real else "fake"})
        return {"id": rid, "image": "data:image/png;base64," + base64.b64encode(data).decode()}

    @app.post("/api/real-or-fake/{rid}")
    async def realfake_guess(rid: str, body: JudgeIn):
        """The visitor's guess; stored in the run's human_eval.jsonl, answered with the tally."""
        r, _ = sessions.pop("realfake", rid, "real-or-fake round")

        def fn(run):
            return run.record_judgement(r["shown"], body.guess, who="genlab serve")
        tally = await work(with_model(r["run"], "real-or-fake", fn))
        return {"correct": body.guess == r["shown"], "shown": r["shown"], "tally": tally}

    @app.get("/api/runs/{name}/human-eval")
    async def human_eval(name: str):
        """The run's real-or-fake tally: the human fooling rate and its 95% interval."""
        return await work(with_model(name, "real-or-fake", lambda run: run.human_eval()))

    return app


# -- middleware: the token and the body limit, before any route ------------------------------------

class Guard:
    """ASGI middleware: with a token, every request must carry it (Authorization: Bearer,
    the genlab_token cookie, or ?token= on the page, which then sets the cookie); a body
    longer than `max_body` bytes is refused (413) before it is read whole."""

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        set_cookie = False
        if self.token is not None:
            given = None
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if given is None:
                for part in headers.get("cookie", "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == "genlab_token":
                        given = v
            if given is None and scope.get("path") == "/":
                given = (parse_qs(scope.get("query_string", b"").decode()).get("token") or [None])[0]
                set_cookie = given is not None
            if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
                return await _reply(send, 401, "missing or wrong token (send Authorization: Bearer TOKEN, "
                                               "or open the page as /?token=TOKEN)",
                                    {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _reply(send, 413, f"the request body is larger than the server's limit of {self.max_body} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise ApiError(413, f"the request body is larger than the server's limit of {self.max_body} bytes")
            return msg

        async def send_with_cookie(msg):
            if set_cookie and msg["type"] == "http.response.start":
                cookie = f"genlab_token={self.token}; Path=/; HttpOnly; SameSite=Strict"
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(b"set-cookie", cookie.encode())]}
            await send(msg)
        try:
            return await self.app(scope, limited, send_with_cookie)
        except ApiError as e:
            return await _reply(send, e.status, e.message)


async def _reply(send, status: int, message: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    hs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})
