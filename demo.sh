#!/usr/bin/env bash
# The main job: an MAE teacher on Fashion-MNIST, a DMAE student distilled from it, and
# both evaluated on frozen features.
#
#   bash demo.sh
#
# Sets up .venv (Python >= 3.11) and the data, then runs
#   stage 1  configs/fmnist_mae_teacher.py  -> $RUNS/teacher
#   stage 2  configs/fmnist_dmae.py         -> $RUNS/dmae  (teacher: $RUNS/teacher)
#   stage 3  a linear probe (configs/linprobe_fmnist.py) and k-NN (k=20, cosine) of both
#            encoders, from one feature pass each, trained on the 60k train images, top-1
#            on the 10k test images (10k/2k with MDISTILL_DEMO_STEPS)
#            -> $RUNS/{teacher,dmae}/linprobe/linprobe.json
# and prints a table of losses, throughput and accuracies. Rerunning resumes each stage
# from its latest checkpoint; a finished stage does nothing.
#
# Data: the Fashion-MNIST IDX files in $MDISTILL_FMNIST_DIR (default
# /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist puts them; the
# package is installed with apt-get when the files are missing and we are root).
# Otherwise TFDS's fashion_mnist, prepared once in data/tfds (needs internet; TensorFlow is
# installed into data/tfds/.venv for that one step).
#
# Environment:
#   MDISTILL_DEMO_STEPS=N    train each stage for N steps only (a quick check: the
#                            evaluations then use 10k/2k images); the default RUNS then
#                            becomes runs/demo-Nsteps, so it never mixes with a full run
#   RUNS=DIR                 where the two workdirs go (default runs/demo), relative to the
#                            repository root
#   MDISTILL_FMNIST_DIR=DIR  folder holding the four Fashion-MNIST *-ubyte.gz files
#   PYTHON=python3.11        the Python that creates .venv (default python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

steps=${MDISTILL_DEMO_STEPS:-}
overrides=()       # the two pre-training stages
data_overrides=()  # where the data is, for every stage
probe_overrides=()
if [[ -n $steps ]]; then
  [[ $steps =~ ^[1-9][0-9]*$ ]] || mdistill_die "MDISTILL_DEMO_STEPS=$steps: expected a positive integer"
  warmup=$(( steps / 10 > 0 ? steps / 10 : 1 ))
  log_every=$(( steps / 5 > 0 ? (steps / 5 < 50 ? steps / 5 : 50) : 1 ))
  overrides+=("--config.total_steps=$steps" "--config.warmup_steps=$warmup" "--config.log_every=$log_every")
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
echo "== Stage 1/3: MAE teacher (configs/fmnist_mae_teacher.py) -> $RUNS/teacher"
python -m mdistill.main --config=configs/fmnist_mae_teacher.py --workdir="$RUNS/teacher" "${overrides[@]}" "${data_overrides[@]}"

echo
echo "== Stage 2/3: DMAE student (configs/fmnist_dmae.py) -> $RUNS/dmae"
python -m mdistill.main --config=configs/fmnist_dmae.py --workdir="$RUNS/dmae" \
  --config.teacher.checkpoint="$RUNS/teacher" "${overrides[@]}" "${data_overrides[@]}"

# A finished evaluation is not redone.
# One feature pass per encoder serves both: the probe (cls token) and k-NN (avg pool, k=20).
evaluate() {
  local run=$1 variant=$2
  [[ -f $RUNS/$run/linprobe/linprobe.json ]] ||
    python -m mdistill.evaluate.linprobe --config=configs/linprobe_fmnist.py --config.pretrained="$RUNS/$run" \
      --config.student.variant="$variant" --config.knn=True --workdir="$RUNS/$run/linprobe" \
      "${data_overrides[@]}" "${probe_overrides[@]}"
}
echo
echo "== Stage 3/3: k-NN and linear probe of the teacher and the student"
evaluate teacher xs/4
evaluate dmae mu/4

echo
echo "== Summary ($RUNS, $(( SECONDS - start ))s)"
python - "$RUNS/teacher" "$RUNS/dmae" <<'EOF'
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

test_sizes = set()

def accuracies(path):
    """(k-NN top-1, probe top-1) from linprobe.json, as text."""
    if not os.path.exists(path):
        return "-", "-"
    with open(path) as f:
        r = json.load(f)
    test_sizes.add(r.get("test_examples", "?"))
    return (f"{r['knn_top1']:.2f}" if "knn_top1" in r else "-"), f"{r['top1']:.2f}"

print(f"{'stage':<16}{'steps':>6}  {'loss first -> last':<20}{'rec_loss first -> last':<24}"
      f"{'distill_loss first -> last':<28}{'img/s':>7}{'k-NN top1':>11}{'probe top1':>12}")
for stage, run in zip(("teacher (MAE)", "student (DMAE)"), sys.argv[1:]):
    r = rows(os.path.join(run, "metrics.jsonl"))
    if not r:
        print(f"{stage:<16}  no metrics in {run}")
        continue
    first, last = r[0], r[-1]
    knn_top1, probe_top1 = accuracies(os.path.join(run, "linprobe", "linprobe.json"))
    print(f"{stage:<16}{last['step']:>6}  {span(first, last, 'loss'):<20}{span(first, last, 'rec_loss'):<24}"
          f"{span(first, last, 'distill_loss'):<28}{last['images_per_sec']:>7.0f}"
          f"{knn_top1:>11}{probe_top1:>12}")
sizes = " / ".join(str(n) for n in sorted(test_sizes, key=str)) or "no"
print(f"img/s: pre-training throughput at the last log; accuracies: top-1 in % on {sizes} test images")
EOF
