"""The shared training loops: seeding, shuffling, checkpoints, resume, time budget,
Ctrl-C, NaN guard, logging and the progress bar. Families plug in a `Task` (epochs over an
in-memory image dataset) or an `IterTask` (steps that draw their own batches). Steps
compute; the loop owns every write to the run directory (weights, state, metrics, the
per-epoch sample grids), and the engine (engine.py) owns device, RNG and process.

Repeatability: one `torch.Generator` shuffles the data and the global torch RNG feeds
the model (e.g. the VAE's reparameterization noise); evaluation runs inside
`torch.random.fork_rng`, so it never moves the training stream. The resume state records
the loop position (epoch, step), the shuffling generator's state at the start of the
epoch, the global RNG state and the running loss sum, so a resumed run replays exactly the
batches and noise an uninterrupted run would have seen: same weights, bit for bit.

Under torchrun (engine.py) every rank runs this loop on its part of each global batch; one
all-reduce per step sums the loss and agrees on stopping (time budget, Ctrl-C), so all
ranks stop at the same step; rank 0 alone evaluates and writes while the others wait.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..plots import save_grid
from ..runs import RunDir
from ..util.errors import GenlabError
from .engine import CPU, Engine, check_split


@dataclass
class LoopConfig:
    epochs: int | None = 10          # None: until the time budget is spent
    batch_size: int = 128
    seed: int = 0
    time_budget: float | None = None  # seconds of training (evaluation excluded)
    progress: bool | None = None      # None: a bar when stdout is a terminal


class Task:
    """What a family supplies to the loop. See train/vae.py for an example."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One optimisation step on a float batch; returns the batch's summed loss (0-d)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything besides the model's weights that resuming needs (optimisers, counters)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def distribute(self, engine: Engine) -> None:
        """Called by the loop before training: keep the engine, and `net`, the module
        train_step runs (under torchrun, `model` in DDP; `model` itself stays what is
        evaluated and saved). `grad_reduce`: how the loss combines examples (sum or mean)."""
        self.engine = engine
        self.net = engine.wrap(self.model, self.grad_reduce)

    grad_reduce = "sum"
    engine: Engine = CPU

    def targets(self, train_y: torch.Tensor | None) -> torch.Tensor | None:
        """What the loop hands train_step as y for each training image: its label by
        default; a conditional task may say otherwise (the image's index, for captions)."""
        return train_y

    def set_progress(self, fraction: float) -> None:
        """Called before each step with the fraction of training done (for schedules)."""

    def end_epoch(self, epoch: int, train_loss: float, final: bool) -> dict:
        """Evaluate after an epoch; returns fields for metrics.jsonl."""
        return {}

    def grid(self) -> torch.Tensor | None:
        """Images (N, C, H, W) in [0, 1] from fixed latents, saved by the loop as
        samples/epoch_NNN.png after every epoch (None: no grid)."""
        return None

    def epoch_line(self, epoch: int, rec: dict) -> str:
        return f"Epoch {epoch}, Loss: {rec['train_loss']:.4f}"


class _Interrupt:
    """Turns the first Ctrl-C into a flag, so the loop can stop at a step boundary."""

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def _handler(self, signum, frame):
        if self.hit:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _Clock:
    """elapsed: wall-clock seconds of the loop, evaluation included (what --time-budget
    limits); step_time: seconds spent in training steps alone (what benchmarks compare)."""

    def __init__(self, elapsed: float = 0.0, step_time: float = 0.0):
        self.elapsed, self.step_time = elapsed, step_time
        self._last = time.monotonic()

    def tick(self) -> float:
        now = time.monotonic()
        self.elapsed += now - self._last
        self._last = now
        return now

    def step_done(self, t0: float) -> None:
        self.step_time += self.tick() - t0


def _progress(enabled: bool | None, total, initial: int, unit: str, log):
    """A tqdm bar and a `say` that prints above it (when enabled, by default when stdout
    is a terminal); else (None, log)."""
    if not (enabled if enabled is not None else sys.stdout.isatty()):
        return None, log
    bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, leave=False)
    return bar, bar.write


