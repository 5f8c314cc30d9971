"""Orbax checkpoints of a training run: items 'params', 'opt_state' and 'meta' (step and
config as JSON) under <workdir>/checkpoints/<step>/.

Saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it
when complete, so a partial save is never listed. The step's rng and the data position are
pure functions of (seed, step); meta also holds the input pipeline's state (next step, what
identifies the data), which the resumed pipeline checks (mdistill/data/pipeline.py).

Meta also holds a checksum of every saved array ('checksums', verified on restore: a
checkpoint whose bytes changed is set aside as corrupt like a truncated one) and, for a
distillation run, its teacher's digest, path and step ('teacher', checked on resume).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
import weakref

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from mdistill import workdir as paths
from mdistill.metrics import log

class CheckpointError(RuntimeError):
    pass


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose arrays read back with other bytes than were saved."""


LOCK_FILE = ".lock"  # in the workdir; names the run holding it: "pid <pid> on <host> since <time>"


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Hold the workdir for one run while the block runs: an exclusive flock on
    <workdir>/.lock, so a second run fails at once, naming the holder, instead of mixing its
    metrics and checkpoints into this one. The kernel drops the lock when its holder dies,
    however it dies (SIGKILL included), so it is never left stuck. Only the primary process
    takes it; on multi-host runs the others learn from it whether it got it. A URL workdir
    (gs://...) is held with a lease instead (mdistill.workdir.Lease: best-effort)."""
    fd, held, holder, lease = None, True, "another run", None
    if jax.process_index() == 0 and paths.is_url(workdir):
        try:
            lease = paths.Lease(workdir)
        except ValueError as e:  # MDISTILL_LEASE_SECONDS that is not a number of seconds
            raise CheckpointError(str(e)) from e
        refused = lease.acquire()
        held, holder = refused is None, refused or holder
    elif jax.process_index() == 0:
        path = os.path.join(workdir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held, holder = False, _lock_holder(fd)
        except OSError as e:  # a filesystem without locks (some network mounts): run, but say so
            log(f"WARNING: cannot lock {path} ({e}): nothing stops a second run from using this workdir")
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      "\n".encode(), 0)
    if jax.process_count() > 1:  # the other processes stop too, rather than wait for process 0
        from jax.experimental import multihost_utils

        held = bool(multihost_utils.broadcast_one_to_all(np.int32(held)))
    if not held:
        if fd is not None:
            os.close(fd)
        raise CheckpointError(f"workdir {workdir} is in use by {holder}: two runs in one workdir would mix their "
                              "metrics and delete each other's checkpoints. Wait for it to end, or use another "
                              "--workdir.")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
        if lease is not None:
            lease.release()


def _lock_holder(fd: int) -> str:
    """The holder's line in the lock file (it writes it just after locking: wait a little)."""
    for _ in range(20):
        text = os.pread(fd, 300, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "another run"


CONFIG_FILE = "config.json"  # in the workdir: the resolved config of the run, readable without Orbax


def write_config(workdir: str, config) -> str | None:
    """<workdir>/config.json: the run's resolved config as indented JSON, written at start by
    pre-training, fine-tuning and the linear probe. Process 0 only; written beside the target
    and renamed, so a reader never sees half a file. Returns the path (None elsewhere)."""
    if jax.process_index() != 0:
        return None
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(as_dict, indent=2, sort_keys=True, default=str) + "\n"
    paths.makedirs(workdir)
    path = paths.join(workdir, CONFIG_FILE)
    write_atomically(path, text.encode())
    return path


def write_atomically(path: str, payload: bytes | None = None, writer=None) -> None:
    """`path` written whole or not at all: into a temporary file beside it (same folder, so
    the rename is atomic), flushed to disk, then renamed over it. `payload`: the bytes;
    or `writer(temporary_path)` writes the file itself (torch.save, safetensors). On any
    failure the temporary file is removed and whatever was at `path` is untouched. At a URL
    (gs://...) the object is uploaded whole (an object store shows it only once complete);
    a `writer` writes a local temporary file first."""
    if paths.is_url(path):
        if writer is not None:
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                writer(os.path.join(folder, "file"))
                with open(os.path.join(folder, "file"), "rb") as f:
                    payload = f.read()
        paths.write_bytes(path, payload)
        return
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
    try:
        if writer is None:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        else:
            writer(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # as open() makes it: some writers make private temporary files
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def check_finite(records: list[dict], mngr, what: str = "") -> None:
    """Stop before a non-finite state can be saved: every record (one per step since the
    last check) has a finite loss and grad_norm (where it reports one), and finite parameters
    where the step reports `finite_params`. On a failure the save in flight (of a checked
    state) completes first, so that the error names the last good checkpoint of `mngr`, which
    is kept (None: a run that saves none). `what` prefixes the message."""
    for r in records:
        bad = [k for k in ("loss", "grad_norm") if k in r and not np.isfinite(r[k])]
        bad += [] if r.get("finite_params", True) else ["parameters"]
        if not bad:
            continue
        if mngr is None:
            raise FloatingPointError(f"{what}non-finite {' and '.join(bad)} at step {r['step']}; this run saves no "
                                     "checkpoint. Lower --config.optim.blr (or lr)")
        try:
            mngr.wait_until_finished()
        except Exception:  # a failed save is not what this error is about
            pass
        good = mngr.latest_step()
        kept = (f"the last good checkpoint {mngr.directory}/{good} is kept (rerunning resumes from it)"
                if good is not None else "no checkpoint was written before it")
        values = ", ".join(f"{k} {float(v):.4g}" for k, v in r.items() if k.endswith("loss") or k == "grad_norm")
        raise FloatingPointError(f"{what}non-finite {' and '.join(bad)} at step {r['step']} ({values}); nothing of "
                                 f"it was saved; {kept}. Lower --config.optim.blr (or lr), or set "
                                 "--config.optim.grad_clip")


def ensure_writable(folder: str, what: str = "workdir") -> None:
    """`folder` exists (created if need be) and takes a file: found before the work, not
    after it. A CheckpointError names the folder and the reason. A URL folder (gs://...):
    its folder marker is made and a probe object written and deleted."""
    if paths.is_url(folder):
        try:
            paths.makedirs(folder)
            probe = paths.join(folder, f".write-test-{socket.gethostname()}-{os.getpid()}")
            paths.write_bytes(probe, b"ok")
            paths.remove(probe)
        except Exception as e:  # fsspec backends raise their own types (auth, HTTP)
            raise CheckpointError(f"{what} {folder!r} is not writable: {type(e).__name__}: {e}") from e
        return
    if os.path.lexists(folder) and not os.path.isdir(folder):
        kind = "a dangling symlink" if os.path.islink(folder) else "a file"
        raise CheckpointError(f"{folder} is not a folder ({kind}): nothing can be written there. Move it away, "
                              "or use another workdir.")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")  # one per process, wherever it runs
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"{what} {folder!r} is not writable: {e}") from e


def checkpoint_dir(workdir: str) -> str:
    return paths.join(paths.resolve(workdir), "checkpoints")


def manager(directory: str, keep: int | None = None, best_metric: str = "", create: bool = True
            ) -> ocp.CheckpointManager:
    """Keeps the last `keep` checkpoints, plus the best one by `best_metric` ('loss' or
    'max:knn_top1'; '' for none)."""
    handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    policies = [pp.LatestN(keep)]
    if best_metric:
        mode, _, name = best_metric.rpartition(":")
        policies.append(pp.BestN(get_metric_fn=lambda m: m[name], reverse=mode != "max", n=1))
    # Folders are created inside save(), so a failure to create them raises there. Created in
    # the background, a failure left Orbax's other threads waiting 5 minutes for its signal,
    # and the process could not exit until then.
    options = ocp.CheckpointManagerOptions(create=create, preservation_policy=pp.AnyPreservationPolicy(policies),
                                           async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, meta: dict, metrics: dict | None = None):
    """Start an asynchronous save; a failure of the previous one surfaces here, named. The
    arrays' checksums go into meta['checksums'] (computed here, on the host, before the save
    starts: see checksums() for the cost)."""
    meta = dict(meta, checksums={"params": checksums(params), "opt_state": checksums(opt_state)})
    wait(mngr)  # the previous save's failure surfaces under its own step (Orbax waits for it anyway)
    try:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                opt_state=ocp.args.StandardSave(opt_state),
                                                meta=ocp.args.JsonSave(meta)), metrics=metrics)
    except Exception as e:
        raise write_error(mngr, step, e) from e
    _IN_FLIGHT[mngr] = step


