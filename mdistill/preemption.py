"""SIGTERM (TPU maintenance, SLURM, Kubernetes) asks the run to save at the next step
boundary and exit cleanly; one that comes during start-up, before the first step, stops
the run with nothing to save. With several processes, all of them agree on the step
through JAX's preemption sync point, which the distributed runtime arms for SIGTERM itself."""

from __future__ import annotations

import signal

# JAX is imported where used: catch_early() runs before the command line may re-execute
# itself (mdistill/hugepages.py), which should happen before JAX is loaded.
_early_request = False


def _note_early(signum, frame):
    global _early_request
    _early_request = True


def catch_early() -> None:
    """Called first by the command line: a SIGTERM before training starts is kept for the
    run's PreemptionWatcher, instead of killing the process (Python's default, exit code
    143). On multi-process runs JAX's distributed runtime takes SIGTERM over when it starts."""
    signal.signal(signal.SIGTERM, _note_early)


class PreemptionWatcher:
    def __init__(self):
        import jax

        global _early_request
        self.requested, self._previous = False, None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if _early_request:  # after installing ours: a SIGTERM in between is not lost
            self.requested, _early_request = True, False

    def _on_sigterm(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
