"""Deterministic batches as global jax.Arrays.

Batch `step` is a pure function of (seed, step): each epoch is a fresh permutation of the
source, so a resumed run continues with exactly the batches it would have seen. Each
process reads only its own slice of every global batch."""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np


class BatchIterator:
    def __init__(self, source, global_batch_size: int, sharding, seed: int = 0,
                 start_step: int = 0, prefetch: int = 2):
        if len(source) < global_batch_size:
            raise ValueError(f"dataset has {len(source)} examples, fewer than the global batch "
                             f"size {global_batch_size}")
        self.source, self.global_batch_size, self.sharding = source, global_batch_size, sharding
        self.seed, self.step = seed, start_step
        self.steps_per_epoch = len(source) // global_batch_size
        self.local_batch_size = global_batch_size // jax.process_count()
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def global_indices(self, step: int) -> np.ndarray:
        epoch, offset = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.source))
        return perm[offset * self.global_batch_size: (offset + 1) * self.global_batch_size]

    def local_images(self, step: int) -> np.ndarray:
        start = jax.process_index() * self.local_batch_size
        return self.source.images(self.global_indices(step)[start: start + self.local_batch_size])

    def _produce(self):
        step = self.step
        while True:
            try:
                item = self.local_images(step)
            except Exception as e:  # surface reader errors in the training thread
                self._queue.put(e)
                return
            self._queue.put(item)
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> jax.Array:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        self.step += 1
        return jax.make_array_from_process_local_data(self.sharding, item)
