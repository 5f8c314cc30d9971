"""Fault injection with real processes: SIGKILL, SIGTERM, a planted NaN, damaged
checkpoints, a changed config, an unwritable workdir."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import xla_flags

from mdistill.weights import checkpoint

pytestmark = pytest.mark.slow  # training processes killed, resumed and checked (tests/README.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MAE smoke run: 30 steps, a checkpoint every 5 (checkpoints/5, 10, ...).
BASE = ["--config=configs/mae_vitb.py:smoke", "--config.total_steps=30", "--config.checkpoint_every=5",
        "--config.keep_checkpoints=10"]


def command(workdir, *extra):
    return [sys.executable, "-m", "mdistill.main", *BASE, f"--workdir={workdir}", *extra]


def env():
    return dict(os.environ, XLA_FLAGS=xla_flags(2), PYTHONUNBUFFERED="1")


def run(workdir, *extra, check=True):
    out = subprocess.run(command(workdir, *extra), cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def final_params(workdir):
    params, meta = checkpoint.load_params(str(workdir), None)
    return jax.tree.map(np.asarray, params), meta["step"]


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clean")
    run(workdir)
    return final_params(workdir)


def start_and_wait_for(workdir, min_step, *extra):
    """Start training and return the process once checkpoint `min_step` exists."""
    proc = subprocess.Popen(command(workdir, *extra), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(s >= min_step for s in steps(workdir)):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint >= {min_step} appeared: {proc.stdout.read()[-2000:]}")


def test_sigkill_mid_run_then_resume_gives_identical_parameters(tmp_path, clean_run):
    proc = start_and_wait_for(tmp_path, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert steps(tmp_path)[-1] < 30
    # a save cut off by the kill leaves only a temporary folder, which is never listed
    partial = tmp_path / "checkpoints" / "25.orbax-checkpoint-tmp-1234"
    (partial / "params").mkdir(parents=True)
    out = run(tmp_path)
    assert "resumed from" in out.stdout
    params, step = final_params(tmp_path)
    assert step == 30
    assert_same(params, clean_run[0])


def test_sigterm_saves_and_exits_cleanly(tmp_path, clean_run):
    proc = start_and_wait_for(tmp_path, 5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM: saved step" in out
    saved = steps(tmp_path)[-1]
    assert f"saved step {saved}," in out
    run(tmp_path)
    params, step = final_params(tmp_path)
    assert step == 30
    assert_same(params, clean_run[0])


def test_planted_nan_stops_the_run_and_leaves_only_finite_checkpoints(tmp_path):
    # an absurd learning rate makes the parameters overflow within a few steps
    out = run(tmp_path, "--config.optim.lr=1e30", "--config.warmup_steps=0", "--config.checkpoint_every=1",
              check=False)
    assert out.returncode != 0
    assert "non-finite loss" in out.stderr and "the last good checkpoint" in out.stderr
    assert steps(tmp_path), "the steps before the NaN were checkpointed"
    for s in steps(tmp_path):
        params, _ = checkpoint.load_params(str(tmp_path / "checkpoints" / str(s)), None)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_truncated_checkpoint_is_set_aside_for_the_previous_one(tmp_path, clean_run):
    run(tmp_path, "--config.total_steps=20")  # same schedule is not needed: only resume logic
    latest = tmp_path / "checkpoints" / "20"
    for root, _, files in os.walk(latest / "params"):
        for f in files:  # truncate every data file of the newest checkpoint
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(0)
    out = run(tmp_path, "--config.total_steps=20", "--config.log_every=1")
    assert "checkpoint 20 could not be read" in out.stdout
    assert "resumed from" in out.stdout and "/15" in out.stdout
    assert any(d.startswith("corrupt-20-") for d in os.listdir(tmp_path / "checkpoints"))
    assert steps(tmp_path)[-1] == 20


def test_changed_model_config_is_refused_with_a_diff(tmp_path):
    run(tmp_path, "--config.total_steps=5")
    out = run(tmp_path, "--config.total_steps=10", "--config.mask_ratio=0.5", "--config.optim.b2=0.99",
              check=False)
    assert out.returncode != 0
    assert "mask_ratio: 0.75 in the checkpoint -> 0.5 now" in out.stderr
    assert "optim.b2: 0.95 in the checkpoint -> 0.99 now" in out.stderr
    assert "total_steps" not in out.stderr  # a safe change
    # safe changes resume
    out = run(tmp_path, "--config.total_steps=10", "--config.log_every=2")
    assert steps(tmp_path)[-1] == 10


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = run(blocker / "run", check=False)
    assert out.returncode != 0 and "is not writable" in out.stderr


def test_failed_save_is_named_and_previous_checkpoints_survive(tmp_path, monkeypatch):
    """A full disk during a save: the error names the folder, earlier checkpoints stay."""
    from mdistill.config import apply_smoke, base_config
    from mdistill.train import train

    c = apply_smoke(base_config())
    c.total_steps, c.checkpoint_every = 10, 5
    real_save = checkpoint.ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
        if step == 10:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", failing_save)
    with pytest.raises(checkpoint.CheckpointError,
                       match="could not write checkpoint 10 .*No space left.*steps \\[5\\]"):
        train(c, str(tmp_path))
    params, meta = checkpoint.load_params(str(tmp_path), None)
    assert meta["step"] == 5
