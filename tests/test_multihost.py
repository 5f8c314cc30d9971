"""2 processes x 4 simulated CPU devices on localhost (jax.distributed over gloo) against
1 process x 8 devices (this pytest process): same losses, and checkpoints written by one
layout resume in the other."""

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import xla_flags

from mdistill import sharding
from mdistill.train import train
from mdistill.weights import checkpoint

pytestmark = pytest.mark.slow  # processes on several simulated hosts (tests/README.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 6, 3


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def overrides(fsdp):
    return dict(total_steps=STEPS, log_every=1, checkpoint_every=EVERY, mesh=dict(data=-1, fsdp=fsdp))


def run_in_process(config_file, workdir, fsdp):
    config = importlib.import_module(f"configs.{config_file}").get_config("smoke")
    config.update_from_flattened_dict({k: v for k, v in overrides(fsdp).items() if k != "mesh"})
    config.mesh.fsdp = fsdp
    train(config, str(workdir), sharding.make_mesh(shape=config.mesh.to_dict()))


def run_two_processes(config_file, workdir, fsdp):
    """The CLI as 2 processes with 4 CPU devices each; returns their stdouts."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(4))
    port = free_port()
    args = [f"--config=configs/{config_file}.py:smoke", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides(fsdp).items() if k != "mesh"),
            f"--config.mesh.fsdp={fsdp}", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "mdistill.main", *args, f"--process_id={i}"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}


def final_params(workdir):
    params, meta = checkpoint.load_params(str(workdir), None)
    assert meta["step"] == STEPS
    return jax.tree.leaves(jax.tree.map(np.asarray, params))


def assert_close(a, b):
    # Reductions run in another order across processes; Adam turns that float noise in
    # near-zero gradients into parameter differences up to ~1e-5 (updates are ~lr = 1e-3).
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)


def test_mae_two_processes_match_one_and_resume_in_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_in_process("mae_vitb", one, fsdp=1)
    outs = run_two_processes("mae_vitb", two, fsdp=1)
    assert f"step {STEPS}/{STEPS}" in outs[0] and "step" not in outs[1]  # only process 0 logs
    expected = losses(one)
    assert sorted(losses(two)) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses(two)[s] for s in expected], list(expected.values()), rtol=2e-5)

    # the 2-process checkpoint at step 3 resumes in 1 process to the same end point
    shutil.rmtree(two / "checkpoints" / str(STEPS))
    run_in_process("mae_vitb", two, fsdp=1)
    assert_close(final_params(two), final_params(one))


def test_dmae_data_parallel_checkpoint_resumes_as_fsdp_in_two_processes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_in_process("dmae_vitb", one, fsdp=1)
    shutil.copytree(one, two)
    shutil.rmtree(two / "checkpoints" / str(STEPS))
    os.remove(two / "metrics.jsonl")
    run_two_processes("dmae_vitb", two, fsdp=2)
    resumed, expected = losses(two), losses(one)
    assert sorted(resumed) == list(range(EVERY + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=2e-5)
    assert_close(final_params(two), final_params(one))
