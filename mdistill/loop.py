"""The one training loop of pre-training (train.py), fine-tuning (evaluate/finetune.py) and
the linear probe's head (evaluate/linprobe.py), as big_vision's single trainer: each job
gives its jitted step, its state, its input iterator and its monitors; the loop alone plans
the steps (plan_steps), resumes (restore), checks for non-finite values
(mdistill.weights.checkpoint.check_finite), logs (console, metrics.jsonl, TensorBoard), times the
checkpoints, handles preemption (mdistill.preemption) and calls the monitors.

A step's metrics stay on device until a log, a monitor or a save needs them; then every step
since the last check is fetched and checked, so nothing non-finite is evaluated, logged or
saved. The first line names the mesh and what one device holds of the trained parameters
and of the optimizer state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import flax
import jax
import numpy as np

from mdistill.metrics import MetricsWriter, log
from mdistill.preemption import PreemptionWatcher
from mdistill.weights import checkpoint


@flax.struct.dataclass
class TrainState:
    """What pre-training and fine-tuning train: the step, the parameters, the optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Plan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_steps(config, examples: int, per_step: int) -> Plan:
    """Steps from config.num_epochs / warmup_epochs over `examples` read `per_step` at a time,
    or config.total_steps / warmup_steps where set (>= 0); warm-up at most the whole run."""
    per_epoch = max(examples // per_step, 1)
    total = config.total_steps if config.total_steps >= 0 else round(config.num_epochs * per_epoch)
    warmup = config.warmup_steps if config.warmup_steps >= 0 else round(config.warmup_epochs * per_epoch)
    return Plan(per_epoch, int(total), int(min(warmup, total)))


class Monitor(Protocol):
    """An evaluation the loop runs between steps on the live state (e.g.
    mdistill.evaluate.knn.KNNMonitor, visualize.ReconstructionWriter, fine-tuning's test
    evaluation). The loop checks the steps since the last check first and waits for them,
    calls maybe_run at every step one of its monitors is due, logs their metrics with the
    step's (a monitor that returns metrics makes a log line), saves them with the checkpoint
    of that step, and leaves their time out of images_per_sec."""

    def metric_names(self) -> set[str]:
        """The metrics it returns when it runs (config.best_metric may name them)."""

    def due(self, step: int, is_last: bool = False, saving: bool = False) -> bool:
        """Whether it runs after `step` (`is_last`: the run's final step; `saving`: a
        checkpoint is written at this step)."""

    def maybe_run(self, step: int, params, is_last: bool = False, saving: bool = False) -> dict:
        """Its metrics for `params` (what the job's `monitor_input` gives: the trained
        parameters) when due at `step`, else {}."""


@dataclasses.dataclass
class Checkpoints:
    """Where and how often the loop saves: the state's params and opt_state, and meta(step)
    (the step, the config, the input pipeline's state, what the job adds). With `ranked`,
    the step's metrics and the monitors' go with each save (config.best_metric ranks by them)."""

    manager: Any
    every: int
    meta: Callable[[int], dict]
    ranked: bool = False


def restore(mngr, abstract_params, abstract_opt_state, config: dict, what: str = "", teacher: dict | None = None,
            allow_teacher_change: bool = False):
    """The latest readable checkpoint of `mngr` -> (params, opt_state, meta), or None for a
    fresh start; one saved with another config (in a field not declared resumable) or
    another teacher is refused (mdistill.weights.checkpoint.restore_latest_good)."""
    restored = checkpoint.restore_latest_good(mngr, abstract_params, abstract_opt_state, config, teacher=teacher,
                                              allow_teacher_change=allow_teacher_change)
    if restored is not None:
        log(f"{what}resumed from {mngr.directory}/{restored[2]['step']}")
    return restored


def bytes_held(tree) -> int:
    """Bytes of `tree`'s arrays one device holds (the largest share: an uneven split is not
    spread evenly)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if isinstance(x, jax.Array) else np.shape(x)
        total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return total


def mesh_line(mesh, params_bytes: int, opt_bytes: int, what: str = "") -> str:
    """'mesh data=4 fsdp=2 | per device: params 1,234,567 B + optimizer 2,469,134 B = 3.5 MiB'."""
    axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    total = params_bytes + opt_bytes
    power = min(max(total.bit_length() - 1, 0) // 10, 3)  # B, KiB, MiB, GiB
    return (f"{what}mesh {axes} | per device: params {params_bytes:,} B + optimizer {opt_bytes:,} B = "
            f"{total / 1024 ** power:.1f} {('B', 'KiB', 'MiB', 'GiB')[power]}")


def format_line(step: int, total: int, m: dict, eta: float) -> str:
    """Pre-training's console line: the losses, lr, throughput, time left."""
    losses = " ".join(f"{k} {v:.4f}" for k, v in m.items() if k.endswith("loss"))
    lr = f" | lr {m['lr']:.2e}" if "lr" in m else ""
    return (f"step {step}/{total} | {losses}{lr} | {m['images_per_sec']:.0f} img/s | "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")


@dataclasses.dataclass
class Result:
    state: Any
    last: dict  # the last logged line's metrics ({} if none was logged)
    stopped: bool  # by a SIGTERM, before the planned last step: rerunning the command resumes


def run(step_fn: Callable[[Any, Any], tuple[Any, dict]], state, batches: Iterator, *, mesh, start: int, total: int,
        batch_size: int, log_every: int, writer: MetricsWriter | None = None, monitors: Sequence[Monitor] = (),
        monitor_input: Callable[[Any], Any] = lambda s: s.params, checkpoints: Checkpoints | None = None,
        preemption: PreemptionWatcher | None = None, what: str = "", line: Callable = format_line,
        extra: Callable[[int], dict] = lambda step: {}, check: Callable[[list[dict]], None] = lambda records: None,
        unlogged: Sequence[str] = (), mean_dtype=None, closers: Sequence[Callable[[], None]] = ()) -> Result:
    """Steps start .. total - 1: `state, metrics = step_fn(state, next(batches))`.

    After step s (done = s + 1) the loop logs when done % log_every == 0, at the last step or
    when a monitor returns metrics; saves (with `checkpoints`) when done % checkpoints.every
    == 0, at the last step, or when `preemption` asks (then stops). Before any of these the
    metrics of the steps since the last check are fetched and checked: finite loss and
    grad_norm (and finite_params where the step reports it), then `check(records)` (the job's
    own). A logged line is the mean over the steps since the last line of each metric but
    `unlogged` (in `mean_dtype`, default the metric's own), `extra(done)`, images_per_sec
    and the monitors' metrics, written to `writer` and printed by `line(done, total, metrics,
    eta)`. `what` ('finetune: ') prefixes the loop's lines and errors. `closers` (the input
    pipeline's, the writer's) run at the end however it ends: when an error stops the run,
    their own failures are logged under it, never raised over it."""
    mngr = checkpoints.manager if checkpoints is not None else None
    log(mesh_line(mesh, bytes_held(state.params), bytes_held(state.opt_state), what))
    hidden = {"finite_params", "step", *unlogged}
    pending, window, last, stopped = [], [], {}, False
    t_log, step_log = time.time(), start
    error = None
    try:
        if preemption is not None and preemption.requested:
            log("SIGTERM before the first step: nothing to save, stopping; rerun the same command to resume")
            return Result(state, {}, True)
        for step in range(start, total):
            state, metrics = step_fn(state, next(batches))
            done = step + 1
            pending.append((done, metrics))  # stays on device until needed
            is_last = done == total
            stop = preemption is not None and preemption.should_stop(done)
            log_now = done % log_every == 0 or is_last
            save_now = mngr is not None and (done % checkpoints.every == 0 or is_last or stop)
            due = [m for m in monitors if m.due(done, is_last, save_now)]
            if not (log_now or save_now or due):
                continue
            fetched = [dict(jax.device_get(m), step=s) for s, m in pending]
            pending = []
            checkpoint.check_finite(fetched, mngr, what)  # nothing non-finite is evaluated, logged or saved
            check(fetched)
            window += fetched
            monitored, t0 = {}, time.time()
            for monitor in due:
                monitored.update(monitor.maybe_run(done, monitor_input(state), is_last, save_now))
            t_log += time.time() - t0  # the monitors' time is not training time
            if log_now or monitored:
                last = {k: float(np.mean(np.asarray([m[k] for m in window], mean_dtype)))
                        for k in window[0] if k not in hidden}
                now = time.time()
                ips = (done - step_log) * batch_size / max(now - t_log, 1e-9)
                last.update(extra(done), step=done, images_per_sec=ips, **monitored)
                if writer is not None:
                    writer.write(done, last)
                log(line(done, total, last, (total - done) * batch_size / ips))
                window, t_log, step_log = [], now, done
            if save_now:
                ranked = ({k: float(v) for k, v in fetched[-1].items()} | monitored) if checkpoints.ranked else None
                checkpoint.save(mngr, done, state.params, state.opt_state, checkpoints.meta(done), metrics=ranked)
            if stop and not is_last:
                log(f"SIGTERM: saved step {done}, stopping; rerun the same command to resume")
                stopped = True
                break
        if mngr is not None:
            checkpoint.wait(mngr)  # the last save completes (or fails, named) before we return
    except BaseException as e:
        error = e
        if mngr is not None:
            try:  # let the last good save complete, without hiding the error that stopped us
                mngr.wait_until_finished()
            except Exception:
                pass
        raise
    finally:
        close_all(closers, error)
    return Result(state, last, stopped)


def close_all(closers, error: BaseException | None) -> None:
    """Run every closer. When `error` stops the run, a closer's failure (often of the same
    cause: a full disk) is logged, never raised over it: the first error wins. Otherwise the
    first failure is raised once all have run."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:
            if error is None and first is None:
                first = e
            else:
                log(f"WARNING: {getattr(close, '__qualname__', close)} failed too ({type(e).__name__}: {e})")
    if first is not None:
        raise first