def _stepped(clock: _Clock, t0: float, bar, postfix) -> None:
    """After a step: count its time, move the progress bar (postfix: its text, made lazily)."""
    clock.step_done(t0)
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(postfix())


def _stop_reason(intr: _Interrupt, time_budget: float | None, elapsed: float) -> str | None:
    if intr.hit:
        return "interrupt"
    if time_budget is not None and elapsed >= time_budget:
        return "time budget"
    return None


_REASONS = (None, "time budget", "interrupt")


def _agree(engine: Engine, loss: float, intr: _Interrupt, time_budget, clock: _Clock) -> tuple[float, str | None]:
    """Under torchrun, after a step: the loss summed over the ranks, and the stop reason any
    rank has (every rank then stops before the next step)."""
    clock.tick()
    total, code = engine.agree(loss, _REASONS.index(_stop_reason(intr, time_budget, clock.elapsed)))
    return total, _REASONS[code]


def _check_finite(loss: float, where: str, run: RunDir, kept: str) -> None:
    if not math.isfinite(loss):
        raise GenlabError(f"training diverged: loss became {loss} at {where}; the {kept} checkpoint "
                          f"in {run.path} is kept (try a lower --lr)")


def _say_stopped(say, stopped: str | None, run: RunDir, time_budget, spent: str) -> None:
    if stopped == "interrupt":
        say(f"interrupted: the run in {run.path} is saved and usable; continue it with --resume")
    elif stopped == "time budget":
        say(f"time budget of {time_budget:g}s spent after {spent}; "
            f"run saved in {run.path} (continue with --resume)")