# the step of each manager's asynchronous save in flight, to name it when it fails later
_IN_FLIGHT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wait(mngr: ocp.CheckpointManager) -> None:
    """Wait for the save in flight; its failure is named by its own step."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise write_error(mngr, _IN_FLIGHT.pop(mngr, None), e) from e
    _IN_FLIGHT.pop(mngr, None)


def write_error(mngr, step, error) -> CheckpointError:
    try:  # let an earlier save in flight finish, so that it is listed below
        mngr.wait_until_finished()
    except Exception:
        pass
    try:
        kept = sorted(int(d) for d in paths.listdir(str(mngr.directory)) if d.isdigit())
    except Exception:  # no folder (yet), or a store that cannot be listed now
        kept = []
    return CheckpointError(f"could not write checkpoint {'' if step is None else step} in {mngr.directory} "
                           f"({type(error).__name__}: {error}). Full disk or unwritable folder? The complete "
                           f"checkpoints already there are untouched: steps {kept}")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state):
    """-> (params, opt_state, meta), placed with the shardings of the abstract targets."""
    out = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    verify(out["meta"], {"params": out["params"], "opt_state": out["opt_state"]},
           f"checkpoint {step} in {mngr.directory}")
    return out["params"], out["opt_state"], out["meta"]


def restore_latest_good(mngr: ocp.CheckpointManager, abstract_params, abstract_opt_state,
                        config: dict | None = None, teacher: dict | None = None,
                        allow_teacher_change: bool = False):
    """The newest checkpoint that restores, or None.

    Only a checkpoint proven unreadable (its files do not read back even as they were saved:
    truncated) or corrupt (its arrays read back but fail the checksums saved with them) is
    moved aside, to checkpoints/corrupt-<step>-<time>, never deleted, and the previous one
    is tried. Anything else is refused with a CheckpointError and nothing is moved: a
    `config` that differs from the checkpoint's in a field not declared resumable
    (listed), a `teacher` (teacher_record) other than the one the checkpoint was distilled
    from (unless `allow_teacher_change`), a checkpoint that reads but does not fit the
    abstract state (the code changed), an error of the environment (permissions, memory)."""
    for step in sorted(mngr.all_steps(), reverse=True):
        where = f"checkpoint {step} in {mngr.directory}"
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            _set_aside_if_unreadable(mngr, step, e)
            continue
        changes = config_changes(meta.get("config", {}), config) if config is not None else []
        if changes:
            raise CheckpointError(f"{where} was saved by a run with a different config; resuming would mix two "
                                  "experiments, so nothing was resumed and nothing was changed. Use another "
                                  "--workdir, or undo these changes:\n" + "\n".join(changes))
        if teacher is not None:
            check_teacher(meta, teacher, where, allow_teacher_change)
        try:
            return restore(mngr, step, abstract_params, abstract_opt_state)
        except CorruptCheckpoint as e:  # read, but not the bytes that were saved
            _set_aside_if_unreadable(mngr, step, e)
        except Exception as e:  # Orbax/TensorStore raise many types, for damaged files and for mismatches
            unreadable = _read_as_saved(mngr, step)
            if unreadable is None:
                raise CheckpointError(f"{where} is readable but does not fit this run's model and optimizer (did "
                                      "the code change since it was saved?); nothing was changed. Use another "
                                      f"--workdir, or the version that wrote it. ({type(e).__name__}: "
                                      f"{str(e)[:500]})") from e
            _set_aside_if_unreadable(mngr, step, unreadable)
    return None


def _environmental(error: Exception) -> bool:
    """An error that says nothing about the files' content."""
    return isinstance(error, (PermissionError, MemoryError)) or "PERMISSION_DENIED" in str(error)


