"""Start-up under SLURM, as launch/slurm.sh lays out a 2-node x 8-GPU job: every task's
jax.distributed.initialize() names the GPUs it drives (JAX alone gives each task one, its
SLURM_LOCALID, even when a task is meant to drive its whole node). SLURM's variables are
simulated; initialize is recorded, not run."""

from __future__ import annotations

import jax
import pytest

from mdistill import distributed

SLURM_2x8 = {"SLURM_NTASKS": "16", "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_ON_NODE": "8",
             "SLURM_NODEID": "1", "SLURM_PROCID": "13", "SLURM_LOCALID": "5"}


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # the gloo switch: leave this process as it is
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
    return calls


def slurm(monkeypatch, **env):
    for k, v in {**SLURM_2x8, **env}.items():
        monkeypatch.setenv(k, v)


def test_one_task_per_gpu_drives_the_gpu_of_its_local_id(monkeypatch, recorded):
    slurm(monkeypatch)
    monkeypatch.setattr(jax, "local_device_count", lambda: 1)
    assert distributed.detected_cluster() == "slurm" and distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": [5]})]


def test_one_task_per_node_drives_all_its_gpus(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1(x2)", SLURM_PROCID="1", SLURM_LOCALID="0")
    monkeypatch.setattr(jax, "local_device_count", lambda: 8)
    distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": list(range(8))})]


def test_devices_that_do_not_add_up_are_one_error(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_TASKS_PER_NODE="3,3")
    with pytest.raises(RuntimeError, match=r"8 GPUs .* and 3 tasks .*same number of GPUs"):
        distributed.maybe_initialize()
    slurm(monkeypatch)
    monkeypatch.setattr(jax, "local_device_count", lambda: 8)  # the binding gave this task every GPU
    with pytest.raises(RuntimeError, match=r"given GPUs \[5\] but JAX sees 8 local device"):
        distributed.maybe_initialize()


def test_a_cpu_slurm_job_keeps_jax_defaults(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_GPUS_ON_NODE="")
    distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": None})]
