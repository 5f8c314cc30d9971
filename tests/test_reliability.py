"""Issue 19, each failure reproduced: one run per workdir (a second process, a SIGKILLed
holder), a resume that refuses instead of setting checkpoints aside, SIGTERM during
start-up, an unknown --config field (real processes); a `checkpoints` that is no folder, a
failed save that leaves no thread waiting, an error buried by a later one, best_metric,
an export over a folder (in this process)."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from test_fault_tolerance import ROOT, command, env, run, steps

from mdistill import sharding
from mdistill.config import apply_smoke, base_config, upgrade
from mdistill.train import train
from mdistill.config.validation import ConfigError
from mdistill.weights import checkpoint
from mdistill.weights.checkpoint import CheckpointError


def start(workdir, *extra):
    return subprocess.Popen(command(workdir, *extra), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_lock(workdir, proc):
    """Until `proc` holds the workdir (its pid is in the lock file)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if f"pid {proc.pid} " in (workdir / checkpoint.LOCK_FILE).read_text():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"process {proc.pid} never took the lock: {proc.communicate()[1][-2000:]}")


def snapshot(directory):
    """{relative path: sha256} of every file under `directory`."""
    return {os.path.relpath(os.path.join(root, f), directory):
            hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest()
            for root, _, files in os.walk(directory) for f in files}


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- real processes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def contested(tmp_path_factory):
    """A 10-step run that a second process (another seed) tried to join while it ran."""
    workdir = tmp_path_factory.mktemp("contested")
    first = start(workdir, "--config.total_steps=10")
    wait_for_lock(workdir, first)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the workdir: the second surely meets it
    try:
        t0 = time.time()
        second = run(workdir, "--config.total_steps=10", "--config.seed=1", check=False)
        seconds = time.time() - t0
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    return workdir, first, err, second, seconds


@pytest.mark.slow
def test_second_process_on_a_busy_workdir_is_refused_and_the_first_finishes(contested):
    workdir, first, first_err, second, seconds = contested
    assert second.returncode != 0 and seconds < 60
    [line] = error_lines(second.stderr)
    assert f"is in use by pid {first.pid} on {socket.gethostname()}" in line
    assert first.returncode == 0, first_err[-3000:]
    assert steps(workdir) == [5, 10]
    logged = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert logged == [10]  # one run's metrics, not two interleaved


@pytest.mark.slow
def test_killed_holder_frees_the_workdir_and_a_shape_changing_resume_touches_nothing(contested):
    workdir = contested[0]
    holder = start(workdir, "--config.total_steps=20")
    wait_for_lock(workdir, holder)
    holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    holder.wait()
    before = snapshot(workdir / "checkpoints")
    out = run(workdir, "--config.student.decoder_depth=2", "--config.optim.grad_clip=1.0",
              "--config.total_steps=20", check=False)
    assert out.returncode != 0 and "in use" not in out.stderr  # the lock was free
    assert "student.decoder_depth: 1 in the checkpoint -> 2 now" in out.stderr
    assert "optim.grad_clip: 0.0 in the checkpoint -> 1.0 now" in out.stderr
    assert "total_steps" not in out.stderr  # a safe change is not listed
    assert snapshot(workdir / "checkpoints") == before  # same names, same bytes: nothing set aside


def test_sigterm_during_start_up_saves_nothing_and_exits_0(tmp_path):
    proc = start(tmp_path)
    wait_for_lock(tmp_path, proc)  # set-up has begun: no step has run
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM before the first step" in out
    assert steps(tmp_path) == []


