"""SIGTERM (TPU maintenance, SLURM, Kubernetes) asks the run to save at the next step
boundary and exit cleanly. With several processes, all of them agree on the step through
JAX's preemption sync point, which the distributed runtime arms for SIGTERM itself."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
