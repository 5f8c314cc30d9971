#!/usr/bin/env bash
# Run one experiment on a SLURM GPU cluster, one process per node (each sees its node's
# GPUs); JAX's distributed runtime reads the SLURM environment to find its peers:
#
#   bash launch/slurm.sh [--dry_run] CONFIG WORKDIR [extra mdistill flags]
#
# Outside a job this submits itself with sbatch; inside the job it starts the processes
# with srun. --dry_run prints the sbatch command and the srun command the job would run.
#
# Settings (environment): NODES (default 4), GPUS_PER_NODE (8), CPUS_PER_NODE (64),
# PARTITION and ACCOUNT (cluster default when empty), TIME_LIMIT (48:00:00), VENV (the
# repository's .venv), JOB_NAME (mdistill). WORKDIR must be on a filesystem that every node
# sees: every process writes its shards of each checkpoint there.
set -euo pipefail

print_only=0
if [[ ${1:-} == --dry_run ]]; then
  print_only=1
  shift
fi
if (( $# < 2 )); then
  echo "usage: bash launch/slurm.sh [--dry_run] CONFIG WORKDIR [extra flags]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

# inside the job this script runs from SLURM's spool copy: the submitter passes the checkout
repo=${MDISTILL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
nodes=${NODES:-4}
gpus=${GPUS_PER_NODE:-8}
venv=${VENV:-$repo/.venv}

show() {
  printf '%q' "$1"
  shift
  printf ' %q' "$@"
  echo
}

train=(srun --nodes="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1
       "$venv/bin/python" -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")

if [[ -n ${SLURM_JOB_ID:-} && $print_only == 0 ]]; then
  cd "$repo"
  # SIGTERM before the time limit reaches every process: mdistill saves and exits, and
  # resubmitting the same command resumes.
  exec "${train[@]}"
fi

submit=(sbatch --job-name="${JOB_NAME:-mdistill}" --nodes="$nodes" --ntasks-per-node=1
        --gpus-per-node="$gpus" --cpus-per-task="${CPUS_PER_NODE:-64}" --time="${TIME_LIMIT:-48:00:00}"
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
