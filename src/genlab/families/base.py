"""What every family plug-in shares: the `Family` base class (its name, its training
options, its run class) and the checks every trainer makes the same way -- unknown or
invalid options, the run directory to write, and what `--resume` may change.

A family subclasses `Family`, declares its options as `Opt`s (util/options.py) and
implements `fresh` (train a new run) and `resume` (continue one); `Family.train` does the
rest. The registry (families/__init__.py) finds it: adding a family is adding a module.
"""
from __future__ import annotations

from pathlib import Path

from ..runs import RunDir
from ..train.engine import DEVICE, check_split
from ..util import dist as procs
from ..util.device import resolve_device
from ..util.errors import GenlabError, check
from ..util.options import Opt, above, validate_all
from .distributed import OPTIONS as LAUNCH, check_launch, launch, pop_launch, restarted

# Options every trainer takes (the CLI adds them to each `train` sub-command).
OUT = Opt("out", str, help="run directory (default runs/FAMILY-DATASET[-N])")
SEED = Opt("seed", int, 0, help="same seed, same machine: the same run bit for bit")
TIME_BUDGET = Opt("time_budget", float, check=above(0), metavar="SECONDS", label="time budget",
                  help="stop after this many seconds of training (the run's total), evaluate, save")
RESUME = Opt("resume", bool, False, help="continue the interrupted run in --out")
OVERWRITE = Opt("overwrite", bool, False, help="replace an existing run in --out")
PROGRESS = Opt("progress", bool, None, flag="--no-progress", help="no progress bar")
COMMON = (OUT, SEED, TIME_BUDGET, RESUME, OVERWRITE, PROGRESS, *LAUNCH)
# Runtime choices, not part of a run's recipe: --resume may give them freely.
RUNTIME = {"out", "resume", "overwrite", "progress", "device", "log", "warn", *(o.name for o in LAUNCH)}

FAMILIES: dict = {}   # name -> Family instance, filled by @register as the modules load


def register(cls):
    """Class decorator: make the family known to the registry (families/__init__.py); its
    run class learns its plug-in as `family_plugin`."""
    FAMILIES[cls.name] = fam = cls()
    if cls.run_class is not None:
        cls.run_class.family_plugin = fam
    return cls


def registry() -> list:
    """Every registered family, in the order help texts list them."""
    return sorted(FAMILIES.values(), key=lambda f: (f.order, f.name))


def names(train_verb: bool | None = None) -> list[str]:
    """The registered families (only those trained with `genlab train` when train_verb)."""
    return [f.name for f in registry() if train_verb is None or f.train_verb == train_verb]


def family_of(path) -> "Family":
    """The family of the run directory at `path` (the directory checked first)."""
    d = RunDir(path).require()
    fam = d.read_config().get("family")
    if fam not in FAMILIES:
        raise GenlabError(f"{d.path}: a '{fam}' run, a family this genlab does not know ({', '.join(names())})")
    return FAMILIES[fam]


def load(path, device: str | None = "cpu"):
    """The run at `path`, opened by its family (an image run, a language model, ...), its
    model on `device` (auto: a GPU when there is one)."""
    return family_of(path).load(path, device=device)


