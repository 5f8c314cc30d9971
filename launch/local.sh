#!/usr/bin/env bash
# Run one experiment on this machine (its CPU, GPUs or TPU chips: whatever JAX sees).
#
#   bash launch/local.sh [--dry_run] CONFIG WORKDIR [extra flags]
#   bash launch/local.sh --help
#
# runs `python -m mdistill.main --config=CONFIG --workdir=WORKDIR [extra flags]`, e.g.
#   bash launch/local.sh configs/fmnist_mae_teacher.py runs/teacher --config.total_steps=100
#
# Arguments:
#   --dry_run    (first argument only) print the command instead of running it; to get
#                mdistill's own --dry_run summary (memory, FLOPs, no training), pass
#                --dry_run after WORKDIR instead
#   CONFIG       a config file under configs/, optionally with its argument, e.g.
#                configs/dmae_vitb.py or configs/dmae_vitb.py:smoke
#   WORKDIR      the run's folder (checkpoints, metrics); rerunning with it resumes
#   extra flags  passed on to mdistill.main: --config.FIELD=VALUE overrides, e.g.
#                --config.optim.accum_steps=4 (python -m mdistill.main --help lists the rest)
#
# Environment:
#   VIRTUAL_ENV  set by an active virtual environment: its python runs. With none active,
#                the repository's .venv is activated if it exists (bash demo.sh or bash
#                tests/run.sh creates it, with CPU-only JAX; for GPUs or TPUs install
#                '.[cuda]' or '.[tpu]', see the README's Install), else `python` on PATH runs.
#   JAX's and XLA's own variables pass through, e.g. JAX_PLATFORMS=cpu, or
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 simulated CPU devices.
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
  echo "usage: bash launch/local.sh [--dry_run] CONFIG WORKDIR [extra flags] (--help explains them)" >&2
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