def fit(run: RunDir, task: Task, train_x: torch.Tensor, train_y: torch.Tensor | None,
        cfg: LoopConfig, to_float, resume: bool = False, log=print, engine: Engine = CPU) -> dict:
    """Train `task` on uint8 images `train_x`; returns a summary dict.

    `to_float` turns an indexed uint8 batch into the model's float input, which the
    engine moves to its device.
    """
    n = len(train_x)
    if n == 0:
        raise GenlabError("the training split is empty")
    bs = cfg.batch_size  # the global batch (engine.py: its split over the ranks)
    check_split(bs, engine.world_size)
    steps_per_epoch = math.ceil(n / bs)
    if n % bs and engine.usable(n % bs) == 0:
        steps_per_epoch -= 1  # the last partial batch has fewer examples than ranks
    epochs = cfg.epochs if cfg.epochs is not None else 10**9
    total_steps = epochs * steps_per_epoch

    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    start_epoch, start_step, running, elapsed, step_time = 1, 0, 0.0, 0.0, 0.0
    if resume:
        state = run.load_state()
        if state is None:
            raise GenlabError(f"{run.path}: nothing to resume (no state.pt)")
        if "weights" in state:  # the checkpoint's own copy of the weights
            task.model.load_state_dict(state["weights"])
        task.load_state_dict(state["task"] if "task" in state else state)
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        running, elapsed = float(state["running"]), float(state["elapsed"])
        step_time = float(state.get("step_time", 0.0))
        gen.set_state(state["gen_state"])
        engine.set_rng_state(state)
        _forget(run, lambda r: r.get("kind") == "epoch" and r.get("epoch", 0) >= start_epoch and "partial" not in r)
        if start_epoch > epochs:
            log(f"{run.path}: already trained for {start_epoch - 1} epochs; nothing to do")
            return {"epochs": start_epoch - 1, "stopped": None}
    else:
        engine.seed(cfg.seed)

    task.distribute(engine)
    bar, say = _progress(cfg.progress, None if cfg.epochs is None else total_steps,
                         (start_epoch - 1) * steps_per_epoch + start_step, "step", log)

    def save(epoch, step, gen_state, running_sum):
        if not engine.main:
            return
        # the state file is the checkpoint (weights included, one atomic file: a kill between
        # two files cannot pair new weights with an old position); then the model file
        run.save_state({"task": task.state_dict(), "epoch": epoch, "step": step,
                        "gen_state": gen_state, **engine.rng_state(), "weights": task.model.state_dict(),
                        "running": running_sum, "elapsed": clock.elapsed, "step_time": clock.step_time})
        run.save_weights(task.model)

    stopped = pending = None
    steps_taken = 0  # in this call
    epoch = start_epoch
    # Denormal floats make CPU kernels (convolutions above all) several times slower and
    # carry no useful signal in training; flush them to zero while we train.
    torch.set_flush_denormal(True)
    clock = _Clock(elapsed, step_time)
    with _Interrupt() as intr:
        try:
            while epoch <= epochs and stopped is None:
                gen_state = gen.get_state()
                perm = torch.randperm(n, generator=gen)
                step = start_step if epoch == start_epoch else 0
                running = running if epoch == start_epoch else 0.0
                task.model.train()
                seen, epoch_t = 0, clock.step_time
                while step < steps_per_epoch:
                    stopped = pending if engine.distributed else _stop_reason(intr, cfg.time_budget, clock.elapsed)
                    if stopped:
                        break
                    done = ((epoch - 1) * steps_per_epoch + step) / total_steps
                    if cfg.time_budget is not None:
                        done = max(done, clock.elapsed / cfg.time_budget)
                    task.set_progress(min(done, 1.0))
                    t0 = time.monotonic()
                    idx = engine.split(perm[step * bs:(step + 1) * bs])
                    yb = None if train_y is None else train_y[idx]
                    loss = float(task.train_step(engine.batch(to_float(train_x[idx])),
                                                 None if yb is None else engine.batch(yb)))
                    seen += len(idx)
                    if engine.distributed:
                        loss, pending = _agree(engine, loss, intr, cfg.time_budget, clock)
                    _check_finite(loss, f"epoch {epoch}, step {step + 1}", run, "last good")
                    running += loss
                    step += 1
                    steps_taken += 1
                    _stepped(clock, t0, bar, lambda: f"epoch {epoch} loss {running / min(n, step * bs):.2f}")
                if stopped is not None and step < steps_per_epoch:
                    if stopped == "time budget" and steps_taken > 0 and step > 0:
                        # Finish cleanly: evaluate the model as it stands, then save.
                        _end_epoch(task, run, epoch, running / _used(n, bs, step, engine),
                                   step / steps_per_epoch, clock.step_time, say, engine,
                                   _rate(seen, clock.step_time - epoch_t, engine))
                    save(epoch, step, gen_state, running)
                    break
                _end_epoch(task, run, epoch, running / _used(n, bs, steps_per_epoch, engine), 1.0, clock.step_time,
                           say, engine, _rate(seen, clock.step_time - epoch_t, engine))
                clock.tick()
                save(epoch + 1, 0, gen.get_state(), 0.0)
                epoch += 1
                if (pending if engine.distributed else "interrupt" if intr.hit else None) == "interrupt":
                    stopped = "interrupt"
        finally:
            torch.set_flush_denormal(False)
            if bar is not None:
                bar.close()
    engine.barrier()  # rank 0's last writes are done before any rank reads the run
    _say_stopped(say, stopped, run, cfg.time_budget, f"{clock.elapsed:.1f}s of training")
    return {"epochs": epoch - 1, "stopped": stopped, "wall_seconds": clock.elapsed,
            "step_seconds": clock.step_time, "world_size": engine.world_size}


def _used(n: int, bs: int, steps: int, engine: Engine) -> int:
    """How many examples the first `steps` global batches of an epoch of n hold (all ranks)."""
    if steps * bs <= n:
        return steps * bs
    return (steps - 1) * bs + engine.usable(n - (steps - 1) * bs)


def _forget(run: RunDir, after) -> None:
    """On resume: drop the metrics records written after the checkpoint (a run killed
    between logging and saving replays those steps, and logs them again)."""
    records = run.read_metrics()
    kept = [r for r in records if not after(r)]
    if len(kept) < len(records):
        run.rewrite_metrics(kept)