def _read_as_saved(mngr, step: int) -> Exception | None:
    """Read the step's arrays into host memory in their own saved structure: None if they
    read, else the error (the proof that the files, not the target, are at fault)."""
    try:
        saved = mngr.item_metadata(step)
        as_saved = {k: ocp.args.StandardRestore(jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved[k]))
                    for k in ("params", "opt_state")}
        mngr.restore(step, args=ocp.args.Composite(**as_saved))
        return None
    except Exception as e:
        return e


def _set_aside_if_unreadable(mngr, step: int, error: Exception) -> None:
    if _environmental(error):
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} could not be read ({type(error).__name__}: "
                              f"{str(error)[:300]}); nothing was changed. Fix the cause and rerun.") from error
    if jax.process_index() == 0:
        aside = paths.join(str(mngr.directory), f"corrupt-{step}-{int(time.time())}")
        paths.rename(paths.join(str(mngr.directory), str(step)), aside)
        why = (str(error)[:300] if isinstance(error, CorruptCheckpoint) else
               f"checkpoint {step} could not be read ({type(error).__name__}: {str(error)[:200]})")
        log(f"WARNING: {why}; moved to {aside}, trying the previous one")
    mngr.reload()


def config_changes(saved: dict, current: dict) -> list[str]:
    """Fields whose values differ between a checkpoint's config (read as today's by
    mdistill.config.upgrade: a field added since holds what that run did) and the current
    one, except those the schema declares resumable (mdistill.config.schema.resumable())."""
    from mdistill.config import upgrade
    from mdistill.config.schema import resumable

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    # JSON round trip: tuples and lists compare equal
    a = flat(json.loads(json.dumps(upgrade(saved, "the checkpoint's config").to_dict())))
    b = flat(json.loads(json.dumps(current)))
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    free = resumable()
    return [f"  {k}: {a.get(k, '<absent>')!r} in the checkpoint -> {b.get(k, '<absent>')!r} now"
            for k in changed if k not in free]