def test_unknown_config_field_is_one_line():
    out = subprocess.run([sys.executable, "-m", "mdistill.main", "--config=configs/mae_vitb.py:smoke",
                          "--config.seeed=1", "--dry_run"], cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert error_lines(out.stderr) == ["error: --config.seeed=1: the config has no field 'seeed' "
                                       "(did you mean 'seed'?)"]


@pytest.mark.slow
def test_export_over_a_folder_is_one_line(contested, tmp_path):
    from mdistill.weights import convert

    with pytest.raises(SystemExit) as e:
        convert.main(["--export", "--input", str(contested[0]), "--output", str(tmp_path)])
    assert f"--output {str(tmp_path)!r} is a folder" in str(e.value.code)
    assert os.listdir(tmp_path) == []


# ---- in this process ------------------------------------------------------------------------

def smoke(**overrides):
    c = apply_smoke(base_config())
    c.method = "mae"
    c.update(overrides)
    return c


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_checkpoints_that_is_no_folder_is_refused_before_training(tmp_path, kind):
    target = tmp_path / "checkpoints"
    if kind == "file":
        target.write_text("not a folder")
    else:
        os.symlink(tmp_path / "gone", target)
    with pytest.raises(CheckpointError, match=f"{target} is not a folder"):
        train(smoke(total_steps=2), str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any step


def test_failed_save_leaves_no_thread_waiting(tmp_path):
    """A save that cannot create its folder used to leave Orbax threads waiting 5 minutes
    for a signal that never came, and the process could not exit until then."""
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"), keep=2)
    os.rmdir(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").write_text("now a file")
    before = set(threading.enumerate())
    with pytest.raises(CheckpointError, match="could not write checkpoint 1"):
        checkpoint.save(mngr, 1, {"w": np.ones(3, np.float32)}, {"m": np.zeros(3, np.float32)}, {"step": 1})
        checkpoint.wait(mngr)
    deadline = time.time() + 10
    while time.time() < deadline and [t for t in threading.enumerate() if t not in before and not t.daemon]:
        time.sleep(0.05)
    assert [t.name for t in threading.enumerate() if t not in before and not t.daemon] == []


@pytest.mark.slow
def test_close_errors_do_not_bury_the_failed_save(tmp_path, monkeypatch):
    """A full disk: the save fails, then closing TensorBoard's writer fails too; the save's
    error is the one raised (the first error wins). best_metric 'max:grad_norm' is a metric
    the run logs, so it passes the check at start."""
    import tensorboardX

    real_save, real_close = checkpoint.ocp.CheckpointManager.save, tensorboardX.SummaryWriter.close

    def failing_save(self, step, *args, **kwargs):
        if step == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    def failing_close(self):
        real_close(self)
        raise OSError("handle is closed")

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", failing_save)
    monkeypatch.setattr(tensorboardX.SummaryWriter, "close", failing_close)
    c = smoke(total_steps=2, checkpoint_every=1, best_metric="max:grad_norm")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint 2 .*No space left.*steps \[1\]"):
        train(c, str(tmp_path), sharding.make_mesh(jax.devices()[:1]))


def test_best_metric_must_be_a_metric_the_run_logs(tmp_path):
    with pytest.raises(ConfigError, match=r"config.best_metric='bogus' is invalid: .*'grad_norm', 'loss', 'lr', "
                                          r"'rec_loss'"):
        train(smoke(best_metric="bogus"), str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints")


def tiny_checkpoint(directory):
    mngr = checkpoint.manager(str(directory), keep=3)
    checkpoint.save(mngr, 1, {"w": np.ones(3, np.float32)}, {"m": np.zeros(3, np.float32)},
                    {"step": 1, "config": {"seed": 0}})
    checkpoint.wait(mngr)
    return mngr


def abstract(shape):
    return jax.ShapeDtypeStruct(shape, np.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def test_readable_checkpoint_that_does_not_fit_is_refused_not_set_aside(tmp_path, monkeypatch):
    mngr = tiny_checkpoint(tmp_path / "checkpoints")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint 1 in .* is readable but does not fit"):
        checkpoint.restore_latest_good(mngr, {"w": abstract((4,))}, {"m": abstract((4,))})
    with pytest.raises(CheckpointError, match=r"different config.*\n  seed: 0 in the checkpoint -> 1 now"):
        checkpoint.restore_latest_good(mngr, {"w": abstract((3,))}, {"m": abstract((3,))},
                                       config=upgrade({"seed": 1}).to_dict())  # the checkpoint's, but the seed

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "checkpoints" / "1"))

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "restore", denied)
    with pytest.raises(CheckpointError, match="could not be read .*Permission denied"):
        checkpoint.restore_latest_good(mngr, {"w": abstract((3,))}, {"m": abstract((3,))})
    assert snapshot(tmp_path) == before
