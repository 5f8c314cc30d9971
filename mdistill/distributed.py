"""Multi-process start-up on JAX's own distributed runtime.

jax.distributed.initialize() finds its peers by itself on Cloud TPU pods and under SLURM
(where mdistill names each task's GPUs: JAX alone would give every task one); elsewhere
(several processes on one machine, hand-made clusters) pass the coordinator's address, the
process count and this process's id."""

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
    cluster = detected_cluster()
    if cluster == "slurm":
        # JAX alone gives a SLURM process one GPU (its SLURM_LOCALID): name this task's share
        ids = slurm_local_device_ids()
        jax.distributed.initialize(local_device_ids=ids)
        if ids is not None and jax.local_device_count() != len(ids):
            raise RuntimeError(f"this SLURM task was given GPUs {ids} but JAX sees {jax.local_device_count()} local "
                               "device(s): check the job's GPU binding (launch/slurm.sh runs one task per GPU)")
        return True
    if cluster:
        jax.distributed.initialize()
        return True
    return False


def slurm_tasks_on_node() -> int:
    """This node's task count, from SLURM_TASKS_PER_NODE ('8(x2)', '8,4', '2'): the entry of
    the node this task runs on (SLURM_NODEID)."""
    counts = []
    for part in os.environ.get("SLURM_TASKS_PER_NODE", "1").split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    node = int(os.environ.get("SLURM_NODEID", "0"))
    return counts[min(node, len(counts) - 1)]


def slurm_local_device_ids() -> list[int] | None:
    """The GPUs of this node that this task drives: its node's GPUs (SLURM_GPUS_ON_NODE)
    split evenly over the node's tasks, in SLURM_LOCALID order, so one task per GPU drives
    [SLURM_LOCALID] and one task per node drives them all. None without GPUs (JAX's default).
    GPUs that do not split evenly over the tasks are an error naming both counts."""
    gpus = int(os.environ.get("SLURM_GPUS_ON_NODE", "0") or 0)
    if gpus <= 0:
        return None
    tasks, local = slurm_tasks_on_node(), int(os.environ.get("SLURM_LOCALID", "0"))
    if gpus % tasks:
        raise RuntimeError(f"SLURM gives this node {gpus} GPUs (SLURM_GPUS_ON_NODE) and {tasks} tasks "
                           f"(SLURM_TASKS_PER_NODE={os.environ.get('SLURM_TASKS_PER_NODE')!r}): each task needs "
                           "the same number of GPUs; run one task per GPU (launch/slurm.sh) or one per node")
    per_task = gpus // tasks
    return list(range(local * per_task, (local + 1) * per_task))
