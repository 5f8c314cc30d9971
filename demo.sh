#!/usr/bin/env bash
# The main job: does distillation pay? An MAE teacher on Fashion-MNIST, a small student
# distilled from it (DMAE), the same student trained alone for the same budget (its MAE
# twin), all three evaluated on frozen features beside raw pixels and a random encoder.
#
#   bash demo.sh
#
# Sets up .venv (Python >= 3.11) and the data, then runs
#   stage 1  configs/fmnist_mae_teacher.py, 800 steps  -> $RUNS/teacher
#            (the recipe's 2400 do not fit the demo's 20 minutes; see the config)
#   stage 2  configs/fmnist_dmae.py, 400 steps         -> $RUNS/student_dmae (teacher: $RUNS/teacher)
#   stage 3  the same with --config.method=mae         -> $RUNS/student_mae  (same seed, same budget)
#   stage 4  k-NN (k=20, cosine, avg pool) and a linear probe (configs/linprobe_fmnist.py, cls
#            token) of each encoder from one feature pass, trained on the 60k train images,
#            top-1 on the 10k test images (10k/2k with MDISTILL_DEMO_STEPS); the student's
#            evaluation adds raw pixels and a random encoder of its architecture ('mu/4')
#            -> $RUNS/*/linprobe/linprobe.json
# and prints a table of losses and accuracies, also written as $RUNS/summary.json
# ({"rows": [{"name", "knn_top1", "probe_top1", ...}]}, rows pixels, random, teacher,
# student_mae, student_dmae; the random 'xs/4' encoder is in the study's table instead, as
# its features take another minute or two).
# Rerunning resumes each stage from its latest checkpoint; a finished stage does nothing.
#
# Data: the Fashion-MNIST IDX files in $MDISTILL_FMNIST_DIR (default
# /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist puts them; the
# package is installed with apt-get when the files are missing and we are root).
# Otherwise TFDS's fashion_mnist, prepared once in data/tfds (needs internet; TensorFlow is
# installed into data/tfds/.venv for that one step).
#
# Environment:
#   MDISTILL_DEMO_STEPS=N    train each model for N steps only (a quick check: the
#                            evaluations then use 10k/2k images); the default RUNS then
#                            becomes runs/demo-Nsteps, so it never mixes with a full run.
#                            Fewer steps than the full budgets check the pipeline only:
#                            the summary says so and draws no conclusion
#   RUNS=DIR                 where the workdirs go (default runs/demo), relative to the
#                            repository root
#   MDISTILL_FMNIST_DIR=DIR  folder holding the four Fashion-MNIST *-ubyte.gz files
#   PYTHON=python3.12        the Python that creates .venv (default: the newest >= 3.12 found,
#                            else python3; see scripts/setup_env.sh)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

steps=${MDISTILL_DEMO_STEPS:-}
# the teacher's budget: scripts/demo_summary.py's TEACHER_STEPS (tests/test_demo_summary.py checks they agree)
teacher_overrides=(--config.total_steps=800 --config.warmup_steps=80)
overrides=()       # the three pre-training stages
data_overrides=()  # where the data is, for every stage
probe_overrides=()
if [[ -n $steps ]]; then
  [[ $steps =~ ^[1-9][0-9]*$ ]] || mdistill_die "MDISTILL_DEMO_STEPS=$steps: expected a positive integer"
  warmup=$(( steps / 10 > 0 ? steps / 10 : 1 ))
  log_every=$(( steps / 5 > 0 ? (steps / 5 < 50 ? steps / 5 : 50) : 1 ))
  overrides+=("--config.total_steps=$steps" "--config.warmup_steps=$warmup" "--config.log_every=$log_every")
  teacher_overrides=()
  RUNS=${RUNS:-runs/demo-${steps}steps}
  # all 20 probe epochs: on precomputed features they take a second or two
  probe_overrides=(--config.train_examples=10000 --config.test_examples=2000)
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
  data_overrides+=("--config.data.path=$MDISTILL_FMNIST_DIR")
else
  tfds_dir=$PWD/data/tfds
  echo "Fashion-MNIST IDX files not found in $MDISTILL_FMNIST_DIR (as root, demo.sh installs Debian's dataset-fashion-mnist there); falling back to TFDS"
  prepare_tfds "$tfds_dir"
  data_overrides+=(--config.data.source=tfds --config.data.name=fashion_mnist "--config.data.data_dir=$tfds_dir")
fi

start=$SECONDS
echo
echo "== Stage 1/4: MAE teacher (configs/fmnist_mae_teacher.py) -> $RUNS/teacher"
python -m mdistill.main --config=configs/fmnist_mae_teacher.py --workdir="$RUNS/teacher" \
  "${teacher_overrides[@]}" "${overrides[@]}" "${data_overrides[@]}"

echo
echo "== Stage 2/4: DMAE student (configs/fmnist_dmae.py) -> $RUNS/student_dmae"
python -m mdistill.main --config=configs/fmnist_dmae.py --workdir="$RUNS/student_dmae" \
  --config.teacher.checkpoint="$RUNS/teacher" "${overrides[@]}" "${data_overrides[@]}"

echo
echo "== Stage 3/4: the same student trained alone (MAE), same seed and budget -> $RUNS/student_mae"
python -m mdistill.main --config=configs/fmnist_dmae.py --config.method=mae --workdir="$RUNS/student_mae" \
  "${overrides[@]}" "${data_overrides[@]}"

# A finished evaluation is not redone. One feature pass per encoder serves both the probe
# (cls token) and k-NN (avg pool, k=20); --config.baselines adds raw pixels and a random
# encoder of the evaluated architecture, evaluated the same way.
evaluate() {
  local run=$1 variant=$2 baselines=$3
  [[ -f $RUNS/$run/linprobe/linprobe.json ]] ||
    python -m mdistill.evaluate.linprobe --config=configs/linprobe_fmnist.py --config.pretrained="$RUNS/$run" \
      --config.student.variant="$variant" --config.knn=True --config.baselines="$baselines" \
      --workdir="$RUNS/$run/linprobe" "${data_overrides[@]}" "${probe_overrides[@]}"
}
echo
echo "== Stage 4/4: k-NN and linear probe of every encoder, beside the baselines"
evaluate teacher xs/4 False
evaluate student_dmae mu/4 True
evaluate student_mae mu/4 False

echo
echo "== Summary ($RUNS, $(( SECONDS - start ))s)"
python scripts/demo_summary.py "$RUNS"
