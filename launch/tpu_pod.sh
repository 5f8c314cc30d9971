#!/usr/bin/env bash
# Run one experiment on a Cloud TPU VM slice: every worker runs the same command, detached
# from the ssh session (nohup, a log file per worker); mdistill calls
# jax.distributed.initialize(), which finds the slice's hosts through the metadata server.
#
#   bash launch/tpu_pod.sh [--dry_run] STAGE CONFIG WORKDIR [extra mdistill flags]
#   bash launch/tpu_pod.sh --help
#
# Arguments:
#   --dry_run  (first argument only) print the commands instead of running them
#   STAGE      one of
#                check    validate the config here, on this host, with mdistill's own
#                         --dry_run ($VENV's python, JAX on CPU): nothing is created
#                create   create the TPU VM ($TPU_NAME, $ZONE, $ACCELERATOR_TYPE; a queued
#                         resource with QUEUED=1, Spot capacity with SPOT=1)
#                copy     copy this checkout's working tree (tracked and untracked files that
#                         git does not ignore) to ~/mdistill on every worker; refused, saying
#                         so, while it has uncommitted changes (ALLOW_DIRTY=1 ships them)
#                install  on every worker: ~/mdistill/.venv with Python $PYTHON_VERSION (uv
#                         fetches it: the runtime images' python3 is older than mdistill's 3.11)
#                         and mdistill with JAX's TPU extra and the gcs extra ('.[tpu,gcs]')
#                run      on every worker: end stale TPU processes (those holding /dev/accel* or
#                         /dev/vfio/*), remove /tmp/libtpu_lockfile, then start training under
#                         nohup, detached, writing ~/mdistill-logs/worker-<N>.log
#                logs     stream worker $WORKER's log (tail -F; Ctrl-C stops following, not
#                         the run); with FETCH=1 copy every worker's log to ./tpu-logs/$TPU_NAME
#                wait     poll until training has ended on worker 0 (every $POLL_SECONDS); an
#                         error if the slice was preempted or stopped
#                delete   tear the TPU VM (or its queued resource) down
#                all      check, create, copy, install, run, wait, fetch the logs, delete; a
#                         stage that fails after create deletes what was created (trap)
#              every stage takes CONFIG and WORKDIR; check, run and all use them
#   CONFIG     a config file, optionally with its argument (configs/dmae_vitb.py)
#   WORKDIR    where all workers write: a gs:// URL (Orbax writes each host's checkpoint
#              shards there; the workdir is held with a lease, see docs/scale_out.md) or
#              one directory every worker mounts at the same path (Filestore / NFS)
#   extra mdistill flags  passed on to mdistill.main, e.g. --config.optim.accum_steps=4
#
# Environment (settings):
#   TPU_NAME          the TPU VM's name (default mdistill), also the queued resource's
#   ZONE              its zone (default us-central2-b)
#   ACCELERATOR_TYPE  the slice (default v4-64: 32 chips on 8 hosts)
#   RUNTIME_VERSION   the VM image; default from ACCELERATOR_TYPE, as Cloud TPU's docs list
#                     them: v4 tpu-ubuntu2204-base, v5litepod (v5e) v2-alpha-tpuv5-lite,
#                     v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   PROJECT           the Google Cloud project (default: gcloud's configured project)
#   PYTHON_VERSION    the Python of the workers' venv (default 3.12; >= 3.12 gets the newest JAX)
#   SPOT              1: Spot capacity (preemptible; rerun `run` on a new slice to resume)
#   QUEUED            1: create through a queued resource and wait for it to be ACTIVE
#   AUTOCHECKPOINT    1: --autocheckpoint-enabled (gcloud alpha): on a maintenance event
#                     Cloud TPU sends SIGTERM and waits for the save (mdistill saves and exits)
#   ALLOW_DIRTY       1: copy ships uncommitted changes too, instead of refusing
#   VENV              the local virtual environment that `check` runs (default the repo's .venv)
#   WORKER            the worker whose log `logs` streams (default 0)
#   FETCH             1: `logs` copies every worker's log here instead of streaming one
#   POLL_SECONDS      how often `wait` looks (default 300)
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
  echo "usage: bash launch/tpu_pod.sh [--dry_run] {check|create|copy|install|run|logs|wait|delete|all}" \
       "CONFIG WORKDIR [flags] (--help explains them)" >&2
  exit 2
