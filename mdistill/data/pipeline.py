"""The training input pipeline: grain over any source, MAE transforms, per-host shards,
batches as global jax.Arrays, resumable exactly.

What a batch is. Batch `step` is a pure function of (seed, step). Epoch e = step //
steps_per_epoch is a fresh permutation of the source (np.random.default_rng((seed, e))),
the remainder of each epoch is dropped, and global batch `step` takes slots
[offset * G, (offset + 1) * G) of that permutation (G the global batch size). Host p of P
reads only its slots [p * L, (p + 1) * L), L = G / P: the hosts read disjoint shards that
together cover the epoch, and the global batch is the same for any number of hosts or
workers. The augmentation of slot s at step t draws from the rng (seed, t, s, 1), so it too
is independent of the layout.

Where the work happens. A grain MapDataset over this host's positions -> read, decode and
transform one example (ExampleReader) -> batch of L -> to_iter_dataset (config.data.threads
threads per process) -> mp_prefetch (config.data.workers processes; 0 = in the training
process). A thread of the training process turns each host batch into a global jax.Array
with the step's sharding (jax.make_array_from_process_local_data), config.data.prefetch
batches ahead, so decoding and the host-to-device copy overlap the running step.

State. As batches are a function of (seed, step), the iterator's state is the next step,
plus what identifies the data (its size and a fingerprint) and the records found bad so
far. state() goes into every checkpoint's meta; a pipeline built from it checks the data
is the same and continues with exactly the batches an uninterrupted run would have seen.

Bad input. A record that cannot be read or decoded (corrupt, truncated, unreadable file)
is skipped: its slot takes another record, drawn from the rng (seed, step, slot, 2 + try),
so batches stay pure functions of the step (in an unshuffled pass, its slot is padding:
zeros, label -1). Each bad record is logged by path (or TFDS
index) with the decoder's error; when more distinct records than max_bad_fraction of the
dataset have been found bad, the run stops with a DataError listing them.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time

import jax
import numpy as np

from mdistill.data.errors import DataError
from mdistill.data.transforms import Transform, load_image
from mdistill.metrics import log

MAX_TRIES = 4  # records tried for one slot before it is filled with zeros (and all counted bad)
_END = object()


@dataclasses.dataclass(frozen=True)
class Layout:
    """How global batches map onto the dataset and the hosts."""
    size: int               # records in the source
    global_batch: int
    process_index: int = 0
    process_count: int = 1
    # False: each epoch reads the records in order, every one once, the last batch padded
    # (label -1) by repeating the last record: what feature extraction needs
    shuffle: bool = True

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if not self.shuffle:
            return -(-self.size // self.global_batch)
        return self.size // self.global_batch


class ExampleReader:
    """Host-local position -> {'image': uint8 [H, W, C], 'skipped': int64 [MAX_TRIES]}
    (+ 'label'). Runs in grain's worker processes, so it is picklable and deterministic."""

    def __init__(self, source, transform: Transform, seed: int, layout: Layout, labels: bool = False):
        self.source, self.transform, self.seed, self.layout, self.labels = source, transform, seed, layout, labels
        self.min_side = transform.min_side()
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_perms": {}}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:  # keep the two latest epochs; one assignment, so safe across threads
            perm = np.random.default_rng((self.seed, epoch)).permutation(self.layout.size)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1} | {epoch: perm}
        return perm

    def step_and_slot(self, position: int) -> tuple[int, int]:
        """Host-local position -> (step, slot in the global batch)."""
        step, j = divmod(int(position), self.layout.local_batch)
        return step, self.layout.process_index * self.layout.local_batch + j

    def record_index(self, step: int, slot: int) -> int:
        epoch, offset = divmod(step, self.layout.steps_per_epoch)
        if not self.layout.shuffle:
            return min(offset * self.layout.global_batch + slot, self.layout.size - 1)
        return int(self.permutation(epoch)[offset * self.layout.global_batch + slot])

    def is_padding(self, step: int, slot: int) -> bool:
        """A slot past the last record of an unshuffled epoch."""
        offset = step % self.layout.steps_per_epoch
        return not self.layout.shuffle and offset * self.layout.global_batch + slot >= self.layout.size

    def decode(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        """Record `index` read and decoded: a clip (frames sampled, decoded and augmented by
        the transform) or an image (augmented later). Raises on a bad record."""
        if self.transform.reads_files:
            return self.transform(self.source.raw(index), rng)
        return load_image(self.source.raw(index), self.transform.channels, self.min_side)

    def __call__(self, position: int) -> dict:
        step, slot = self.step_and_slot(position)
        index = self.record_index(step, slot)
        skipped = np.full(MAX_TRIES, -1, np.int64)
        decoded = None
        # in an unshuffled pass (evaluation) a bad record is not replaced: its row becomes padding
        t = self.transform
        rng = np.random.default_rng((self.seed, step, slot, 1)) if t.augment != "none" else None
        for attempt in range(MAX_TRIES if self.layout.shuffle else 1):
            try:
                decoded = self.decode(index, rng)
                break
            except Exception:  # corrupt, truncated or unreadable: counted and reported by the host
                skipped[attempt] = index
                index = int(np.random.default_rng((self.seed, step, slot, 2 + attempt)).integers(self.layout.size))
        if decoded is None:
            image = np.zeros(t.sample_shape, np.uint8)
        else:
            image = decoded if t.reads_files else t(decoded, rng)
        example = {"image": image, "skipped": skipped}
        if self.labels:
            valid = decoded is not None and not self.is_padding(step, slot)
            example["label"] = np.int32(self.source.label(index) if valid else -1)
        return example


def _worker_init(*_):
    """In each grain worker: leave SIGINT/SIGTERM to the training process (it saves and
    stops the workers), and die with it if it is killed (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def resolve_workers(workers: int) -> int:
    """config.data.workers: -1 is one process per CPU core of this host, at most 32."""
    return min(os.cpu_count() or 1, 32) if workers < 0 else workers


def _mark_absl_flags_parsed():
    # grain reads absl flags; outside an absl app (tests, notebooks) they are never parsed
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Pipeline:
    """Iterator over training batches: global jax.Arrays with `sharding` (uint8 NHWC images,
    or (images, labels) with labels=True), or with sharding=None this host's numpy batches.

    Step `start_step` comes first; iteration ends after `stop_step - 1`."""

    def __init__(self, source, transform: Transform, global_batch_size: int, sharding=None, *, seed: int = 0,
                 start_step: int = 0, stop_step: int | None = None, workers: int = 0, threads: int = 2,
                 prefetch: int = 2, max_bad_fraction: float = 0.0, known_bad=(), labels: bool = False,
                 shuffle: bool = True, process_index: int | None = None, process_count: int | None = None,
                 decoder: str = "grain"):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if len(source) < global_batch_size and shuffle:
            raise DataError(f"the dataset has {len(source)} examples, fewer than the global batch size "
                            f"{global_batch_size}")
        if global_batch_size % process_count:
            raise DataError(f"global batch size {global_batch_size} is not divisible by {process_count} hosts")
        self.source, self.sharding, self.labels = source, sharding, labels
        # repeated sampling: each record read gives this many rows of the batch (a video's
        # clips, adjacent); the layout, the state and the epochs count records
        self.repeats = getattr(transform, "repeats", 1)
        self.layout = Layout(len(source), global_batch_size, process_index, process_count, shuffle)
        self.reader = ExampleReader(source, transform, seed, self.layout, labels)
        self.seed, self.step = seed, start_step
        self.stop_step = stop_step if stop_step is not None else 2 ** 40
        self.workers, self.threads, self.prefetch = workers, threads, max(prefetch, 1)
        self.max_bad_fraction = max_bad_fraction
        self.bad = set(int(i) for i in known_bad)  # distinct records found bad, this run and before
        self.records_read = 0                      # this run: records tried, bad ones included
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._iterator = None
        self.dali = None  # decoder='dali': batches decoded by NVIDIA DALI (mdistill.data.dali), same contents
        if decoder == "dali":
            from mdistill.data.dali import DaliDecoder

            self.dali = DaliDecoder(self, MAX_TRIES)
        elif decoder != "grain":
            raise DataError(f"decoder={decoder!r}: expected 'grain' or 'dali'")

    @classmethod
    def from_config(cls, config, sharding=None, start_step: int = 0, stop_step: int | None = None,
                    state: dict | None = None, source=None, transform: Transform | None = None,
                    batch_size: int | None = None, **overrides) -> "Pipeline":
        """The pipeline of config.data; `state` (from a checkpoint's meta) must match the data.
        `source`, `transform` and `batch_size` replace config.data's source, its training
        transform and config.batch_size. The batch counts rows (clips); with repeated sampling
        the pipeline reads batch / transform.repeats records a step."""
        from mdistill.data.sources import build_source
        from mdistill.data.transforms import from_config as transform_from_config

        d = config.data
        source = source if source is not None else build_source(config)
        kwargs = dict(seed=config.seed, start_step=start_step, stop_step=stop_step,
                      workers=resolve_workers(d.workers), threads=d.threads, prefetch=d.prefetch,
                      max_bad_fraction=d.max_bad_fraction)
        kwargs.update(overrides)
        transform = transform if transform is not None else transform_from_config(config)
        rows = batch_size or config.batch_size
        repeats = getattr(transform, "repeats", 1)
        if rows % repeats:
            raise DataError(f"batch size {rows} is not a multiple of data.num_sample={repeats} (clips per video)")
        if d.decoder not in ("grain", "dali"):
            raise DataError(f"config.data.decoder={d.decoder!r}: expected 'grain' or 'dali'")
        kwargs.setdefault("decoder", d.decoder)
        pipeline = cls(source, transform, rows // repeats, sharding, **kwargs)
        if state:
            pipeline.restore(state)
            if pipeline.step != start_step:
                raise DataError(f"the checkpoint's input state continues at step {pipeline.step}, its training "
                                f"state at step {start_step}")
        return pipeline

    # ---- what each batch holds (pure functions, no grain) -------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.layout.steps_per_epoch

    def global_indices(self, step: int) -> np.ndarray:
        """Records of global batch `step`, before any bad one is replaced."""
        g = self.layout.global_batch
        return np.array([self.reader.record_index(step, slot) for slot in range(g)])

    def local_indices(self, step: int) -> np.ndarray:
        lo = self.layout.process_index * self.layout.local_batch
        return self.global_indices(step)[lo: lo + self.layout.local_batch]

    def local_batch(self, step: int) -> dict:
        """This host's batch `step`, computed here and now (for tests and debugging)."""
        if self.dali is not None:
            return next(self.dali.batches(step, step + 1))
        lb = self.layout.local_batch
        examples = [self.reader(step * lb + j) for j in range(lb)]
        return self._rows({k: np.stack([e[k] for e in examples]) for k in examples[0]})

    def _rows(self, batch: dict) -> dict:
        """A batch of records as the step's rows: a record's repeated clips become adjacent
        rows, each with the record's label ('skipped' stays per record)."""
        if self.repeats == 1:
            return batch
        out = dict(batch, image=np.reshape(batch["image"], (-1, *batch["image"].shape[2:])))
        if "label" in batch:
            out["label"] = np.repeat(np.asarray(batch["label"]), self.repeats)
        return out

    # ---- state ----------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-able: the next step to be returned, and what identifies the data."""
        return {"next_step": int(self.step), "seed": int(self.seed), "global_batch_size": self.layout.global_batch,
                "dataset_size": self.layout.size, "fingerprint": self.source.fingerprint(),
                "bad_records": sorted(self.bad)}

    def restore(self, state: dict) -> None:
        """Continue from a saved state. The data must be the one the state was saved with:
        a different dataset would silently change every later batch."""
        mine = self.state()
        changed = [f"{k}: {state.get(k)!r} in the checkpoint, {mine[k]!r} now"
                   for k in ("seed", "global_batch_size", "dataset_size", "fingerprint") if state.get(k) != mine[k]
                   # older checkpoints' fingerprints lack the content digest at the end: compare what they hold
                   and not (k == "fingerprint" and mine[k].startswith(f"{state.get(k)}:"))]
        if changed:
            raise DataError("the data differs from the checkpoint's, so the resumed run would not see the batches "
                            "it would have seen. Point config.data at the original data, or start a new workdir:\n  "
                            + "\n  ".join(changed))
        if self._thread is not None:
            raise RuntimeError("restore() must come before the first batch")
        self.step = int(state["next_step"])
        self.bad |= set(int(i) for i in state.get("bad_records", ()))

    # ---- iteration --------------------------------------------------------------------------
    def dataset(self, start_step: int | None = None):
        """The grain pipeline of this host's batches from `start_step` (default: the next)."""
        import grain

        start = self.step if start_step is None else start_step
        if self.dali is not None:
            return self.dali.batches(start, self.stop_step)
        lb = self.layout.local_batch
        ds = grain.MapDataset.range(start * lb, self.stop_step * lb).map(self.reader).batch(lb, drop_remainder=True)
        options = grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=2 * max(self.threads, 1))
        ds = ds.to_iter_dataset(options)
        if self.workers > 0:
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2),
                                worker_init_fn=_worker_init)
        return ds

    def _produce(self):
        try:
            for batch in self._iterator:
                if self._stop.is_set():
                    return
                # nothing may keep grain's shared memory past this point: it is freed when
                # `batch` goes (the device copy, or our own host copy, holds the data)
                if self.sharding is not None:
                    item = {"skipped": np.array(batch["skipped"]), "device": self._to_device(self._rows(batch))}
                else:
                    item = {k: np.array(v) for k, v in self._rows(batch).items()}
                del batch
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # surface reader errors in the training thread
            self._put(e)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _to_device(self, batch: dict):
        def one(local):
            if next(iter(self.sharding.device_set)).platform == "cpu":
                local = np.array(local)  # a CPU jax.Array may alias host memory, here grain's shared memory
            shape = (self.layout.global_batch * self.repeats,) + local.shape[1:]
            return jax.make_array_from_process_local_data(self.sharding, local, shape)

        images = one(batch["image"])
        return (images, one(batch["label"])) if self.labels else images

    def start(self) -> "Pipeline":
        if self._thread is None:
            _mark_absl_flags_parsed()
            self._iterator = iter(self.dataset())
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, daemon=True, name="mdistill-input")
            self._thread.start()
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self.step >= self.stop_step:
            raise StopIteration
        self.start()
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        self._account(item["skipped"])
        self.step += 1
        if self.sharding is not None:
            return item["device"]
        return (item["image"], item["label"]) if self.labels else item["image"]

    def _account(self, skipped: np.ndarray) -> None:
        bad = skipped[skipped >= 0]
        self.records_read += self.layout.local_batch + bad.size
        for index in bad.tolist():
            if index in self.bad:
                continue
            self.bad.add(index)
            _warn(f"skipped a record that cannot be decoded: {self.source.describe(index)} ({self._why(index)}); "
                  f"{len(self.bad)} bad so far")
        limit = self.max_bad_fraction * self.layout.size
        if len(self.bad) > limit:
            shown = [self.source.describe(i) for i in sorted(self.bad)[:20]]
            raise DataError(
                f"{len(self.bad)} records of {self.layout.size} cannot be decoded, more than "
                f"config.data.max_bad_fraction={self.max_bad_fraction} of the dataset ({limit:.1f}). "
                f"Replace or delete them, or raise the bound:\n  " + "\n  ".join(shown)
                + (f"\n  ... and {len(self.bad) - 20} more" if len(self.bad) > 20 else ""))

    def _why(self, index: int) -> str:
        """The decoder's reason a record failed, read again here the way the reader read it
        (a video through the clip transform: its decoder's error, not an image library's)."""
        try:
            self.reader.decode(index, np.random.default_rng(0))
        except Exception as e:
            return f"{type(e).__name__}: {str(e)[:400]}"
        return "failed in a worker, reads here"  # a transient read error

    def close(self) -> None:
        """Stop the prefetch thread and grain's workers."""
        self._stop.set()
        deadline = time.time() + 30  # a producer inside grain's next() returns when its batch is done
        while self._thread is not None and self._thread.is_alive() and time.time() < deadline:
            try:  # unblock a producer waiting on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait()  # batches made ahead and never used
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _warn(message: str) -> None:
    """Logged by every host (each reads its own shard), prefixed by the host's index."""
    if jax.process_count() > 1:
        print(f"[host {jax.process_index()}] WARNING: {message}", flush=True)
    else:
        log(f"WARNING: {message}")
