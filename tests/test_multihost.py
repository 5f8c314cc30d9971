"""2 processes x 4 simulated CPU devices on localhost (jax.distributed over gloo) against
1 process x 8 devices (this pytest process): same losses, and checkpoints written by one
layout resume in the other; fine-tuning and the linear probe (with k-NN) of a pre-trained
encoder give the same results in both layouts, written once."""

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
    args = [f"--config=configs/{config_file}.py:smoke", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides(fsdp).items() if k != "mesh"),
            f"--config.mesh.fsdp={fsdp}"]
    return two_processes("mdistill.main", args)


def two_processes(module, args):
    """`python -m module *args` as 2 processes with 4 CPU devices each, on one coordinator;
    returns their stdouts, once both exited 0."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(4))
    args = [*args, f"--coordinator_address=localhost:{free_port()}", "--num_processes=2"]
    procs = [subprocess.Popen([sys.executable, "-m", module, *args, f"--process_id={i}"], cwd=ROOT,
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


# Fine-tuning splits its parameters over 8 devices, so over both processes (make_mesh lays
# jax.devices(), process by process, into the mesh: fsdp=2 would pair devices of one
# process); the probe's frozen encoder over fsdp=2, its batches over both processes.
FINETUNE = {"total_steps": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 4, "checkpoint_every": 4,
            "test_examples": 64, "mesh.fsdp": 8}
LINPROBE = {"total_steps": 4, "warmup_steps": 1, "log_every": 2, "train_examples": 128, "test_examples": 64,
            "knn": True, "eval.knn_k": 5, "mesh.fsdp": 2}


def evaluate_in_process(module, config_file, workdir, settings):
    config = importlib.import_module(f"configs.{config_file}").get_config("smoke")
    config.update_from_flattened_dict(settings)
    evaluator = importlib.import_module(f"mdistill.evaluate.{module}")
    return evaluator.run(config, str(workdir), sharding.make_mesh(shape=config.mesh.to_dict()),
                         explicit=frozenset(settings))


def evaluate_in_two_processes(module, config_file, workdir, settings):
    args = [f"--config=configs/{config_file}.py:smoke", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in settings.items())]
    outs = two_processes(f"mdistill.evaluate.{module}", args)
    # process 0 alone writes: it logs the results table, and each step is in metrics.jsonl once
    assert f"{module} results (" in outs[0] and "results (" not in outs[1]
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert len({r["step"] for r in records}) == len(records)
    assert not [f for f in os.listdir(workdir) if ".tmp" in f]  # no other process's half-written results
    return json.load(open(workdir / f"{module}.json")), records


def test_finetune_and_linprobe_in_two_processes_match_one(tmp_path):
    pretrained = tmp_path / "pretrained"
    config = importlib.import_module("configs.mae_vitb").get_config("smoke")
    config.update(total_steps=2, log_every=2, checkpoint_every=2)
    train(config, str(pretrained), sharding.make_mesh())

    ft = dict(FINETUNE, pretrained=str(pretrained))
    one = evaluate_in_process("finetune", "finetune_fmnist", tmp_path / "ft1", ft)
    two, records = evaluate_in_two_processes("finetune", "finetune_fmnist", tmp_path / "ft2", ft)
    expected = losses(tmp_path / "ft1")
    assert sorted(expected) == [1, 2, 3, 4] == [r["step"] for r in records if "loss" in r]
    # The same batches and rng; only the order of float sums (gradients all-reduced and
    # parameters gathered over another device layout) differs: ~1e-7 relative per step,
    # which four AdamW steps keep far below 1e-5.
    np.testing.assert_allclose([losses(tmp_path / "ft2")[s] for s in expected], list(expected.values()), rtol=1e-5)
    # top-1 counts test images: float noise would have to move a logit across a near tie to differ
    assert two["top1"] == one["top1"] and two["initial_top1"] == one["initial_top1"]

    lp = dict(LINPROBE, pretrained=str(pretrained))
    one = evaluate_in_process("linprobe", "linprobe_fmnist", tmp_path / "lp1", lp)
    two, _ = evaluate_in_two_processes("linprobe", "linprobe_fmnist", tmp_path / "lp2", lp)
    assert (two["top1"], two["knn_top1"]) == (one["top1"], one["knn_top1"])
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-5)