def _rate(examples: int, seconds: float, engine: Engine) -> dict:
    """Throughput fields of an epoch record: examples per second of training step, per rank."""
    out = {"examples_per_s": round(examples / seconds, 2) if seconds > 0 else None}
    if engine.distributed:
        out["world_size"] = engine.world_size
    return out


def _end_epoch(task, run, epoch, train_loss, fraction, step_time, say, engine, rate=None):
    if not engine.main:  # rank 0 evaluates and writes; the others wait for it
        engine.barrier()
        return {}
    with torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else []):
        engine.seed(10_000 + epoch)
        task.model.eval()
        with torch.no_grad():
            grid = task.grid() if engine.main else None
            if grid is not None:
                save_grid(grid, run.samples_dir / f"epoch_{epoch:03d}.png")
            extra = task.end_epoch(epoch, train_loss, final=fraction >= 1.0)
        task.model.train()
    rec = {"kind": "epoch", "epoch": epoch, "train_loss": train_loss, **extra,
           "step_seconds": round(step_time, 3), **(rate or {})}
    if fraction < 1.0:
        rec["partial"] = round(fraction, 4)
    line = task.epoch_line(epoch, rec)
    if fraction < 1.0:
        line += f"  (stopped {fraction:.0%} into the epoch)"
    say(line)
    run.append_metrics(rec)
    engine.barrier()
    return rec


# -- iteration-based training (language models) --------------------------------------

@dataclass
class IterConfig:
    max_iters: int | None = 2000      # None: until the time budget is spent
    eval_interval: int = 250
    log_interval: int = 50
    seed: int = 0
    time_budget: float | None = None  # seconds of the loop, evaluation included
    progress: bool | None = None


class IterTask:
    """What an iteration-based family supplies: it draws its own batches."""

    model: torch.nn.Module
    checkpoint: torch.nn.Module  # what the checkpoints hold (the model, or only what trains)

    def train_step(self) -> float:
        """One optimisation step (all micro-batches); returns the mean training loss."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Held-out metrics; must hold `val_loss`."""
        raise NotImplementedError

    def set_progress(self, iteration: int, fraction: float) -> None:
        """Called before each step (for the learning-rate schedule)."""

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def log_fields(self) -> dict:
        return {}

    def distribute(self, engine: Engine) -> None:
        """Called by the loop before training (under torchrun: wrap what trains in DDP)."""


LAST = "last.safetensors"


