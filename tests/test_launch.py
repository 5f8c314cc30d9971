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
OTHER_SCRIPTS = ["demo.sh", "tests/run.sh", "tests/run_torch.sh", "scripts/setup_env.sh", ".ci/run",
                 "benchmarks/gpu/run.sh", "benchmarks/gpu/wheels.sh"]


def dry_run(script, *args, **env):
    out = subprocess.run(["bash", script, "--dry_run", *args], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in {**os.environ, **env}.items() if k != "SLURM_JOB_ID"}, check=True)
    return [shlex.split(line) for line in out.stdout.splitlines()]


def test_local_prints_the_mdistill_command():
    [cmd] = dry_run("launch/local.sh", "configs/dmae_vitb.py", "runs/x", "--config.seed=3")
    assert cmd[1:] == ["-m", "mdistill.main", "--config=configs/dmae_vitb.py", "--workdir=runs/x", "--config.seed=3"]


def inner(cmd):
    """The command a `gcloud ... ssh --command=...` runs on the workers."""
    return next(a for a in cmd if a.startswith("--command=")).split("=", 1)[1]


def test_tpu_pod_all_checks_creates_copies_installs_runs_detached_waits_and_deletes():
    cmds = dry_run("launch/tpu_pod.sh", "all", "configs/dmae_vitb.py", "gs://bucket/dmae", "--config.seed=1",
                   TPU_NAME="pod", ZONE="us-central2-b", ACCELERATOR_TYPE="v5litepod-16", PROJECT="proj",
                   ALLOW_DIRTY="1")
    # the config is validated here first (mdistill's --dry_run), before anything is created
    assert cmds[0][:2] == ["env", "JAX_PLATFORMS=cpu"] and "--dry_run" in cmds[0] and "--config.seed=1" in cmds[0]
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert [c[3:5] for c in gcloud] == [["tpu-vm", "delete"], ["tpu-vm", "create"], ["tpu-vm", "scp"],
                                        ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "describe"],
                                        ["tpu-vm", "ssh"], ["tpu-vm", "scp"], ["tpu-vm", "delete"]]
    cleanup = cmds[cmds.index(gcloud[0]) - 1]
    assert cleanup[0] == "#" and "failed" in " ".join(cleanup)  # the trap's delete, printed before create
    create = gcloud[1]
    assert {"--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--project=proj"} <= set(create)
    for c in gcloud[2:6] + gcloud[7:8]:
        assert any(a.startswith("--worker=") for a in c)
    install, run = inner(gcloud[4]), inner(gcloud[5])
    assert "uv venv -q --python 3.12 .venv" in install and "sys.version_info >= (3, 11)" in install
    assert "-e '.[tpu,gcs]'" in install
    # detached, with a log per worker, after the stale TPU processes and libtpu's lock file are gone
    assert "rm -f /tmp/libtpu_lockfile" in run and "kill -9" in run
    assert run.index("libtpu_lockfile") < run.index("nohup setsid")
    assert "> ~/mdistill-logs/worker-$w.log 2>&1 < /dev/null &" in run and "agent-worker-number" in run
    trained = shlex.split(run[run.index(".venv/bin/python"):run.index(" > ~/mdistill-logs")])
    assert trained[trained.index("mdistill.main") + 1:] == ["--config=configs/dmae_vitb.py",
                                                            "--workdir=gs://bucket/dmae", "--config.seed=1"]
    assert "pgrep" in inner(gcloud[7]) and "--worker=0" in gcloud[7]  # wait: until worker 0's run has ended


