"""The command line, as users run it."""

import json
import os
import subprocess
import sys

from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, devices=1):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
    return subprocess.run([sys.executable, "-m", "mdistill.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


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
