"""`genlab train FAMILY ... --nproc N`: the same training in N processes, launched with
PyTorch's own launcher (torchrun, `python -m torch.distributed.run --standalone`), each
process one rank of a DDP run (train/engine.py holds the semantics). This module is both
sides: `launch` (the command the user ran, which waits for the ranks) and `main` (what
each rank runs: the family's `train` with the same options).

    genlab train vae --dataset mnist --epochs 5 --nproc 2 --out runs/vae2
    torchrun --nproc-per-node 2 -m genlab train vae --dataset mnist --epochs 5 --out runs/vae2

Both are the same run. Under torchrun `--max-restarts K`, a rank that dies (even by
SIGKILL) makes torchrun restart every rank; a restarted rank finds the run's checkpoint and
resumes from it (`restarted`), so the run continues instead of starting over.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..util import dist as procs
from ..util.errors import GenlabError
from ..util.options import Opt, at_least

NPROC = Opt("nproc", int, None, check=at_least(1), metavar="N",
            help="train in N processes on this machine (PyTorch DDP through torchrun; gloo on CPUs, "
                 "nccl on GPUs); --batch-size stays the global batch, split over the processes")
MAX_RESTARTS = Opt("max_restarts", int, 0, check=at_least(0), metavar="K",
                   help="with --nproc: restart the processes up to K times when one dies; the run "
                        "resumes from its last checkpoint")
NNODES = Opt("nnodes", int, None, check=at_least(1), metavar="N",
             help="with --nproc: machines taking part (run the same command on each, with the same "
                  "--rdzv-endpoint); default 1")
RDZV_ENDPOINT = Opt("rdzv_endpoint", str, None, metavar="HOST:PORT",
                    help="with --nnodes: where the machines meet (torchrun's c10d rendezvous; the first "
                         "machine there hosts it)")
RDZV_TIMEOUT = Opt("rdzv_timeout", float, 120.0, check=at_least(1), metavar="SECONDS",
                   help="with --nnodes: how long to wait for the other machines (default 120)")
OPTIONS = (NPROC, MAX_RESTARTS, NNODES, RDZV_ENDPOINT, RDZV_TIMEOUT)
RESULT = "GENLAB_LAUNCH_RESULT"   # where rank 0 tells the launcher how the run ended
_RANK = "import sys; from genlab.families.distributed import main; sys.exit(main(sys.argv[1:]))"

# torchrun's own log lines and its closing traceback, gloo's retries, the stack of a rank
# whose peer died (the ranks' messages, and each error's last line, are what counts)
_NOISE = re.compile(r"^(\[/\S+\] |\[rank\d+\]: (Traceback|  |\s*\^|\s*$|At:)|"
                    r"\[?[WIE]\d{4} \d\d:\d\d:\d\d|\*{20,}|Setting OMP_NUM_THREADS|Traceback|  File |    |"
                    r"torch\.distributed\.elastic|=+$|Failures:|Root Cause|\[\d\]:|  (time|host|rank|exitcode|"
                    r"error_file|traceback|local_rank)|\s*<NO_OTHER_FAILURES>|[a-zA-Z_.]+Error:|"
                    r"-+$|.* FAILED$)")


def restarted() -> bool:
    """Whether torchrun restarted this process after a failure (its restart count)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def pop_launch(given: dict) -> dict:
    """The launcher's options, taken out of a family's (None: not given)."""
    return {o.name: given.pop(o.name, None) for o in OPTIONS}


def check_launch(opts: dict) -> None:
    nodes = opts.get("nnodes") or 1
    if not opts.get("nproc"):
        for name in ("max_restarts", "nnodes", "rdzv_endpoint"):
            if opts.get(name):
                raise GenlabError(f"--{name.replace('_', '-')} needs --nproc N (or torchrun's own flags)")
    if opts.get("max_restarts") and opts.get("out") is None:
        raise GenlabError("--max-restarts needs --out RUN: a restarted process resumes that run")
    if nodes > 1 and not opts.get("rdzv_endpoint"):
        raise GenlabError(f"--nnodes {nodes} needs --rdzv-endpoint HOST:PORT (where the machines meet)")
    if opts.get("rdzv_endpoint"):
        host, _, port = opts["rdzv_endpoint"].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise GenlabError(f"--rdzv-endpoint {opts['rdzv_endpoint']}: expected HOST:PORT")