class Family:
    """A model family's plug-in. Subclasses set the class attributes and implement
    fresh() and resume(); everything a user calls goes through train() and load()."""

    name: str = ""                # registry key and config.json's "family"
    title: str = ""               # "VAE": in messages ("unknown VAE options")
    plural: str = ""              # "VAEs": "options for VAEs only"
    a_run: str = ""               # "a 'vae' run" (the default): "... a 'gan' run, not a 'vae' run"
    command: str = ""             # how it is trained (default: genlab train NAME)
    train_verb: bool = True       # listed under `genlab train`
    order: int = 100              # where help texts list it
    help: str = ""                # `genlab train --help`: one line
    description: str = ""         # `genlab train NAME --help`
    epilog: str = ""
    options: tuple = ()           # its own training options (Opt)
    common: tuple = COMMON + (DEVICE,)   # the shared ones it takes
    resumable: tuple = ("epochs", "time_budget")   # what --resume may change
    run_class: type | None = None

    def __init__(self):
        self.a_run = self.a_run or f"a '{self.name}' run"
        self.command = self.command or (f"genlab train {self.name}" if self.train_verb else "")

    def open_run(self, run, path) -> None:
        """Attach the run directory at `path` to the run object `run` (dir, path, config)."""
        run.dir = RunDir(path).require()
        run.path = run.dir.path
        run.config = run.dir.read_config()
        run.summary = None

    # -- what a subclass implements ---------------------------------------------------------
    def fresh(self, out, opts: dict, log) -> object:
        """Train a new run into `out` (None: the default place) from validated options."""
        raise NotImplementedError

    def resume(self, run: RunDir, config: dict, state: dict, changes: dict, opts: dict, log) -> object:
        """Continue `run`; `changes` holds the resumable options given."""
        raise NotImplementedError

    def load(self, path, device: str | None = "cpu") -> object:
        return self.run_class(path, device=device)

    def stored(self, config: dict, key: str):
        """The value option `key` has in a run's config (for --resume: a flag equal to it is
        not a change). Found in the train, model or data section."""
        for section in ("train", "model", "data"):
            if key in (config.get(section) or {}):
                return config[section][key]
        return None

    def same(self, config: dict, key: str, value) -> bool:
        """Whether option `key` given as `value` repeats what the run was configured with."""
        stored = self.stored(config, key)
        return value == (tuple(stored) if isinstance(value, tuple) and isinstance(stored, list) else stored)

    # -- the shared machinery ------------------------------------------------------------------
    def all_options(self) -> tuple:
        return tuple(self.options) + tuple(self.common)

    def train(self, out=None, *, log=print, **given):
        """Check every option, then train a new run or continue one (`resume=True`)."""
        self.check_known(given)
        validate_all(self.all_options(), given)
        resolve_device(given.get("device"))  # a device this machine lacks stops us before anything is written
        opts = pop_launch(given)
        check_launch({**opts, "out": out})
        if (opts["nproc"] or 1) * (opts["nnodes"] or 1) > 1:
            bs = given.get("batch_size", next((o.default for o in self.all_options() if o.name == "batch_size"), None))
            if bs is not None:  # before launching
                check_split(bs, opts["nproc"] * (opts["nnodes"] or 1))
            return launch(self, out, given, opts, log)
        if not procs.writer():  # under torchrun rank 0 speaks for every rank
            log, given["progress"] = (lambda *a, **k: None), False
        if restarted() and out is not None and RunDir(out).has_state():
            log(f"restarted by torchrun: resuming {out} from its last checkpoint")
            given.pop("overwrite", None)
            given["resume"] = True
        resume = given.pop("resume", False)
        if resume:
            return self._resume(out, given, log)
        missing = [o.label_name if not o.positional else o.name for o in self.all_options()
                   if (o.required or o.positional) and given.get(o.name) is None]
        check(not missing, f"{self.title}: {', '.join(missing)} must be given")
        defaults = {o.name: o.default for o in self.all_options() if o.default is not None}
        return self.fresh(out, {**defaults, **{k: v for k, v in given.items() if v is not None}}, log)

    def check_known(self, given: dict) -> None:
        """One error for options this family does not take, naming the families that do."""
        known = {o.name for o in self.all_options()} | RUNTIME
        bad = sorted(k for k in given if k not in known)
        if not bad:
            return
        owners = [f for f in registry() if f is not self and all(k in {o.name for o in f.all_options()} for k in bad)]
        if owners:
            raise GenlabError(f"options for {' and '.join(f.plural for f in owners)} only: {', '.join(bad)} "
                              f"({owners[0].title} options, not {self.title} options)")
        raise GenlabError(f"unknown {self.title} options: {', '.join(bad)}")

    def _resume(self, out, given: dict, log):
        check(out is not None, "--resume needs --out RUN (the run to continue)")
        run = RunDir(out)
        check(run.is_run(), f"{run.path}: no run to resume (no config.json)")
        config = run.read_config()
        fam = config.get("family")
        if fam != self.name:
            other = FAMILIES.get(fam)
            raise GenlabError(f"{run.path}: a '{fam}' run, not {self.a_run}"
                              + (f" (resume it with {other.command})" if other and other.command else ""))
        check(run.has_state(), f"{run.path}: nothing to resume (no state.pt)")
        changed = sorted(k for k, v in given.items()
                         if v is not None and k not in RUNTIME and k not in self.resumable
                         and not self.same(config, k, v))
        flags = [o.flag_name for o in self.all_options() if o.name in self.resumable]
        check(not changed, f"--resume continues the run as configured; only {' and '.join(flags)} may change "
                           f"(not: {', '.join(changed)})")
        state = run.load_state()  # a corrupt state file stops us before anything is written
        changes = {k: given.get(k) for k in self.resumable}
        runtime = {k: v for k, v in given.items() if k in RUNTIME}
        return self.resume(run, config, state, changes, runtime, log)


def invalid_config(path, e: Exception, what: str = "model") -> GenlabError:
    return GenlabError(f"{Path(path)}/config.json: invalid {what} config ({e})")
