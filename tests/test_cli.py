"""The command line, as users run it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, devices=1):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
    return subprocess.run([sys.executable, "-m", "mdistill.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_of_the_dmae_release_config():
    out = cli("--config=configs/dmae_vitb.py", "--dry_run")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["student_params"] == 85_647_360           # ViT-B/16 encoder
    assert summary["teacher_params"] == 303_099_904          # ViT-L/16 encoder
    assert summary["teacher_blocks_run"] == 18
    assert summary["global_batch_size"] == 4096
    assert summary["total_steps"] == 100 * (1_281_167 // 4096)
    # XLA's count lies near the analytic one: 6*N*T for student and decoder, 2*N*T for the
    # teacher's 18 blocks on 50 tokens, ignoring attention-score and elementwise FLOPs
    b = 4096
    analytic = b * (6 * 85.6e6 * 50 + 6 * 25.3e6 * 197 + 2 * 18 * 12.6e6 * 50)
    assert 0.9 < summary["flops_per_step"] / analytic < 1.3
    # lines for people before the JSON: the memory one device needs (JAX knows no CPU memory
    # size), and the release config names no teacher checkpoint
    lines = out.stdout.strip().splitlines()[:-1]
    memory = next(line for line in lines if line.startswith("memory per device: "))
    assert f"{summary['memory_gib_per_device']:.2f} GiB" in memory and "unknown device memory" in memory
    total = summary["argument_bytes_per_device"] + summary["temp_bytes_per_device"]
    assert summary["memory_gib_per_device"] == round(total / 2 ** 30, 3) and summary["device_memory_gib"] is None
    assert summary["fits_device_memory"] is None and "accum_steps_to_fit" not in summary
    assert any(line.startswith("WARNING: config.teacher.checkpoint is empty") for line in lines)


@pytest.mark.slow
def test_dry_run_says_which_accum_steps_fit_a_device_memory():
    """--device_memory_gib plans for a device smaller than the step: the dry run names the
    accum_steps estimated to fit, and that estimate holds when compiled (the smoke step:
    batch 16 on one device)."""
    args = ["--config=configs/dmae_vitb.py:smoke", "--dry_run", "--device_memory_gib=0.014"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    *lines, last = out.stdout.strip().splitlines()
    summary = json.loads(last)
    assert summary["device_memory_gib"] == 0.014 and summary["fits_device_memory"] is False
    accum = summary["accum_steps_to_fit"]
    assert accum in (2, 4, 8, 16) and summary["fsdp_to_fit"] is None  # one device: nothing to shard over
    assert any(line.startswith("WARNING: the step does not fit") and f"--config.optim.accum_steps={accum} " in line
               for line in lines), lines
    assert "of 0.01 GiB (--device_memory_gib)" in lines[0]
    again = json.loads(cli(*args, f"--config.optim.accum_steps={accum}").stdout.strip().splitlines()[-1])
    assert again["fits_device_memory"] is True, again


def test_memory_fit_arithmetic():
    from types import SimpleNamespace

    import ml_collections

    from mdistill import train

    config = ml_collections.ConfigDict({"batch_size": 64, "optim": {"accum_steps": 1}})
    mesh = SimpleNamespace(size=4, shape={"data": 4, "fsdp": 1})
    gib = 2 ** 30
    # 2 GiB of arguments (1.5 of them state and teacher), 12 GiB of temporaries of which 2 x 0.5
    # GiB are gradients: 8 GiB fit with 4 micro-steps (2 + 1 + 11/4 = 5.75), not 2 (2 + 1 + 11/2)
    summary = {"argument_bytes_per_device": 2 * gib, "temp_bytes_per_device": 12 * gib,
               "state_bytes_per_device": gib, "teacher_bytes_per_device": gib // 2}
    fit = train.memory_fit(config, mesh, summary, gib // 2, 8 * gib)
    assert fit["memory_gib_per_device"] == 14.0 and fit["fits_device_memory"] is False
    assert fit["accum_steps_to_fit"] == 4
    assert fit["fsdp_to_fit"] is None  # fsdp does not shrink the 11 GiB of activations
    assert train.memory_fit(config, mesh, summary, gib // 2, 14 * gib)["fits_device_memory"] is True
    assert train.memory_fit(config, mesh, summary, gib // 2, None) == {
        "memory_gib_per_device": 14.0, "device_memory_gib": None, "fits_device_memory": None}
    # no micro-batch small enough (16 images per device at most: accum <= 16): none is named
    assert train.memory_fit(config, mesh, summary, gib // 2, 3 * gib)["accum_steps_to_fit"] is None
    # a big state, small activations: fsdp over the 4 devices fits, accumulation cannot
    summary = {"argument_bytes_per_device": 9 * gib, "temp_bytes_per_device": 2 * gib,
               "state_bytes_per_device": 6 * gib, "teacher_bytes_per_device": 2 * gib}
    fit = train.memory_fit(config, mesh, summary, 2 * gib, 8 * gib)
    assert fit["accum_steps_to_fit"] is None and fit["fsdp_to_fit"] == 2  # 1 + 4 + 1 + 0 = 6 GiB


@pytest.mark.slow
def test_smoke_config_trains_from_the_command_line_with_overrides(tmp_path):
    out = cli("--config=configs/dmae_vitb.py:smoke", f"--workdir={tmp_path}", "--config.total_steps=6",
              "--config.log_every=3", devices=2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 6/6" in out.stdout
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [3, 6] and "distill_loss" in lines[0]


def test_invalid_override_fails_before_compiling(tmp_path):
    out = cli("--config=configs/dmae_vitb.py", "--config.distill.pairs=((8, 30),)", "--dry_run")
    assert out.returncode != 0
    assert "teacher block 30 is outside 0..23" in out.stderr