def _reachable(endpoint: str, wait: float) -> bool:
    """Whether the rendezvous endpoint answers within `wait` seconds (a host of this machine
    needs no answer: the first machine to arrive starts the rendezvous there)."""
    host, _, port = endpoint.rpartition(":")
    try:
        local = {"localhost", socket.gethostname(), socket.getfqdn()}
        if host in local or socket.gethostbyname(host).startswith("127."):
            return True
    except OSError:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1)


def launch(family, out, given: dict, opts: dict, log):
    """Run `family.train(out, **given)` in `nproc` ranks under torchrun; returns the run."""
    if procs.world_size() > 1:
        raise GenlabError("--nproc: already running under torchrun (give the process count to torchrun)")
    nproc, max_restarts = opts["nproc"], opts.get("max_restarts") or 0
    nodes, endpoint, wait = opts.get("nnodes") or 1, opts.get("rdzv_endpoint"), opts.get("rdzv_timeout") or 120.0
    if nodes > 1 and not _reachable(endpoint, wait):
        raise GenlabError(f"--rdzv-endpoint {endpoint}: nothing answers there after {wait:g}s "
                          "(start the first machine's command, or check the address and port)")
    if nodes > 1:
        where = ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--nnodes={nodes}",
                 f"--rdzv-id=genlab-{hashlib.sha1(f'{family.name} {out}'.encode()).hexdigest()[:12]}",
                 f"--rdzv-conf=join_timeout={int(wait)}"]
    else:
        where = ["--standalone"]
    with tempfile.TemporaryDirectory(prefix="genlab-launch-") as tmp:
        job = os.path.join(tmp, "job.json")
        result = os.path.join(tmp, "result.json")
        with open(job, "w") as f:
            json.dump({"family": family.name, "out": None if out is None else str(out),
                       "given": {k: v for k, v in given.items() if not callable(v)}}, f)  # not log/warn
        env = dict(os.environ, **{RESULT: result})
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
               f"--max-restarts={max_restarts}", "--no-python", sys.executable, "-c", _RANK, job]
        log(f"launching {nproc} processes" + (f" on each of {nodes} machines (rendezvous {endpoint})" if nodes > 1 else "")
            + f" (torchrun, DDP; OMP_NUM_THREADS={env['OMP_NUM_THREADS']})")
        # its own session: a Ctrl-C reaches the ranks once, through torchrun (below), so each
        # stops at a step boundary and rank 0 saves, as in one process
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        seen: list = []
        relay = threading.Thread(target=_relay, args=(proc.stderr, seen), daemon=True)
        relay.start()
        interrupted = False
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            proc.send_signal(signal.SIGINT)  # torchrun passes it on; the ranks save and stop
            code = proc.wait()
        relay.join(timeout=5)
        try:
            with open(result) as f:
                outcome = json.load(f)
        except (OSError, ValueError):
            outcome = {}
    if interrupted:
        raise KeyboardInterrupt
    if outcome.get("error"):
        raise GenlabError(outcome["error"])
    if code != 0 and any("RendezvousTimeoutError" in line for line in seen):
        raise GenlabError(f"the {nodes} machines did not all meet at {endpoint} within {wait:g}s "
                          "(run the same command on each; --rdzv-timeout waits longer)")
    if code != 0 or "path" not in outcome:
        raise GenlabError(f"the {nproc * nodes} training processes failed (torchrun exit code {code}); "
                          "the run's last checkpoint is kept (continue it with --resume)")
    if not outcome.get("writer", True):  # another machine's rank 0 wrote the run
        log(f"this machine's {nproc} processes are done; the machine of rank 0 holds the run")
        return None
    return family.load(outcome["path"])


def _relay(stream, seen: list) -> None:
    """Pass the ranks' stderr on (warnings, progress), without torchrun's own log lines
    (the error names among them are kept in `seen`)."""
    for line in stream:
        if "Error" in line:
            seen.append(line)
        if not _NOISE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def _report(outcome: dict) -> None:
    """Each machine's first process tells its launcher how the run ended (and whether this
    machine wrote it: global rank 0's does)."""
    path = os.environ.get(RESULT)
    if path and procs.local_rank() == 0:
        with open(path, "w") as f:
            json.dump({**outcome, "writer": procs.writer()}, f)


def main(argv) -> int:
    """One rank: the launcher's job file -> the family's train()."""
    from . import FAMILIES
    with open(argv[0]) as f:
        job = json.load(f)
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in job["given"].items()}
    try:
        run = FAMILIES[job["family"]].train(job["out"], **given)
    except GenlabError as e:
        _report({"error": str(e)})  # the launcher says it, once
        return 2
    _report({"path": str(getattr(run, "path", job["out"]))})
    return 0

