"""Start-up in each multi-process environment JAX detects, simulated by its variables (and,
for a Cloud TPU VM made with gcloud, by a local GCE metadata server that JAX's own detection
queries): jax.distributed.initialize is recorded, not run, and the device check after it
sees the counts a real start would give.

SLURM as launch/slurm.sh lays out a 2-node x 8-GPU job: every task's initialize names the
GPUs it drives (JAX alone gives each task one, its SLURM_LOCALID, even when a task is meant
to drive its whole node)."""

from __future__ import annotations

import http.server
import threading

import jax
import pytest

from mdistill import distributed

SLURM_2x8 = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
             "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_ON_NODE": "8", "SLURM_NODEID": "1", "SLURM_PROCID": "13",
             "SLURM_LOCALID": "5"}
CLEARED = ["TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_PROCESS_ADDRESSES_PATH", "TPU_WORKER_ID",
           "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID", "GCE_METADATA_IP", "TPU_SKIP_MDS_QUERY",
           "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
           "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_VERSION", "CUDA_VISIBLE_DEVICES", "MDISTILL_REQUIRE_BACKEND", *SLURM_2x8]


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # the gloo switch: leave this process as it is
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    return calls


def devices(monkeypatch, processes, local, total=None):
    """What JAX would report once initialize() has joined `processes` of `local` devices."""
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "local_device_count", lambda: local)
    monkeypatch.setattr(jax, "device_count", lambda: processes * local if total is None else total)


def slurm(monkeypatch, **env):
    for k, v in {**SLURM_2x8, **env}.items():
        monkeypatch.setenv(k, v)


def test_one_task_per_gpu_drives_the_gpu_of_its_local_id(monkeypatch, recorded):
    slurm(monkeypatch)
    devices(monkeypatch, 16, 1)
    assert distributed.detected_cluster() == ("slurm", 16) and distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": [5]})]