@pytest.mark.parametrize("accelerator, runtime", [("v4-64", "tpu-ubuntu2204-base"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                  ("v5p-32", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_tpu_pod_runtime_version_follows_the_accelerator(accelerator, runtime):
    [create] = dry_run("launch/tpu_pod.sh", "create", "c.py", "w", ACCELERATOR_TYPE=accelerator)
    assert f"--version={runtime}" in create
    [create] = dry_run("launch/tpu_pod.sh", "create", "c.py", "w", ACCELERATOR_TYPE=accelerator,
                       RUNTIME_VERSION="my-image")
    assert "--version=my-image" in create
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry_run", "create", "c.py", "w"], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, ACCELERATOR_TYPE="v3-8"))
    assert out.returncode == 2 and "ACCELERATOR_TYPE=v3-8: no runtime version known" in out.stderr


def test_tpu_pod_spot_queued_resources_and_autocheckpoint():
    [create] = dry_run("launch/tpu_pod.sh", "create", "c.py", "w", SPOT="1", AUTOCHECKPOINT="1")
    assert create[:5] == ["gcloud", "alpha", "compute", "tpus", "tpu-vm"]
    assert "--spot" in create and "--autocheckpoint-enabled" in create
    queued, poll = dry_run("launch/tpu_pod.sh", "create", "c.py", "w", QUEUED="1", SPOT="1", TPU_NAME="q")
    assert queued[2:6] == ["tpus", "queued-resources", "create", "q"] and "--node-id=q" in queued
    assert "--runtime-version=tpu-ubuntu2204-base" in queued and "--spot" in queued
    assert poll[3:5] == ["queued-resources", "describe"]
    [delete] = dry_run("launch/tpu_pod.sh", "delete", "c.py", "w", QUEUED="1", TPU_NAME="q")
    assert delete[2:6] == ["tpus", "queued-resources", "delete", "q"] and "--force" in delete


def test_tpu_pod_logs_streams_one_worker_or_fetches_all():
    [stream] = dry_run("launch/tpu_pod.sh", "logs", "c.py", "w", WORKER="3")
    assert "--worker=3" in stream and inner(stream).startswith("tail -n +1 -F ~/mdistill-logs/")
    mkdir, fetch = dry_run("launch/tpu_pod.sh", "logs", "c.py", "w", FETCH="1", TPU_NAME="pod")
    assert fetch[3:5] == ["tpu-vm", "scp"] and "pod:~/mdistill-logs/*" in fetch and "--worker=all" in fetch


def git_checkout(tmp_path):
    """A committed copy of the launcher in a repository of its own."""
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch/tpu_pod.sh"), tmp_path / "launch")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    return tmp_path


def test_tpu_pod_copy_ships_the_working_tree_or_refuses_uncommitted_changes(tmp_path):
    repo = git_checkout(tmp_path)
    copy = ["bash", "launch/tpu_pod.sh", "--dry_run", "copy", "c.py", "w"]
    out = subprocess.run(copy, cwd=repo, capture_output=True, text=True, check=True)
    assert "git ls-files -z --cached --others --exclude-standard" in out.stdout
    (repo / "tracked.py").write_text("x = 2\n")
    out = subprocess.run(copy, cwd=repo, capture_output=True, text=True)
    assert out.returncode == 1 and "uncommitted changes" in out.stderr and "tracked.py" in out.stderr
    assert "ALLOW_DIRTY=1" in out.stderr and out.stdout == ""
    out = subprocess.run(copy, cwd=repo, capture_output=True, text=True, env=dict(os.environ, ALLOW_DIRTY="1"))
    assert out.returncode == 0 and "tar --null" in out.stdout


def fake_tools(tmp_path):
    """gcloud (and a venv's python for `check`) that record their calls; gcloud fails when
    its arguments contain $FAIL_ON, python when they name bad.py."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"""#!/usr/bin/env bash
echo "gcloud $*" >> {log}
if [[ -n "${{FAIL_ON:-}}" && "$*" == *"$FAIL_ON"* ]]; then exit 3; fi
if [[ "$*" == *pgrep* ]]; then echo ended; fi
""")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/usr/bin/env bash\necho "python $*" >> {log}\n[[ "$*" != *bad.py* ]]\n')
    for f in (bin_dir / "gcloud", venv / "python"):
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", VENV=str(tmp_path / "venv"), ALLOW_DIRTY="1",
               POLL_SECONDS="0")
    return env, log


@pytest.mark.slow
def test_tpu_pod_all_deletes_the_slice_when_a_stage_fails_and_creates_nothing_for_a_bad_config(tmp_path):
    env, log = fake_tools(tmp_path)
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "all", "c.py", "gs://b/w"], cwd=ROOT,
                         env=dict(env, FAIL_ON="uv venv"), capture_output=True, text=True)  # install fails
    calls = log.read_text().splitlines()
    assert out.returncode == 3 and "deleting mdistill" in out.stderr
    assert [c.split()[4] for c in calls if c.startswith("gcloud")] == ["create", "scp", "ssh", "ssh", "delete"]
    assert not any("mdistill.main --config=c.py --workdir=gs://b/w" in c and "nohup" in c for c in calls)
    log.unlink()
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "all", "bad.py", "gs://b/w"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "nothing was created" in out.stderr
    assert [c.split()[0] for c in log.read_text().splitlines()] == ["python"]
    log.unlink()
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "all", "c.py", "gs://b/w"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    stages = [c.split()[4] for c in log.read_text().splitlines() if c.startswith("gcloud")]
    assert stages == ["create", "scp", "ssh", "ssh", "ssh", "describe", "ssh", "scp", "delete"]
    log.unlink()  # a preempted slice: wait stops with an error, and the trap deletes the slice
    (tmp_path / "bin" / "gcloud").write_text((tmp_path / "bin" / "gcloud").read_text() +
                                              'if [[ "$*" == *describe* ]]; then echo PREEMPTED; fi\n')
    out = subprocess.run(["bash", "launch/tpu_pod.sh", "all", "c.py", "gs://b/w"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "mdistill is PREEMPTED" in out.stderr and "deleting mdistill" in out.stderr
    assert log.read_text().splitlines()[-1].split()[4] == "delete"


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
    assert srun[0] == "srun" and {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8"} <= set(srun)
    # a log per task (%t: its rank), and every task refuses an environment without GPUs
    assert f"--output={ROOT}/logs/slurm/%j-%t.log" in srun
    assert "--export=ALL,MDISTILL_REQUIRE_BACKEND=gpu" in srun
    assert srun[srun.index("mdistill.main") + 1:] == ["--config=configs/dmae_vitb.py", "--workdir=/shared/dmae",
                                                      "--config.seed=2"]
    sbatch, srun = dry_run("launch/slurm.sh", "c.py", "w", NODES="2", GPUS_PER_NODE="8", TASKS_PER_NODE="1")
    assert "--ntasks-per-node=1" in srun and "--cpus-per-task=64" in sbatch  # one process drives the node
    out = subprocess.run(["bash", "launch/slurm.sh", "--dry_run", "c.py", "w"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, GPUS_PER_NODE="8", TASKS_PER_NODE="3"))
    assert out.returncode == 2 and "TASKS_PER_NODE=3 must divide GPUS_PER_NODE=8" in out.stderr


def test_slurm_2x8_gives_every_gpu_one_process(monkeypatch):
    """The srun that launch/slurm.sh prints for 2 nodes x 8 GPUs, as SLURM would lay it out:
    each task's initialize() names one GPU, and each node's GPUs are driven once each."""
    import jax

    from mdistill import distributed

    _, srun = dry_run("launch/slurm.sh", "c.py", "w", NODES="2", GPUS_PER_NODE="8")
    arg = {a.split("=")[0]: a.split("=", 1)[1] for a in srun if a.startswith("--") and "=" in a}
    nodes, tasks, gpus = int(arg["--nodes"]), int(arg["--ntasks-per-node"]), int(arg["--gpus-per-node"])
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    monkeypatch.setattr(jax, "process_count", lambda: nodes * tasks)
    monkeypatch.setattr(jax, "local_device_count", lambda: gpus // tasks)
    monkeypatch.setattr(jax, "device_count", lambda: nodes * gpus)
    driven = {}
    for rank in range(nodes * tasks):
        env = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": str(nodes * tasks),
               "SLURM_TASKS_PER_NODE": f"{tasks}(x{nodes})", "SLURM_GPUS_ON_NODE": str(gpus),
               "SLURM_NODEID": str(rank // tasks), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % tasks)}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert distributed.detected_cluster() == ("slurm", 16) and distributed.maybe_initialize()
        for gpu in calls[-1]["local_device_ids"]:
            driven.setdefault(rank // tasks, []).append(gpu)
    assert driven == {0: list(range(8)), 1: list(range(8))}


def test_slurm_options_exclusive_requeue_and_inside_an_allocation():
    sbatch, _ = dry_run("launch/slurm.sh", "c.py", "w", EXCLUSIVE="1", REQUEUE="1", LOG_DIR="/shared/logs")
    assert {"--exclusive", "--requeue", "--signal=B:USR1@300", "--output=/shared/logs/%j-batch.log"} <= set(sbatch)
    sbatch, _ = dry_run("launch/slurm.sh", "c.py", "w")
    assert "--signal=TERM@300" in sbatch and "--exclusive" not in sbatch and "--requeue" not in sbatch
    _, srun = dry_run("launch/slurm.sh", "c.py", "w", BACKEND="cpu")
    assert "--export=ALL,MDISTILL_REQUIRE_BACKEND=cpu" in srun
    # from an salloc shell: no sbatch, srun on the allocation's nodes
    out = subprocess.run(["bash", "launch/slurm.sh", "--dry_run", "c.py", "w"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="3"), check=True)
    [srun] = [shlex.split(line) for line in out.stdout.splitlines()]
    assert srun[0] == "srun" and "--nodes=3" in srun


@pytest.mark.slow
def test_slurm_requeue_passes_sigterm_to_the_tasks_then_requeues(tmp_path):
    """Inside the job with REQUEUE=1: SIGUSR1 (SLURM's warning) makes the batch script send
    SIGTERM to srun (the tasks save and exit) and requeue the job. srun and scontrol are
    stand-ins that record what they get."""
    import signal
    import time

    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"""#!/usr/bin/env bash
trap 'echo "srun got TERM" >> {log}; exit 0' TERM
echo "srun $*" >> {log}
while :; do sleep 0.05; done
""")
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "scontrol $*" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2",
               REQUEUE="1", LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.Popen(["bash", "launch/slurm.sh", "c.py", "w"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not (log.exists() and "srun " in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    calls = log.read_text().splitlines()
    assert calls[0].startswith("srun --nodes=2") and calls[1:] == ["srun got TERM", "scontrol requeue 77"]
    assert "task logs: " in out and (tmp_path / "logs").is_dir()


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
    for stage in ["check", "create", "copy", "install", "run", "logs", "wait", "delete", "all"]:
        assert re.search(rf"^ +{stage} ", text, re.M), stage


def test_usage_error_points_at_help():
    for script in SCRIPTS:
        out = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and "--help" in out.stderr, script


def test_tpu_pod_installs_the_tpu_extra_in_a_venv_of_a_new_python():
    cmds = dry_run("launch/tpu_pod.sh", "install", "c.py", "/w", PYTHON_VERSION="3.13")
    [install] = [c for c in cmds if c[0] == "gcloud"]
    inner = next(a for a in install if a.startswith("--command=")).split("=", 1)[1]
    assert "--python 3.13 .venv" in inner and "-e '.[tpu,gcs]'" in inner
    [run] = [c for c in dry_run("launch/tpu_pod.sh", "run", "c.py", "/w") if c[0] == "gcloud"]
    assert ".venv/bin/python -m mdistill.main" in next(a for a in run if a.startswith("--command="))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launchers_are_shellcheck_clean():
    out = subprocess.run(["shellcheck", *SCRIPTS, *OTHER_SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
