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

import json
import os
import re
import subprocess
import sys
import tempfile
import threading

from ..util import dist as procs
from ..util.errors import GenlabError
from ..util.options import Opt, at_least

NPROC = Opt("nproc", int, None, check=at_least(1), metavar="N",
            help="train in N processes on this machine (PyTorch DDP through torchrun; gloo on CPUs, "
                 "nccl on GPUs); --batch-size stays the global batch, split over the processes")
MAX_RESTARTS = Opt("max_restarts", int, 0, check=at_least(0), metavar="K",
                   help="with --nproc: restart the processes up to K times when one dies; the run "
                        "resumes from its last checkpoint")
RESULT = "GENLAB_LAUNCH_RESULT"   # where rank 0 tells the launcher how the run ended
_RANK = "import sys; from genlab.families.distributed import main; sys.exit(main(sys.argv[1:]))"

# torchrun's own log lines and its closing traceback, gloo's retries, the stack of a rank
# whose peer died (the ranks' messages, and each error's last line, are what counts)
_NOISE = re.compile(r"^(\[/\S+\] |\[rank\d+\]: (Traceback|  |\s*\^|\s*$|At:)|"
                    r"\[?[WIE]\d{4} \d\d:\d\d:\d\d|\*{20,}|Setting OMP_NUM_THREADS|Traceback|  File |    |"
                    r"torch\.distributed\.elastic|=+$|Failures:|Root Cause|\[\d\]:|  (time|host|rank|exitcode|"
                    r"error_file|traceback|local_rank)|\s*<NO_OTHER_FAILURES>|[a-zA-Z_.]+Error:|"
                    r"-+$|\S+ FAILED)")


def restarted() -> bool:
    """Whether torchrun restarted this process after a failure (its restart count)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def launch(family, out, given: dict, nproc: int, max_restarts: int, log):
    """Run `family.train(out, **given)` in `nproc` ranks under torchrun; returns the run."""
    if procs.world_size() > 1:
        raise GenlabError("--nproc: already running under torchrun (give the process count to torchrun)")
    with tempfile.TemporaryDirectory(prefix="genlab-launch-") as tmp:
        job = os.path.join(tmp, "job.json")
        result = os.path.join(tmp, "result.json")
        with open(job, "w") as f:
            json.dump({"family": family.name, "out": None if out is None else str(out), "given": given}, f)
        env = dict(os.environ, **{RESULT: result})
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               f"--max-restarts={max_restarts}", "--no-python", sys.executable, "-c", _RANK, job]
        log(f"launching {nproc} processes (torchrun, DDP; OMP_NUM_THREADS={env['OMP_NUM_THREADS']})")
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
        relay = threading.Thread(target=_relay, args=(proc.stderr,), daemon=True)
        relay.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # torchrun passed the Ctrl-C on; the ranks save and stop
            code = proc.wait()
        relay.join(timeout=5)
        try:
            with open(result) as f:
                outcome = json.load(f)
        except (OSError, ValueError):
            outcome = {}
    if outcome.get("error"):
        raise GenlabError(outcome["error"])
    if code != 0 or "path" not in outcome:
        raise GenlabError(f"the {nproc} training processes failed (torchrun exit code {code}); "
                          "the run's last checkpoint is kept (continue it with --resume)")
    return family.load(outcome["path"])


def _relay(stream) -> None:
    """Pass the ranks' stderr on (warnings, progress), without torchrun's own log lines."""
    for line in stream:
        if not _NOISE.match(line):
            sys.stderr.write(line)
            sys.stderr.flush()


def _report(outcome: dict) -> None:
    path = os.environ.get(RESULT)
    if path and procs.writer():
        with open(path, "w") as f:
            json.dump(outcome, f)


def main(argv) -> int:
    """One rank: the launcher's job file -> the family's train()."""
    from . import FAMILIES
    with open(argv[0]) as f:
        job = json.load(f)
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in job["given"].items()}
    try:
        run = FAMILIES[job["family"]].train(job["out"], **given)
    except GenlabError as e:
        _report({"error": str(e)})
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    _report({"path": str(getattr(run, "path", job["out"]))})
    return 0

