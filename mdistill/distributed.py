"""Multi-process start-up on JAX's own distributed runtime.

jax.distributed.initialize() finds its peers by itself on Cloud TPU pods and under SLURM;
elsewhere (several processes on one machine, hand-made clusters) pass the coordinator's
address, the process count and this process's id."""

from __future__ import annotations

import os

import jax


def detected_cluster() -> str | None:
    """Which multi-process environment we are in, if any."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "cloud_tpu"
    return None


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Start the distributed runtime when asked or when a cluster is detected; returns
    whether it was started. Must run before anything else touches the devices."""
    # CPU devices of several processes talk through gloo (GPU and TPU use their own links).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if detected_cluster():
        jax.distributed.initialize()
        return True
    return False
