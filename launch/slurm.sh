#!/usr/bin/env bash
# Run one experiment on a SLURM GPU cluster, one process per GPU (mdistill gives each task
# the GPU of its SLURM_LOCALID); JAX's distributed runtime reads the SLURM environment to
# find its peers.
#
#   bash launch/slurm.sh [--dry_run] CONFIG WORKDIR [extra mdistill flags]
#   bash launch/slurm.sh --help
#
# Outside a job this submits itself with sbatch; inside the job it starts the processes
# with srun. SLURM sends SIGTERM 5 minutes before the time limit: every process saves at the
# same step and exits, and submitting the same command again resumes.
#
# Arguments:
#   --dry_run    (first argument only) print the sbatch command and the srun command the
#                job would run, instead of submitting
#   CONFIG       a config file, optionally with its argument (configs/dmae_vitb.py)
#   WORKDIR      the run's folder, on a filesystem that every node sees: every process
#                writes its shards of each checkpoint there
#   extra mdistill flags  passed on to mdistill.main, e.g. --config.optim.accum_steps=4
#
# Environment (settings):
#   NODES          nodes (default 4)
#   GPUS_PER_NODE  GPUs per node, requested with --gpus-per-node (default 8)
#   TASKS_PER_NODE processes per node (default GPUS_PER_NODE: one per GPU; 1: one process
#                  drives all its node's GPUs); must divide GPUS_PER_NODE
#   CPUS_PER_NODE  CPUs per node, split over its tasks with --cpus-per-task (default 64)
#   PARTITION      sbatch --partition (default: the cluster's default partition)
#   ACCOUNT        sbatch --account (default: your default account)
#   TIME_LIMIT     sbatch --time (default 48:00:00)
#   JOB_NAME       sbatch --job-name (default mdistill)
#   VENV           a virtual environment with mdistill installed, on a path every node sees
#                  (default: the repository's .venv). For GPUs it needs JAX's CUDA plugin:
#                  python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#                  (a .venv made by tests/run.sh or demo.sh has CPU-only JAX)
# Environment (set by SLURM or by this script, not by you):
#   SLURM_JOB_ID   set inside a job: the script then runs srun instead of sbatch
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
nodes=${NODES:-4}
gpus=${GPUS_PER_NODE:-8}
tasks=${TASKS_PER_NODE:-$gpus}
if (( tasks < 1 || gpus % tasks )); then
  echo "error: TASKS_PER_NODE=$tasks must divide GPUS_PER_NODE=$gpus (each task drives the same number of GPUs)" >&2
  exit 2
fi
venv=${VENV:-$repo/.venv}

show() {
  printf '%q' "$1"
  shift
  printf ' %q' "$@"
  echo
}

train=(srun --nodes="$nodes" --ntasks-per-node="$tasks" --kill-on-bad-exit=1
       "$venv/bin/python" -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")

if [[ -n ${SLURM_JOB_ID:-} && $print_only == 0 ]]; then
  cd "$repo"
  exec "${train[@]}"
fi

submit=(sbatch --job-name="${JOB_NAME:-mdistill}" --nodes="$nodes" --ntasks-per-node="$tasks"
        --gpus-per-node="$gpus" --cpus-per-task="$(( ${CPUS_PER_NODE:-64} / tasks ))" --time="${TIME_LIMIT:-48:00:00}"
        --signal=TERM@300 --output="slurm-%j.out" --export="ALL,MDISTILL_REPO=$repo")
if [[ -n ${PARTITION:-} ]]; then
  submit+=(--partition="$PARTITION")
fi
if [[ -n ${ACCOUNT:-} ]]; then
  submit+=(--account="$ACCOUNT")
fi
submit+=("$repo/launch/slurm.sh" "$config" "$workdir" "$@")

if (( print_only )); then
  show "${submit[@]}"
  show "${train[@]}"
else
  "${submit[@]}"
fi
