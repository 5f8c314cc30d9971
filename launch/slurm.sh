#!/usr/bin/env bash
# Run one experiment on a SLURM GPU cluster, one process per GPU (mdistill gives each task
# the GPU of its SLURM_LOCALID); JAX's distributed runtime reads the SLURM environment to
# find its peers.
#
#   bash launch/slurm.sh [--dry_run] CONFIG WORKDIR [extra mdistill flags]
#   bash launch/slurm.sh --help
#
# Outside a job this submits itself with sbatch; inside one (the batch job it submitted, or
# an salloc shell: SLURM_JOB_ID is set) it starts the processes with srun, on the
# allocation's nodes. Each task refuses to start unless JAX's default backend is the GPU
# (MDISTILL_REQUIRE_BACKEND=gpu, checked by mdistill.distributed) and writes its own log,
# $LOG_DIR/<job>-<task>.log. SLURM signals the run 5 minutes before the time limit: every
# process saves at the same step and exits, and submitting the same command again resumes
# (with REQUEUE=1 the job requeues itself and resumes on its own).
#
# Arguments:
#   --dry_run    (first argument only) print the sbatch command and the srun command the
#                job would run, instead of submitting (inside an allocation: the srun only)
#   CONFIG       a config file, optionally with its argument (configs/dmae_vitb.py)
#   WORKDIR      the run's folder, on a filesystem that every node sees (or a gs:// URL):
#                every process writes its shards of each checkpoint there
#   extra mdistill flags  passed on to mdistill.main, e.g. --config.optim.accum_steps=4
#
# Environment (settings):
#   NODES          nodes (default 4; inside an allocation, its SLURM_JOB_NUM_NODES)
#   GPUS_PER_NODE  GPUs per node, requested with --gpus-per-node (default 8)
#   TASKS_PER_NODE processes per node (default GPUS_PER_NODE: one per GPU; 1: one process
#                  drives all its node's GPUs); must divide GPUS_PER_NODE
#   CPUS_PER_NODE  CPUs per node, split over its tasks with --cpus-per-task (default 64)
#   PARTITION      sbatch --partition (default: the cluster's default partition)
#   ACCOUNT        sbatch --account (default: your default account)
#   TIME_LIMIT     sbatch --time (default 48:00:00)
#   JOB_NAME       sbatch --job-name (default mdistill)
#   EXCLUSIVE      1: sbatch --exclusive (whole nodes: no other job shares their GPUs, CPUs,
#                  memory or network)
#   REQUEUE        1: sbatch --requeue, and SIGUSR1 to the batch script 5 minutes before the
#                  time limit (--signal=B:USR1@300): it passes SIGTERM to the tasks (they save
#                  and exit) and requeues the job, which resumes from that checkpoint; a
#                  preempted job is requeued by SLURM itself
#   LOG_DIR        the folder of the per-task logs, on a filesystem every node sees
#                  (default <repository>/logs/slurm)
#   BACKEND        the JAX backend each task must have (default gpu; cpu for a CPU cluster)
#   VENV           a virtual environment with mdistill installed, on a path every node sees
#                  (default: the repository's .venv). For GPUs it needs JAX's CUDA plugin:
#                  python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#                  (a .venv made by tests/run.sh or demo.sh has CPU-only JAX: refused)
# Environment (set by SLURM or by this script, not by you):
#   SLURM_JOB_ID   set inside a job or an salloc shell: the script then runs srun
#   SLURM_JOB_NUM_NODES  the allocation's node count, NODES's default inside one
#   MDISTILL_REPO  the checkout, passed to the job (SLURM runs a spool copy of this script)
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  # the comment block above, without its '# '
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
  exit 0
fi

print_only=0
if [[ ${1:-} == --dry_run ]]; then
  print_only=1
  shift
fi
if (( $# < 2 )); then
  echo "usage: bash launch/slurm.sh [--dry_run] CONFIG WORKDIR [extra flags] (--help explains them)" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

# inside the job this script runs from SLURM's spool copy: the submitter passes the checkout
repo=${MDISTILL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
in_allocation=0
if [[ -n ${SLURM_JOB_ID:-} ]]; then
  in_allocation=1
fi
nodes=${NODES:-${SLURM_JOB_NUM_NODES:-4}}
gpus=${GPUS_PER_NODE:-8}
tasks=${TASKS_PER_NODE:-$gpus}
if (( tasks < 1 || gpus % tasks )); then
  echo "error: TASKS_PER_NODE=$tasks must divide GPUS_PER_NODE=$gpus (each task drives the same number of GPUs)" >&2
  exit 2
fi
venv=${VENV:-$repo/.venv}
log_dir=${LOG_DIR:-$repo/logs/slurm}

show() {
  printf '%q' "$1"
  shift
  printf ' %q' "$@"
  echo
}

requeued=0
requeue() {  # requeue SRUN_PID: the batch script's answer to SIGUSR1 (REQUEUE=1)
  echo "time limit near: asking the tasks to save, then requeueing job $SLURM_JOB_ID"
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" || true
  scontrol requeue "$SLURM_JOB_ID"
  requeued=1
}

# %j: the job id, %t: the task's rank (srun's filename patterns)
train=(srun --nodes="$nodes" --ntasks-per-node="$tasks" --gpus-per-node="$gpus" --kill-on-bad-exit=1
       --output="$log_dir/%j-%t.log" --export="ALL,MDISTILL_REQUIRE_BACKEND=${BACKEND:-gpu}"
       "$venv/bin/python" -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")

if (( in_allocation && ! print_only )); then
  cd "$repo"
  mkdir -p "$log_dir"
  echo "job $SLURM_JOB_ID: $((nodes * tasks)) tasks on $nodes node(s); task logs: $log_dir/$SLURM_JOB_ID-<task>.log"
  if [[ ${REQUEUE:-0} == 1 ]]; then
    # USR1 (--signal=B:USR1@300): the tasks save and stop on SIGTERM, then the job goes back in the queue
    "${train[@]}" &
    step=$!
    trap 'requeue "$step"' USR1
    status=0
    wait "$step" || status=$?
    if (( requeued )); then
      exit 0
    fi
    exit "$status"
  fi
  exec "${train[@]}"
fi

submit=(sbatch --job-name="${JOB_NAME:-mdistill}" --nodes="$nodes" --ntasks-per-node="$tasks"
        --gpus-per-node="$gpus" --cpus-per-task="$(( ${CPUS_PER_NODE:-64} / tasks ))" --time="${TIME_LIMIT:-48:00:00}"
        --output="$log_dir/%j-batch.log" --export="ALL,MDISTILL_REPO=$repo")
if [[ ${REQUEUE:-0} == 1 ]]; then
  submit+=(--requeue --signal=B:USR1@300)
else
  submit+=(--signal=TERM@300)
fi
if [[ ${EXCLUSIVE:-0} == 1 ]]; then
  submit+=(--exclusive)
fi
if [[ -n ${PARTITION:-} ]]; then
  submit+=(--partition="$PARTITION")
fi
if [[ -n ${ACCOUNT:-} ]]; then
  submit+=(--account="$ACCOUNT")
fi
submit+=("$repo/launch/slurm.sh" "$config" "$workdir" "$@")

if (( print_only )); then
  if (( ! in_allocation )); then
    show "${submit[@]}"
  fi
  show "${train[@]}"
else
  mkdir -p "$log_dir"  # sbatch writes the batch script's own log there
  "${submit[@]}"
fi