def _resolve(path: str) -> tuple[str, int]:
    """Accept a workdir, its checkpoints/ folder or one step folder -> (manager dir, step)."""
    path = paths.resolve(path)
    path = path.rstrip("/") if paths.is_url(path) else path
    if not paths.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    parent, base = path.rsplit("/", 1) if paths.is_url(path) else os.path.split(path)
    if base.isdigit() and paths.isdir(paths.join(path, "params")):
        return parent, int(base)
    directory = checkpoint_dir(path) if paths.isdir(paths.join(path, "checkpoints")) else path
    steps = manager(directory, create=False).all_steps()
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory!r} (expected <step>/params inside)")
    return directory, max(steps)


def load_params(path: str, sharding) -> tuple[dict, dict]:
    """Parameters of the latest checkpoint at `path` and the run's meta (step, config).
    `sharding` places them: one Sharding for all, a function (path, shape) -> Sharding, or
    None for the default device."""
    directory, step = _resolve(path)
    try:
        mngr = manager(directory, create=False)
        metadata = mngr.item_metadata(step)
        if sharding is None:  # Orbax needs a target placement to restore another topology's save
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        fixed = isinstance(sharding, jax.sharding.Sharding)
        place = (lambda key, shape: sharding) if fixed else sharding
        abstract = jax.tree_util.tree_map_with_path(
            lambda key, m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=place(jax.tree_util.keystr(key), m.shape)),
            metadata["params"])
        out = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
    except Exception as e:
        raise CheckpointError(f"checkpoint {directory}/{step} could not be read "
                              f"({type(e).__name__}: {str(e)[:300]})") from e
    verify(out["meta"], {"params": out["params"]}, f"checkpoint {directory}/{step}")  # raises; moves nothing
    return out["params"], out["meta"]


def load_shapes(path: str) -> tuple[dict, dict]:
    """The parameters' shapes (a tree of jax.ShapeDtypeStruct) of the latest checkpoint at
    `path` and the run's meta, without reading the arrays."""
    directory, step = _resolve(path)
    try:
        mngr = manager(directory, create=False)
        shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), mngr.item_metadata(step)["params"])
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
        raise CheckpointError(f"checkpoint {directory}/{step} could not be read "
                              f"({type(e).__name__}: {str(e)[:300]})") from e
    return shapes, meta


# ---- checksums and the teacher's digest ---------------------------------------------------
HASHED_IN_THREADS = 64 * 2 ** 20  # bytes above which the arrays are hashed in parallel threads


def checksums(tree, gather: bool = False) -> dict[str, str]:
    """{path: 'dtype[shape]:hash'} of the arrays of `tree`: sha256 (first 128 bits) of each
    array's bytes in C order, on the host. Exact on one process, whatever the sharding.

    With several processes, an array split across them (fsdp over hosts) is left out
    unless `gather` (then every process gathers its whole value: once for the teacher, never
    on the save path); a replicated one is hashed from this process's copy, so every process
    computes the same. Cost: a copy to host and ~1 GB/s of hashing per thread (well under a
    millisecond for the smoke models; about a second per GB of parameters and optimizer
    state for large ones, paid on the save's blocking path, threads over the arrays)."""
    leaves = [(jax.tree_util.keystr(k), x) for k, x in jax.tree_util.tree_leaves_with_path(tree)]
    local = [not isinstance(x, jax.Array) or x.is_fully_addressable for _, x in leaves]
    fetched = iter(jax.device_get([x for (_, x), here in zip(leaves, local) if here]))  # transfers overlap
    values = [(name, next(fetched) if here else _whole_value(x, gather)) for (name, x), here in zip(leaves, local)]
    values = [(name, np.asarray(v)) for name, v in values if v is not None]
    if sum(v.nbytes for _, v in values) > HASHED_IN_THREADS:  # hashlib releases the GIL
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            hashed = list(pool.map(_checksum, (v for _, v in values)))
    else:
        hashed = [_checksum(v) for _, v in values]
    return {name: h for (name, _), h in zip(values, hashed)}


