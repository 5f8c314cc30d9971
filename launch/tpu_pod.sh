#!/usr/bin/env bash
# Run one experiment on a Cloud TPU VM pod slice (every worker runs the same command; JAX's
# distributed runtime finds its peers on Cloud TPU by itself).
#
#   bash launch/tpu_pod.sh [--dry_run] STAGE CONFIG WORKDIR [extra mdistill flags]
#   bash launch/tpu_pod.sh --help
#
# Arguments:
#   --dry_run  (first argument only) print the gcloud commands instead of running them
#   STAGE      one of
#                create   create the TPU VM ($TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION)
#                copy     copy this checkout (its committed HEAD) to ~/mdistill on every worker
#                install  on every worker: make ~/mdistill/.venv with Python $PYTHON_VERSION
#                         (uv fetches it: the runtime images' python3 is older than mdistill's
#                         3.11) and pip-install mdistill with JAX's TPU extra ('.[tpu]', libtpu)
#                run      start training on every worker, with ~/mdistill/.venv's python
#                delete   tear the TPU VM down
#                all      create, copy, install, run, then delete
#              every stage takes CONFIG and WORKDIR; only run and all use them
#   CONFIG     a config file, optionally with its argument (configs/dmae_vitb.py)
#   WORKDIR    one directory that every worker sees (NFS / Filestore, or a bucket mounted
#              with gcsfuse at the same path on each worker): all workers write their shards
#              of each checkpoint there, and process 0 writes the metrics
#   extra mdistill flags  passed on to mdistill.main, e.g. --config.optim.accum_steps=4
#
# Environment (settings):
#   TPU_NAME          the TPU VM's name (default mdistill)
#   ZONE              its zone (default us-central2-b)
#   ACCELERATOR_TYPE  the slice (default v4-64: 32 chips on 8 hosts)
#   RUNTIME_VERSION   the VM image (default tpu-ubuntu2204-base)
#   PROJECT           the Google Cloud project (default: gcloud's configured project)
#   PYTHON_VERSION    the Python of the workers' venv (default 3.12; >= 3.12 gets the newest JAX)
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
if (( $# < 3 )); then
  echo "usage: bash launch/tpu_pod.sh [--dry_run] {create|copy|install|run|delete|all} CONFIG WORKDIR [flags] (--help explains them)" >&2
  exit 2
fi
stage=$1 config=$2 workdir=$3
shift 3

name=${TPU_NAME:-mdistill}
zone=${ZONE:-us-central2-b}
accelerator=${ACCELERATOR_TYPE:-v4-64}
runtime=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
python_version=${PYTHON_VERSION:-3.12}
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
  # uv downloads a standalone Python when the image has none of that version
  on_all_workers "cd ~/mdistill && python3 -m pip install -q --user uv && \
python3 -m uv venv -q --python $python_version .venv && \
python3 -m uv pip install -q --python .venv/bin/python -e '.[tpu]'"
}

train() {
  local cmd
  cmd=$(printf ' %q' .venv/bin/python -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")
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
