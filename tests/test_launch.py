"""The launchers' --dry_run prints the commands they would run; --help explains every
argument and environment variable they read; they and the other shell scripts are
shellcheck-clean where shellcheck is installed (tests/run.sh installs it)."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sh"]
OTHER_SCRIPTS = ["demo.sh", "tests/run.sh", "tests/run_torch.sh", "scripts/setup_env.sh", ".ci/run"]


def dry_run(script, *args, **env):
    out = subprocess.run(["bash", script, "--dry_run", *args], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in {**os.environ, **env}.items() if k != "SLURM_JOB_ID"}, check=True)
    return [shlex.split(line) for line in out.stdout.splitlines()]


def test_local_prints_the_mdistill_command():
    [cmd] = dry_run("launch/local.sh", "configs/dmae_vitb.py", "runs/x", "--config.seed=3")
    assert cmd[1:] == ["-m", "mdistill.main", "--config=configs/dmae_vitb.py", "--workdir=runs/x", "--config.seed=3"]


def test_tpu_pod_all_creates_copies_installs_runs_on_every_worker_and_deletes():
    cmds = dry_run("launch/tpu_pod.sh", "all", "configs/dmae_vitb.py", "/mnt/runs/dmae", "--config.seed=1",
                   TPU_NAME="pod", ZONE="us-central2-b", ACCELERATOR_TYPE="v4-64", PROJECT="proj")
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert [c[3:5] for c in gcloud] == [["tpu-vm", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"],
                                        ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]
    assert "--accelerator-type=v4-64" in gcloud[0] and "--project=proj" in gcloud[0]
    for c in gcloud[1:5]:
        assert "--worker=all" in c
    run = next(c for c in gcloud if any("mdistill.main" in a for a in c))
    inner = shlex.split(next(a for a in run if a.startswith("--command=")).split("=", 1)[1])
    assert inner[inner.index("mdistill.main") + 1:] == ["--config=configs/dmae_vitb.py", "--workdir=/mnt/runs/dmae",
                                                        "--config.seed=1"]


def test_tpu_pod_rejects_an_unknown_stage():
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry_run", "launch", "c.py", "w"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown stage 'launch'" in out.stderr


def test_slurm_submits_itself_and_runs_one_process_per_gpu_with_srun():
    """2 nodes x 8 GPUs: 8 tasks per node, each with 1/8 of the node's CPUs (every GPU a process)."""
    sbatch, srun = dry_run("launch/slurm.sh", "configs/dmae_vitb.py", "/shared/dmae", "--config.seed=2",
                           NODES="2", GPUS_PER_NODE="8", PARTITION="gpu")
    assert sbatch[0] == "sbatch" and {"--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=8",
                                      "--partition=gpu"} <= set(sbatch)
    assert sbatch[-4:] == [os.path.join(ROOT, "launch/slurm.sh"), "configs/dmae_vitb.py", "/shared/dmae",
                           "--config.seed=2"]
    assert srun[0] == "srun" and "--nodes=2" in srun and "--ntasks-per-node=8" in srun
    assert srun[srun.index("mdistill.main") + 1:] == ["--config=configs/dmae_vitb.py", "--workdir=/shared/dmae",
                                                      "--config.seed=2"]
    sbatch, srun = dry_run("launch/slurm.sh", "c.py", "w", NODES="2", GPUS_PER_NODE="8", TASKS_PER_NODE="1")
    assert "--ntasks-per-node=1" in srun and "--cpus-per-task=64" in sbatch  # one process drives the node
    out = subprocess.run(["bash", "launch/slurm.sh", "--dry_run", "c.py", "w"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, GPUS_PER_NODE="8", TASKS_PER_NODE="3"))
    assert out.returncode == 2 and "TASKS_PER_NODE=3 must divide GPUS_PER_NODE=8" in out.stderr


def help_text(script, flag="--help"):
    out = subprocess.run(["bash", script, flag], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_every_argument_and_environment_variable(script):
    text = help_text(script)
    assert help_text(script, "-h") == text
    with open(os.path.join(ROOT, script)) as f:
        source = f.read()
    # every variable the script reads from the environment: ${NAME:-...} / ${NAME:+...}, upper case
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:}]", source))
    assert read, script
    for name in read:
        assert re.search(rf"^ *{name}\b", text, re.M), f"{script} --help does not explain ${name}"
    usage = next(line for line in text.splitlines() if line.strip().startswith(f"bash {script} ["))
    for arg in re.findall(r"\b[A-Z][A-Z]+\b|--dry_run", usage):  # CONFIG, WORKDIR, STAGE, --dry_run
        assert re.search(rf"^ +{arg}\b", text, re.M), f"{script} --help does not explain {arg}"
    assert "Arguments:" in text and "Environment" in text


def test_help_lists_every_tpu_stage():
    text = help_text("launch/tpu_pod.sh")
    for stage in ["create", "copy", "install", "run", "delete", "all"]:
        assert re.search(rf"^ +{stage} ", text, re.M), stage


def test_usage_error_points_at_help():
    for script in SCRIPTS:
        out = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and "--help" in out.stderr, script


def test_tpu_pod_installs_the_tpu_extra_in_a_venv_of_a_new_python():
    cmds = dry_run("launch/tpu_pod.sh", "install", "c.py", "/w", PYTHON_VERSION="3.13")
    [install] = [c for c in cmds if c[0] == "gcloud"]
    inner = next(a for a in install if a.startswith("--command=")).split("=", 1)[1]
    assert "--python 3.13 .venv" in inner and "-e '.[tpu]'" in inner
    [run] = [c for c in dry_run("launch/tpu_pod.sh", "run", "c.py", "/w") if c[0] == "gcloud"]
    assert ".venv/bin/python -m mdistill.main" in next(a for a in run if a.startswith("--command="))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launchers_are_shellcheck_clean():
    out = subprocess.run(["shellcheck", *SCRIPTS, *OTHER_SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
