#!/usr/bin/env bash
# Run one experiment on a Cloud TPU VM pod slice (every worker runs the same command; JAX's
# distributed runtime finds its peers on Cloud TPU by itself):
#
#   bash launch/tpu_pod.sh [--dry_run] STAGE CONFIG WORKDIR [extra mdistill flags]
#
# STAGE is one of
#   create   create the TPU VM ($TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION)
#   copy     copy this checkout (its committed HEAD) to ~/mdistill on every worker
#   install  pip-install jax[tpu] and mdistill on every worker
#   run      start training on every worker
#   delete   tear the TPU VM down
#   all      create, copy, install, run, then delete
# --dry_run prints the gcloud commands instead of running them.
#
# WORKDIR must be one directory that every worker sees (NFS / Filestore, or a bucket
# mounted with gcsfuse at the same path on each worker): all workers write their shards of
# each checkpoint there, and process 0 writes the metrics.
#
# Settings (environment): TPU_NAME (default mdistill), ZONE (us-central2-b),
# ACCELERATOR_TYPE (v4-64), RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default
# when empty).
set -euo pipefail

print_only=0
if [[ ${1:-} == --dry_run ]]; then
  print_only=1
  shift
fi
if (( $# < 3 )); then
  echo "usage: bash launch/tpu_pod.sh [--dry_run] {create|copy|install|run|delete|all} CONFIG WORKDIR [flags]" >&2
  exit 2
fi
stage=$1 config=$2 workdir=$3
shift 3

name=${TPU_NAME:-mdistill}
zone=${ZONE:-us-central2-b}
accelerator=${ACCELERATOR_TYPE:-v4-64}
runtime=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
where=(--zone="$zone")
if [[ -n ${PROJECT:-} ]]; then
  where+=(--project="$PROJECT")
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

run() {
  if (( print_only )); then
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    echo
  else
    "$@"
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

create() {
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
    --accelerator-type="$accelerator" --version="$runtime"
}

copy() {
  local archive=/tmp/mdistill-src.tar.gz
  run git -C "$repo" archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$name:/tmp/mdistill-src.tar.gz" "${where[@]}" --worker=all
  on_all_workers "rm -rf ~/mdistill && mkdir -p ~/mdistill && tar -xzf /tmp/mdistill-src.tar.gz -C ~/mdistill"
}

install() {
  on_all_workers "cd ~/mdistill && python3 -m pip install -q -U 'jax[tpu]' -e ."
}

train() {
  local cmd
  cmd=$(printf ' %q' python3 -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")
  on_all_workers "cd ~/mdistill &&$cmd"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
}

case $stage in
  create) create ;;
  copy) copy ;;
  install) install ;;
  run) train "$@" ;;
  delete) delete ;;
  all) create && copy && install && train "$@" && delete ;;
  *)
    echo "unknown stage '$stage': expected create, copy, install, run, delete or all" >&2
    exit 2
    ;;
esac