fi
stage=$1 config=$2 workdir=$3
shift 3

name=${TPU_NAME:-mdistill}
zone=${ZONE:-us-central2-b}
accelerator=${ACCELERATOR_TYPE:-v4-64}
case $accelerator in
  v4-*) default_runtime=tpu-ubuntu2204-base ;;
  v5litepod-* | v5e-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) default_runtime= ;;
esac
runtime=${RUNTIME_VERSION:-$default_runtime}
if [[ -z $runtime ]]; then
  echo "error: ACCELERATOR_TYPE=$accelerator: no runtime version known for it (expected v4-*, v5litepod-*," \
       "v5p-* or v6e-*); set RUNTIME_VERSION" >&2
  exit 2
fi
python_version=${PYTHON_VERSION:-3.12}
where=(--zone="$zone")
if [[ -n ${PROJECT:-} ]]; then
  where+=(--project="$PROJECT")
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
logs=mdistill-logs  # under each worker's home

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

on_workers() {  # on_workers WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$1" --command="$2"
}

check() {
  local cmd=("${VENV:-$repo/.venv}/bin/python" -m mdistill.main "--config=$config" "--workdir=$workdir" --dry_run "$@")
  if (( print_only )); then
    run env JAX_PLATFORMS=cpu "${cmd[@]}"
  elif ! (cd "$repo" && JAX_PLATFORMS=cpu "${cmd[@]}" >/dev/null); then
    echo "error: the config does not pass mdistill's --dry_run here (above); nothing was created" >&2
    return 1
  fi
}

create() {
  local gcloud=(gcloud) options=()
  if [[ ${AUTOCHECKPOINT:-0} == 1 ]]; then
    gcloud+=(alpha)
    options+=(--autocheckpoint-enabled)
  fi
  if [[ ${SPOT:-0} == 1 ]]; then
    options+=(--spot)
  fi
  if [[ ${QUEUED:-0} == 1 ]]; then
    run "${gcloud[@]}" compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$runtime" "${options[@]}"
    local state="" poll=("${gcloud[@]}" compute tpus queued-resources describe "$name" "${where[@]}"
                         --format='value(state.state)')
    if (( print_only )); then
      run "${poll[@]}"
      return
    fi
    while [[ $state != ACTIVE ]]; do
      state=$("${poll[@]}")
      case $state in
        FAILED | SUSPENDED) echo "error: queued resource $name is $state" >&2; return 1 ;;
      esac
      [[ $state == ACTIVE ]] || sleep 60
    done
  else
    run "${gcloud[@]}" compute tpus tpu-vm create "$name" "${where[@]}" \
      --accelerator-type="$accelerator" --version="$runtime" "${options[@]}"
  fi
}

copy() {
  local archive=/tmp/mdistill-src-$name.tar.gz changes
  changes=$(git -C "$repo" status --porcelain)
  if [[ -n $changes && ${ALLOW_DIRTY:-0} != 1 ]]; then
    echo "error: $repo has uncommitted changes; the workers would run code that no commit records." >&2
    echo "Commit them, or set ALLOW_DIRTY=1 to ship the working tree as it is:" >&2
    echo "$changes" >&2
    return 1
  fi
  # the working tree: tracked files as they are now, and untracked ones that git does not ignore
  run bash -c "cd $(printf '%q' "$repo") && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -czf $(printf '%q' "$archive")"
  run gcloud compute tpus tpu-vm scp "$archive" "$name:/tmp/mdistill-src.tar.gz" "${where[@]}" --worker=all
  on_workers all "rm -rf ~/mdistill && mkdir -p ~/mdistill && tar -xzf /tmp/mdistill-src.tar.gz -C ~/mdistill"
}

