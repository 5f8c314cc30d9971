"""Multi-process start-up on JAX's own distributed runtime.

The environments jax.distributed.initialize() detects by itself are recognised here the way
JAX recognises them (jax/_src/clusters): SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST,
SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), Open MPI's mpirun (OMPI_MCA_orte_hnp_uri, or
OMPI_COMM_WORLD_SIZE / _RANK / _LOCAL_RANK) and Cloud TPU: a GKE slice (TPU_WORKER_HOSTNAMES,
TPU_PROCESS_ADDRESSES) or a TPU VM made with gcloud, whose hosts only the GCE metadata
server lists (JAX asks it for worker-network-endpoints). With more than one process,
initialize() is called, naming each task's GPUs under SLURM and Open MPI (JAX alone gives
each process one GPU, even when it is meant to drive its whole node); elsewhere (several
processes on one machine, hand-made clusters) pass the coordinator's address, the process
count and this process's id. Once started, the devices are checked: every process must see
as many as the others, and all of them together jax.device_count()."""

from __future__ import annotations

import glob
import os
import re

import jax


def _slurm_present() -> bool:
    names = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    return all(name in os.environ for name in names)


def _ompi_present() -> bool:
    ranks = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
    return "OMPI_MCA_orte_hnp_uri" in os.environ or all(name in os.environ for name in ranks)


def tpu_hosts() -> int:
    """The processes of this Cloud TPU deployment (hosts x slices) as JAX counts them: from
    GKE's variables, or from the GCE metadata server on a TPU VM made with gcloud (only
    asked on a machine with TPU chips, which JAX notes when it is imported); 1 elsewhere."""
    try:
        from jax._src.clusters import cloud_tpu_cluster as tpu
    except ImportError:  # a JAX that moved its cluster detection: count GKE's list only
        listed = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES", "")
        return max(len([h for h in listed.split(",") if h]), 1)
    for cluster in (tpu.GkeTpuCluster, tpu.GceTpuCluster):
        if cluster.is_env_present():
            return int(cluster.get_process_count())
    return 1


def detected_cluster() -> tuple[str, int] | None:
    """The multi-process environment we are in and its process count, or None (one process)."""
    if _slurm_present() and int(os.environ["SLURM_NTASKS"]) > 1:
        return "slurm", int(os.environ["SLURM_NTASKS"])
    if _ompi_present() and int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi", int(os.environ["OMPI_COMM_WORLD_SIZE"])
    hosts = tpu_hosts()
    if hosts > 1:
        return "cloud_tpu", hosts
    return None


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Start the distributed runtime when asked or when a cluster is detected, then check the
    devices (check_devices) and the backend (require_backend); returns whether it was
    started. Must run before anything else touches the devices. Errors (devices that do not
    add up, no GPU where one is required) are one-line RuntimeErrors."""
    started = _initialize(coordinator_address, num_processes, process_id)
    require_backend()
    return started


def require_backend() -> None:
    """With MDISTILL_REQUIRE_BACKEND set (launch/slurm.sh sets gpu): JAX's default backend
    must be that one, else a RuntimeError line (a CPU-only environment would train, slowly,
    on the CPUs of a GPU cluster)."""
    wanted = os.environ.get("MDISTILL_REQUIRE_BACKEND", "")
    if wanted and jax.default_backend() != wanted:
        hint = " (install mdistill with '.[cuda]': JAX's CUDA plugin)" if wanted == "gpu" else ""
        raise RuntimeError(f"MDISTILL_REQUIRE_BACKEND={wanted} but JAX's default backend here is "
                           f"{jax.default_backend()!r}: this environment has no {wanted} support{hint}")


def _initialize(coordinator_address: str, num_processes: int, process_id: int) -> bool:
    # CPU devices of several processes talk through gloo (GPU and TPU use their own links).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        check_devices(num_processes, "--num_processes")
        return True
    detected = detected_cluster()
    if detected is None:
        return False
    cluster, processes = detected
    if cluster in ("slurm", "ompi"):
        # JAX alone gives such a process one GPU (its local rank): name this task's share
        ids = slurm_local_device_ids() if cluster == "slurm" else ompi_local_device_ids()
        jax.distributed.initialize(local_device_ids=ids)
        if ids is not None and jax.local_device_count() != len(ids):
            raise RuntimeError(f"this {cluster.upper()} task was given GPUs {ids} but JAX sees "
                               f"{jax.local_device_count()} local device(s): check the job's GPU binding "
                               "(launch/slurm.sh runs one task per GPU)")
    else:  # Cloud TPU: JAX finds the coordinator, the process count and this host's id itself
        jax.distributed.initialize()
    what = {"slurm": "SLURM_NTASKS", "ompi": "OMPI_COMM_WORLD_SIZE", "cloud_tpu": "the TPU slice's hosts"}
    check_devices(processes, what[cluster])
    return True


def check_devices(processes: int, source: str) -> None:
    """After initialize(): JAX runs `processes` processes (as `source` says), each with as
    many devices as the others, adding up to jax.device_count(); else one RuntimeError line."""
    count, local, total = jax.process_count(), jax.local_device_count(), jax.device_count()
    if count != processes:
        raise RuntimeError(f"{source} says {processes} processes but JAX's distributed runtime joined {count}: "
                           "were all processes started, with the same coordinator?")
    if total != count * local:
        raise RuntimeError(f"JAX sees {total} devices in all but {count} processes x {local} local devices on "
                           f"process {jax.process_index()} = {count * local}: every process must drive as many "
                           "devices (check the GPU binding, or hosts of another accelerator type)")


def _split_gpus(gpus: int, tasks: int, local: int, where: str) -> list[int]:
    """The GPUs of this node that local task `local` drives: `gpus` split evenly over `tasks`."""
    if gpus % tasks:
        raise RuntimeError(f"{where}: each task needs the same number of GPUs; run one task per GPU "
                           "(launch/slurm.sh) or one per node")
    per_task = gpus // tasks
    return list(range(local * per_task, (local + 1) * per_task))


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
    return _split_gpus(gpus, tasks, local, f"SLURM gives this node {gpus} GPUs (SLURM_GPUS_ON_NODE) and {tasks} "
                       f"tasks (SLURM_TASKS_PER_NODE={os.environ.get('SLURM_TASKS_PER_NODE')!r})")


def node_gpus() -> int:
    """The NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when set, else
    the /dev/nvidiaN devices (what JAX's own hardware check looks for)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", d)])


def ompi_local_device_ids() -> list[int] | None:
    """Under mpirun: this node's GPUs (node_gpus) split over its ranks
    (OMPI_COMM_WORLD_LOCAL_SIZE) in OMPI_COMM_WORLD_LOCAL_RANK order; None without GPUs."""
    gpus = node_gpus()
    if gpus <= 0:
        return None
    tasks = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    return _split_gpus(gpus, tasks, local, f"Open MPI starts {tasks} ranks (OMPI_COMM_WORLD_LOCAL_SIZE) on a node "
                       f"with {gpus} GPUs")