def fit_iters(run: RunDir, task: IterTask, cfg: IterConfig, resume: bool = False, log=print,
              engine: Engine = CPU) -> dict:
    """Train for `max_iters` steps or `time_budget` seconds, printing `iter N: loss X`
    every log_interval steps and `iter N: val loss Y` every eval_interval steps.

    model.safetensors always holds the weights with the best validation loss so far (what
    generation and evaluation use); last.safetensors + state.pt hold the latest step, for
    --resume, which continues bit for bit (batches, dropout and schedule included).
    """
    it, elapsed, step_time, best = 0, 0.0, 0.0, math.inf
    if resume:
        state = run.load_state()
        if state is None:
            raise GenlabError(f"{run.path}: nothing to resume (no state.pt)")
        if "weights" in state:  # the checkpoint's own copy (runs before it: last.safetensors)
            task.checkpoint.load_state_dict(state["weights"])
        else:
            run.load_weights(task.checkpoint, LAST)
        task.load_state_dict(state["task"])
        it, elapsed = int(state["iter"]), float(state["elapsed"])
        step_time, best = float(state["step_time"]), float(state["best_val_loss"])
        engine.set_rng_state(state)
        _forget(run, lambda r: r.get("kind") in ("iter", "val") and r.get("iter", 0) > it)
        if cfg.max_iters is not None and it >= cfg.max_iters:
            log(f"{run.path}: already trained for {it} iterations; nothing to do (raise --max-iters)")
            return {"iters": it, "stopped": None, "best_val_loss": best}
    else:
        engine.seed(cfg.seed)

    task.distribute(engine)
    bar, say = _progress(cfg.progress, cfg.max_iters, it, "it", log)
    clock = _Clock(elapsed, step_time)

    # Under FSDP every rank holds a shard: evaluating and gathering a checkpoint take them all.
    sharded = getattr(task, "sharded", False)

    def weights() -> dict:
        """The checkpoint's tensors, whole (under FSDP a collective: every rank calls it)."""
        return task.checkpoint_state() if sharded else task.checkpoint.state_dict()

    def save():
        if not (engine.main or sharded):
            return
        state, w = task.state_dict(), weights()
        if engine.main:
            run.save_state({"task": state, "iter": it, "elapsed": clock.elapsed, "weights": w,
                            "step_time": clock.step_time, "best_val_loss": best, **engine.rng_state()})
            run.save_weights(w, LAST)

    def evaluate():
        nonlocal best
        if not (engine.main or sharded):  # rank 0 evaluates and writes; the others wait for it
            engine.barrier()
            return None
        with torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else []):
            task.model.eval()
            with torch.no_grad():
                rec = task.evaluate()
            task.model.train()
        improved = rec["val_loss"] < best
        if improved:
            best = rec["val_loss"]
            w = weights() if (engine.main or sharded) else None
            if engine.main:
                run.save_weights(w)
        rec = {"kind": "val", "iter": it, **rec, "best": improved, "elapsed": round(clock.elapsed, 2)}
        if engine.main:
            run.append_metrics(rec)
        say(f"iter {it}: val loss {rec['val_loss']:.4f}" + ("  (best so far, saved)" if improved else ""))
        engine.barrier()
        return rec

    stopped, steps_taken, last_eval, pending = None, 0, it if resume else -1, None
    log_t, log_it = clock.step_time, it
    with _Interrupt() as intr:
        try:
            task.model.train()
            while cfg.max_iters is None or it < cfg.max_iters:
                stopped = pending if engine.distributed else _stop_reason(intr, cfg.time_budget, clock.elapsed)
                if stopped:
                    break
                frac = 0.0 if cfg.max_iters is None else it / cfg.max_iters
                if cfg.time_budget is not None:
                    frac = max(frac, clock.elapsed / cfg.time_budget)
                task.set_progress(it, min(frac, 1.0))
                t0 = time.monotonic()
                loss = float(task.train_step())
                if engine.distributed:  # the global batch's mean: each rank's, weighted by its share
                    loss, pending = _agree(engine, loss * engine.share, intr, cfg.time_budget, clock)
                _check_finite(loss, f"iteration {it + 1}", run, "best")
                it += 1
                steps_taken += 1
                _stepped(clock, t0, bar, lambda: f"loss {loss:.4f}")
                if it % cfg.log_interval == 0 or it == 1:
                    extra = task.log_fields()
                    rate = {"steps_per_s": round((it - log_it) / (clock.step_time - log_t), 3)} \
                        if clock.step_time > log_t else {}
                    if engine.distributed:
                        rate["world_size"] = engine.world_size
                    log_t, log_it = clock.step_time, it
                    run.append_metrics({"kind": "iter", "iter": it, "loss": loss, **extra, **rate,
                                        "elapsed": round(clock.elapsed, 2)})
                    say(f"iter {it}: loss {loss:.4f}" + "".join(f", {k} {v:.3g}" for k, v in extra.items())
                        + f", {clock.elapsed:.0f}s")
                if it % cfg.eval_interval == 0:
                    evaluate()
                    last_eval = it
                    save()
                    clock.tick()
            if steps_taken and last_eval != it and stopped != "interrupt":
                evaluate()
            if engine.any(engine.main and not run.path.joinpath("model.safetensors").is_file()):
                w = weights() if (engine.main or sharded) else None
                if engine.main:
                    run.save_weights(w)  # stopped before any evaluation: keep it usable
            save()
        finally:
            if bar is not None:
                bar.close()
    engine.barrier()  # rank 0's last writes are done before any rank reads the run
    _say_stopped(say, stopped, run, cfg.time_budget, f"{it} iterations")
    return {"iters": it, "stopped": stopped, "wall_seconds": clock.elapsed,
            "step_seconds": clock.step_time, "best_val_loss": best, "world_size": engine.world_size}