def _whole_value(x: jax.Array, gather: bool):
    """The value of an array not fully on this process: a replica's, the gathered one, or None."""
    if x.is_fully_replicated:
        return x.addressable_shards[0].data
    if not gather:
        return None
    from jax.experimental import multihost_utils  # every process calls it, in the same order

    return multihost_utils.process_allgather(x, tiled=True)


def _checksum(value: np.ndarray) -> str:
    kind = f"{value.dtype.name}{list(value.shape)}"
    data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)  # C order (a 0-d array becomes 1-d)
    return f"{kind}:{hashlib.sha256(data).hexdigest()[:32]}"


def verify(meta: dict, items: dict, where: str) -> None:
    """Raise CorruptCheckpoint when an array of `items` ({'params': tree, ...}, as restored)
    differs from the checksum meta['checksums'] recorded for it at the save. Checkpoints
    saved without checksums (older ones, conversions) are not checked; an array restored
    in another dtype or shape than it was saved (a cast by the target) is not compared."""
    saved = meta.get("checksums")
    if not saved:
        return
    bad = []
    for item, tree in items.items():
        recorded = saved.get(item, {})
        for name, now in checksums(tree).items():
            then = recorded.get(name)
            if then and then.split(":")[0] == now.split(":")[0] and then != now:
                bad.append(f"{item}{name}")
    if bad:
        raise CorruptCheckpoint(f"{where} is corrupt: {len(bad)} array(s) read back with other bytes than were "
                                f"saved (checksum mismatch): {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")


def teacher_record(path: str, params) -> dict:
    """What a distillation checkpoint records of its frozen teacher (meta['teacher']): the
    digest of the loaded parameters (sha256 over their checksums in path order, the same on
    every process), the checkpoint's path ('' for a random init) and, for an mdistill
    checkpoint, its step."""
    sums = checksums(params, gather=True)
    digest = hashlib.sha256(json.dumps(sorted(sums.items())).encode()).hexdigest()
    step = None
    if path and paths.isdir(path):
        try:
            step = load_shapes(path)[1].get("step")
        except Exception:  # the weights loaded: a step that cannot be read is only not named
            step = None
    return {"digest": digest, "path": paths.resolve(path) if path else "", "step": step}


def _describe_teacher(record: dict) -> str:
    where = record.get("path") or "a random init"
    step = record.get("step")
    return f"{record.get('digest', '?')[:16]} ({where}{'' if step is None else f', step {step}'})"


def check_teacher(meta: dict, teacher: dict, where: str, allow_change: bool = False) -> None:
    """Refuse to resume `where` (its `meta`) with another teacher than it was distilled from
    (`teacher`: teacher_record), in one line naming both, unless `allow_change`. A checkpoint
    saved before digests were recorded resumes, saying it could not be checked."""
    saved = meta.get("teacher")
    if not saved or not saved.get("digest"):
        log(f"WARNING: {where} records no teacher digest (saved before they were recorded): the teacher "
            f"{_describe_teacher(teacher)} could not be checked against the one it was distilled from")
        return
    if saved["digest"] == teacher["digest"]:
        return
    line = (f"{where} was distilled from teacher {_describe_teacher(saved)}, but config.teacher.checkpoint now "
            f"gives teacher {_describe_teacher(teacher)}")
    if allow_change:
        log(f"WARNING: {line}; resuming with the new teacher (config.teacher.allow_change=True)")
        return
    raise CheckpointError(f"{line}: resuming would mix two teachers, so nothing was resumed and nothing was "
                          "changed. Point config.teacher.checkpoint at the teacher it was distilled from, use "
                          "another --workdir, or set --config.teacher.allow_change=True if the change is meant.")
