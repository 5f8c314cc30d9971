#!/usr/bin/env bash
# Run one experiment on this machine:
#
#   bash launch/local.sh [--dry_run] CONFIG WORKDIR [extra flags]
#
# runs `python -m mdistill.main --config=CONFIG --workdir=WORKDIR [extra flags]`, e.g.
#   bash launch/local.sh configs/fmnist_mae_teacher.py runs/teacher --config.total_steps=100
# A leading --dry_run prints that command instead of running it; to get mdistill's own
# --dry_run summary, pass it after WORKDIR. Uses the repository's .venv when no virtual
# environment is active and it exists.
set -euo pipefail

print_only=0
if [[ ${1:-} == --dry_run ]]; then
  print_only=1
  shift
fi
if (( $# < 2 )); then
  echo "usage: bash launch/local.sh [--dry_run] CONFIG WORKDIR [extra flags]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${VIRTUAL_ENV:-} && -f $repo/.venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source "$repo/.venv/bin/activate"
fi

cmd=(python -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")
if (( print_only )); then
  printf '%q' "${cmd[0]}"
  printf ' %q' "${cmd[@]:1}"
  echo
else
  exec "${cmd[@]}"
fi
