"""genlab generate | chat: text from any language model, streamed as it comes."""
from __future__ import annotations

import sys

from .. import api
from ..util.errors import GenlabError, check as _check
from .options import add, add_one, command, note, warn


def _generation(p, max_new: int) -> None:
    opts = [o.but(help=f"default {max_new}") if o.name == "max_new_tokens" else o for o in api.GENERATION_OPTIONS]
    add(p, opts, {o.name: o.default for o in opts if o.default is not None} | {"max_new_tokens": max_new})
    add_one(p, api.DEVICE)


def register(commands) -> None:
    g = command(
        commands, "generate", "continue a prompt with a language-model run (streams the text)",
        "Generate text after --prompt, printed as it comes. Temperature 0 is greedy.\n"
        "A KV cache makes each new token cheap (--no-cache: re-run the whole window per token).\n"
        "Past the context window the window slides over the most recent tokens (a note on\n"
        "stderr says so). A char-level model refuses characters outside its vocabulary (the\n"
        "error names them); an empty prompt is refused. --system puts a system prompt before\n"
        "the prompt as the run's chat template says (the prompt is then the user's turn).",
        "examples:\n"
        "  genlab generate runs/lm --prompt \"ROMEO:\" --max-new-tokens 500 --seed 0\n"
        "  genlab generate runs/lm --prompt \"To be\" --temperature 0\n"
        "  genlab generate runs/lm --system \"Speak of the sea.\" --prompt \"What news?\"")
    g.add_argument("run", metavar="MODEL")
    g.add_argument("--prompt", required=True, help="the text to continue")
    _generation(g, 500)
    g.add_argument("--no-cache", action="store_true", help="no KV cache (slower; the reference)")
    add_one(g, api.NUM_SAMPLES, 1)
    g.add_argument("--stats", action="store_true",
                   help="print the decode speed on stderr: tokens/s after the first token, the first "
                        "token's latency (prompt processing) apart")
    g.set_defaults(func=_generate)

    c = command(
        commands, "chat", "talk with a language-model run (type a line, get a reply; Ctrl-D ends)",
        "An interactive session. Each turn is laid out with the run's chat template\n"
        "(config.json: chat_template); --system places a hidden system prompt before the first\n"
        "turn. The reply ends at the template's stop string or --max-new-tokens. Commands:\n"
        "/reset starts over, /prompt shows the full text the model reads, /quit ends.")
    c.add_argument("run", metavar="MODEL")
    _generation(c, 300)
    c.set_defaults(func=_chat)


def _kw(a) -> dict:
    return dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, seed=a.seed)


def _generate(a) -> int:
    api.NUM_SAMPLES.validate(a.num_samples)
    run = api.load_model(a.run, log=note, device=a.device)
    if a.num_samples > 1:
        _check(not a.no_cache, "--num-samples decodes a batch with the KV cache: leave out --no-cache")
        prompt, stop = a.prompt, None
        if a.system is not None:
            chat = run.new_chat(a.system)
            chat.add("user", a.prompt)
            prompt, stop = chat.prompt(), chat.template.stop
        texts = run.generate_many(prompt, a.num_samples, **_kw(a), stop=stop, warn=warn)
        for i, t in enumerate(texts):
            print(f"--- sample {i + 1} of {len(texts)} ---")
            print((a.prompt if a.system is None else "") + t)
        _stats(a, run)
        return 0
    if a.system is not None:
        chat = run.new_chat(a.system)
        stream = run.reply_stream(chat, a.prompt, **_kw(a), warn=warn, use_cache=not a.no_cache)
        first = ""
    else:
        stream = run.stream(a.prompt, **_kw(a), use_cache=not a.no_cache, warn=warn)
        first = a.prompt
    pieces = iter(stream)
    piece = next(pieces, "")  # errors (bad prompt) surface before anything is printed
    sys.stdout.write(first + piece)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    _stats(a, run)
    return 0


def _stats(a, run) -> None:
    if a.stats and run.last_stats:
        sys.stdout.flush()
        print(api.stats_line(run.last_stats), file=sys.stderr)


def _chat(a) -> int:
    run = api.load_model(a.run, log=note, device=a.device)
    chat = run.new_chat(a.system)
    interactive = sys.stdin.isatty()
    noted = []

    def warn_once(msg):  # the window note, once per session rather than every turn
        if not noted:
            noted.append(msg)
            warn(msg)

    if interactive:
        print(f"chatting with {run.path} ({'system prompt set; ' if a.system else ''}/reset, /prompt, /quit; Ctrl-D ends)")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            chat = run.new_chat(a.system)
            continue
        if line == "/prompt":
            print(chat.prompt())
            continue
        sys.stdout.write("model> " if interactive else "")
        try:
            for piece in run.reply_stream(chat, line, **_kw(a), warn=warn_once):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except GenlabError as e:  # a bad line ends nothing: say why and go on
            print(f"genlab: error: {e}", file=sys.stderr)
            if not interactive:
                return 2
            continue
        sys.stdout.write("\n")
    return 0