install() {
  # uv downloads a standalone Python when the image has none of that version
  on_workers all "cd ~/mdistill && python3 -m pip install -q --user uv && \
python3 -m uv venv -q --python $python_version .venv && \
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version' && \
python3 -m uv pip install -q --python .venv/bin/python -e '.[tpu,gcs]'"
}

# on a worker: its index, from the metadata server (the one JAX asks too)
# shellcheck disable=SC2016  # expanded on the worker, not here
worker_id='w=$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'

train() {
  local cmd
  cmd=$(printf ' %q' .venv/bin/python -m mdistill.main "--config=$config" "--workdir=$workdir" "$@")
  # stale TPU processes first (they hold /dev/accel* or /dev/vfio/*), and libtpu's lock file
  on_workers all "cd ~/mdistill && mkdir -p ~/$logs && $worker_id && \
(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | xargs -r sudo kill -9 || true) && \
sudo rm -f /tmp/libtpu_lockfile && \
(nohup setsid$cmd > ~/$logs/worker-\$w.log 2>&1 < /dev/null &) && \
echo \"worker \$w: training detached, log ~/$logs/worker-\$w.log\""
}

show_logs() {
  if [[ ${FETCH:-0} == 1 ]]; then
    run mkdir -p "tpu-logs/$name"
    run gcloud compute tpus tpu-vm scp "$name:~/$logs/*" "tpu-logs/$name/" "${where[@]}" --worker=all
  else
    on_workers "${WORKER:-0}" "tail -n +1 -F ~/$logs/worker-*.log"
  fi
}

wait_for_training() {
  local probe="pgrep -f '[m]distill[.]main' > /dev/null && echo running || echo ended" state
  local describe=(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)')
  if (( print_only )); then
    run "${describe[@]}"
    on_workers 0 "$probe"
    return
  fi
  while :; do
    state=$("${describe[@]}" 2>/dev/null || echo UNKNOWN)
    case $state in
      PREEMPTED | TERMINATED | STOPPED)
        echo "error: $name is $state: the run stopped; its last checkpoint is in the workdir (run again to resume)" >&2
        return 1
        ;;
    esac
    state=$(gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0 --command="$probe" 2>/dev/null ||
            echo unreachable)
    case $state in
      *ended*) return 0 ;;
      *unreachable*) echo "worker 0 of $name did not answer; trying again in ${POLL_SECONDS:-300} s" >&2 ;;
    esac
    sleep "${POLL_SECONDS:-300}"
  done
}

delete() {
  if [[ ${QUEUED:-0} == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

cleanup_on_failure() {
  local status=$?
  trap - EXIT
  if (( status != 0 )); then
    echo "a stage failed (exit $status): deleting $name, which this command created" >&2
    delete || echo "error: could not delete $name: delete it by hand (bash launch/tpu_pod.sh delete ...)" >&2
  fi
  exit "$status"
}

case $stage in
  check) check "$@" ;;
  create) create ;;
  copy) copy ;;
  install) install ;;
  run) train "$@" ;;
  logs) show_logs ;;
  wait) wait_for_training ;;
  delete) delete ;;
  all)
    check "$@"
    if (( print_only )); then
      echo "# on a failed stage from here on (trap EXIT), the slice is deleted:"
      delete
    fi
    create
    trap cleanup_on_failure EXIT
    copy
    install
    train "$@"
    wait_for_training
    FETCH=1 show_logs
    trap - EXIT
    delete
    ;;
  *)
    echo "unknown stage '$stage': expected check, create, copy, install, run, logs, wait, delete or all" >&2
    exit 2
    ;;
esac