def test_one_task_per_node_drives_all_its_gpus(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1(x2)", SLURM_PROCID="1", SLURM_LOCALID="0")
    devices(monkeypatch, 2, 8)
    distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": list(range(8))})]


def test_devices_that_do_not_add_up_are_one_error(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_TASKS_PER_NODE="3,3")
    with pytest.raises(RuntimeError, match=r"8 GPUs .* and 3 tasks .*same number of GPUs"):
        distributed.maybe_initialize()
    slurm(monkeypatch)
    devices(monkeypatch, 16, 8)  # the binding gave this task every GPU
    with pytest.raises(RuntimeError, match=r"given GPUs \[5\] but JAX sees 8 local device"):
        distributed.maybe_initialize()
    devices(monkeypatch, 15, 1)  # a task that never joined
    with pytest.raises(RuntimeError, match=r"^SLURM_NTASKS says 16 processes but JAX's distributed runtime joined 15"):
        distributed.maybe_initialize()
    devices(monkeypatch, 16, 1, total=12)  # another process drives fewer devices
    with pytest.raises(RuntimeError, match=r"^JAX sees 12 devices in all but 16 processes x 1 local devices"):
        distributed.maybe_initialize()


def test_a_cpu_slurm_job_keeps_jax_defaults(monkeypatch, recorded):
    slurm(monkeypatch, SLURM_GPUS_ON_NODE="")
    devices(monkeypatch, 16, 1)
    distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": None})]


def test_an_salloc_shell_without_a_step_is_one_process(monkeypatch, recorded):
    """Inside salloc but outside srun, SLURM_STEP_NODELIST is unset: JAX detects no SLURM
    cluster, and neither does mdistill."""
    slurm(monkeypatch)
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    assert distributed.detected_cluster() is None and not distributed.maybe_initialize() and recorded == []


def test_open_mpi_ranks_split_their_nodes_gpus(monkeypatch, recorded):
    for k, v in {"OMPI_MCA_orte_hnp_uri": "123.0;tcp://10.0.0.1:4000", "OMPI_COMM_WORLD_SIZE": "16",
                 "OMPI_COMM_WORLD_RANK": "11", "OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
                 "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}.items():
        monkeypatch.setenv(k, v)
    devices(monkeypatch, 16, 1)
    assert distributed.detected_cluster() == ("ompi", 16) and distributed.maybe_initialize()
    assert recorded == [((), {"local_device_ids": [3]})]
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1")  # one rank per node: all 8
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    devices(monkeypatch, 16, 8)
    distributed.maybe_initialize()
    assert recorded[-1] == ((), {"local_device_ids": list(range(8))})
    monkeypatch.delenv("OMPI_MCA_orte_hnp_uri")  # Open MPI 5 (PRRTE): the rank variables alone
    monkeypatch.setenv("OMPI_VERSION", "5.0.3")
    assert distributed.detected_cluster() == ("ompi", 16)


class MetadataServer(http.server.BaseHTTPRequestHandler):
    """The GCE metadata server of one worker of a TPU VM slice made with gcloud."""
    attributes: dict = {}
    asked: list = []

    def do_GET(self):
        key = self.path.rsplit("/", 1)[-1]
        self.asked.append(key)
        ok = self.headers.get("Metadata-Flavor") == "Google" and key in self.attributes
        body = self.attributes.get(key, "not found").encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tpu_vm(monkeypatch):
    """A worker of a 4-host TPU VM (as gcloud makes one: no TPU_WORKER_HOSTNAMES): JAX's
    detection asks the metadata server at GCE_METADATA_IP; JAX noted TPU chips at import."""
    from jax._src.clusters import cloud_tpu_cluster

    MetadataServer.attributes = {"agent-worker-number": "2", "worker-network-endpoints": "t1v-0,t1v-1,t1v-2,t1v-3",
                                 "tpu-env": "TPU_ACCELERATOR_TYPE: 'v5litepod-16'\nWORKER_ID: '2'\n"}
    MetadataServer.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MetadataServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    yield MetadataServer
    server.shutdown()


def test_a_gcloud_tpu_vm_slice_of_several_hosts_initializes(monkeypatch, recorded, tpu_vm):
    devices(monkeypatch, 4, 4)
    assert distributed.detected_cluster() == ("cloud_tpu", 4)
    assert distributed.maybe_initialize()
    assert recorded == [((), {})]  # JAX finds the coordinator and this worker's id itself
    assert "worker-network-endpoints" in tpu_vm.asked
    devices(monkeypatch, 1, 4)  # libtpu alone, no distributed runtime: the hosts do not add up
    with pytest.raises(RuntimeError, match=r"^the TPU slice's hosts says 4 processes but .* joined 1"):
        distributed.maybe_initialize()


def test_a_single_host_tpu_vm_and_a_machine_without_tpus_stay_one_process(monkeypatch, recorded, tpu_vm):
    tpu_vm.attributes["worker-network-endpoints"] = "t1v-0"
    assert distributed.detected_cluster() is None and not distributed.maybe_initialize()
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", False)
    tpu_vm.asked.clear()
    assert distributed.detected_cluster() is None and tpu_vm.asked == []  # no metadata query off TPU VMs
    assert recorded == []


def test_a_gke_tpu_slice_initializes(monkeypatch, recorded):
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "pod-0,pod-1")
    monkeypatch.setenv("TPU_WORKER_ID", "1")
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    monkeypatch.setenv("MEGASCALE_NUM_SLICES", "1")  # else JAX asks the metadata server for the slice count
    devices(monkeypatch, 2, 4)
    assert distributed.detected_cluster() == ("cloud_tpu", 2) and distributed.maybe_initialize()
    assert recorded == [((), {})]


def test_an_explicit_coordinator_is_checked_against_num_processes(monkeypatch, recorded):
    devices(monkeypatch, 2, 4)
    assert distributed.maybe_initialize("10.0.0.1:1234", 2, 1)
    assert recorded == [(("10.0.0.1:1234", 2, 1), {})]
    with pytest.raises(RuntimeError, match="--num_processes says 3 processes"):
        distributed.maybe_initialize("10.0.0.1:1234", 3, 1)


def test_a_task_without_the_required_backend_is_refused(monkeypatch, recorded):
    """launch/slurm.sh sets MDISTILL_REQUIRE_BACKEND=gpu: a CPU-only venv stops at start."""
    slurm(monkeypatch)
    devices(monkeypatch, 16, 1)
    monkeypatch.setenv("MDISTILL_REQUIRE_BACKEND", "gpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with pytest.raises(RuntimeError, match=r"^MDISTILL_REQUIRE_BACKEND=gpu but JAX's default backend here is 'cpu'"):
        distributed.maybe_initialize()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert distributed.maybe_initialize()
    monkeypatch.delenv("MDISTILL_REQUIRE_BACKEND")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert distributed.maybe_initialize()  # not required: any backend
