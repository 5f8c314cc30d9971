#!/usr/bin/env bash
# The main job: an MAE teacher on Fashion-MNIST, then a DMAE student distilled from it.
#
#   bash demo.sh
#
# Sets up .venv (Python >= 3.11) and the data, then runs
#   stage 1  configs/fmnist_mae_teacher.py  -> $RUNS/teacher
#   stage 2  configs/fmnist_dmae.py         -> $RUNS/dmae  (teacher: $RUNS/teacher)
# and prints a summary of both metrics.jsonl files. Rerunning resumes each stage from its
# latest checkpoint; a finished stage does nothing.
#
# Data: the Fashion-MNIST IDX files in $MDISTILL_FMNIST_DIR (default
# /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist puts them; the
# package is installed with apt-get when the files are missing and we are root).
# Otherwise TFDS's fashion_mnist, prepared once in data/tfds (needs internet; TensorFlow is
# installed into data/tfds/.venv for that one step).
#
# Environment:
#   MDISTILL_DEMO_STEPS=N    train each stage for N steps only (a quick check); the default
#                            RUNS then becomes runs/demo-Nsteps, so it never mixes with a
#                            full run
#   RUNS=DIR                 where the two workdirs go (default runs/demo), relative to the
#                            repository root
#   MDISTILL_FMNIST_DIR=DIR  folder holding the four Fashion-MNIST *-ubyte.gz files
#   PYTHON=python3.11        the Python that creates .venv (default python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

steps=${MDISTILL_DEMO_STEPS:-}
overrides=()
if [[ -n $steps ]]; then
  [[ $steps =~ ^[1-9][0-9]*$ ]] || mdistill_die "MDISTILL_DEMO_STEPS=$steps: expected a positive integer"
  warmup=$(( steps / 10 > 0 ? steps / 10 : 1 ))
  log_every=$(( steps / 5 > 0 ? (steps / 5 < 50 ? steps / 5 : 50) : 1 ))
  overrides+=("--config.total_steps=$steps" "--config.warmup_steps=$warmup" "--config.log_every=$log_every")
  RUNS=${RUNS:-runs/demo-${steps}steps}
fi
RUNS=${RUNS:-runs/demo}

mdistill_setup_venv . mdistill

# Prepare TFDS fashion_mnist in $1 (array_record). TFDS needs TensorFlow to build the
# dataset (not to read it), so the build runs in a separate venv, data/tfds/.venv, with the
# same tensorflow-datasets version; reading it back needs Pillow in .venv.
prepare_tfds() {
  local data_dir=$1 tfds_version tf_pkg prep_venv=data/tfds/.venv
  if python -c "import sys, tensorflow_datasets as tfds
sys.exit(not tfds.builder('fashion_mnist', data_dir=sys.argv[1]).is_prepared())" "$data_dir" 2>/dev/null; then
    echo "Using TFDS fashion_mnist prepared in $data_dir"
  else
    echo "Preparing TFDS fashion_mnist in $data_dir: this needs internet (PyPI for TensorFlow, then the dataset download) ..."
    tfds_version=$(python -c "import tensorflow_datasets as tfds; print(tfds.__version__)")
    tf_pkg=tensorflow-cpu
    [[ $(uname -m) == x86_64 ]] || tf_pkg=tensorflow
    [[ -x $prep_venv/bin/python ]] || python -m venv "$prep_venv"
    "$prep_venv/bin/pip" install -q "$tf_pkg" "tensorflow-datasets==$tfds_version" importlib_resources array_record
    "$prep_venv/bin/python" -c "import sys, tensorflow_datasets as tfds
tfds.builder('fashion_mnist', data_dir=sys.argv[1]).download_and_prepare(file_format='array_record')" "$data_dir"
  fi
  python -c "import PIL" 2>/dev/null || pip install -q pillow
}

if mdistill_fmnist_ready; then
  echo "Using Fashion-MNIST from $MDISTILL_FMNIST_DIR"
  overrides+=("--config.data.path=$MDISTILL_FMNIST_DIR")
else
  tfds_dir=$PWD/data/tfds
  echo "Fashion-MNIST IDX files not found in $MDISTILL_FMNIST_DIR (as root, demo.sh installs Debian's dataset-fashion-mnist there); falling back to TFDS"
  prepare_tfds "$tfds_dir"
  overrides+=(--config.data.source=tfds --config.data.name=fashion_mnist "--config.data.data_dir=$tfds_dir")
fi

start=$SECONDS
echo
echo "== Stage 1/2: MAE teacher (configs/fmnist_mae_teacher.py) -> $RUNS/teacher"
python -m mdistill.main --config=configs/fmnist_mae_teacher.py --workdir="$RUNS/teacher" "${overrides[@]}"

echo
echo "== Stage 2/2: DMAE student (configs/fmnist_dmae.py) -> $RUNS/dmae"
python -m mdistill.main --config=configs/fmnist_dmae.py --workdir="$RUNS/dmae" \
  --config.teacher.checkpoint="$RUNS/teacher" "${overrides[@]}"

echo
echo "== Summary ($RUNS, $(( SECONDS - start ))s)"
python - "$RUNS/teacher/metrics.jsonl" "$RUNS/dmae/metrics.jsonl" <<'EOF'
import json, os, sys

def rows(path):
    """Logged lines by step; a resumed run may log a step twice, the later line wins."""
    by_step = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    m = json.loads(line)
                    by_step[m["step"]] = m
    return [by_step[s] for s in sorted(by_step)]

def span(first, last, key):
    return f"{first[key]:.4f} -> {last[key]:.4f}" if key in last else "-"

print(f"{'stage':<16}{'steps':>6}  {'loss first -> last':<20}{'rec_loss first -> last':<24}"
      f"{'distill_loss first -> last':<28}{'img/s (last log)':>16}")
for stage, path in zip(("teacher (MAE)", "student (DMAE)"), sys.argv[1:]):
    r = rows(path)
    if not r:
        print(f"{stage:<16}  no metrics in {path}")
        continue
    first, last = r[0], r[-1]
    print(f"{stage:<16}{last['step']:>6}  {span(first, last, 'loss'):<20}{span(first, last, 'rec_loss'):<24}"
          f"{span(first, last, 'distill_loss'):<28}{last['images_per_sec']:>16.0f}")
EOF
