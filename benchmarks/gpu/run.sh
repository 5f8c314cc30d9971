#!/usr/bin/env bash
# One call on a GPU host, about 7 minutes on one H200: the step before and after the flat
# AdamW update, the update alone, the official DMAE release, the input pipeline (and its DALI
# path where nvidia-dali is installed), the token
# gathers by indexing and by one-hot matmul. Every figure
# is a JSON line in $DEST/*.jsonl (default: $OUT, the device tool's output folder, else
# benchmarks/gpu/new). How to run it: docs/performance.md ("The GPU script").
#
#   bash benchmarks/gpu/wheels.sh          # here, once: .whl/ with what the GPU image lacks
#   cp -r /path/to/DMAE .dmae               # optional: the official release, for its step
#   bash benchmarks/gpu/run.sh              # there, with .whl (and .dmae) carried along
#
# Sections run in order of importance, each under a timeout that keeps the whole within
# BUDGET seconds (default 450); one that fails or runs out leaves a line saying so.
set -u
DEST=${DEST:-${OUT:-benchmarks/gpu/new}}
BUDGET=${BUDGET:-450}
DMAE_REPO=${DMAE_REPO:-.dmae}
mkdir -p "$DEST"
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}

note() { echo "{\"bench\": \"note\", \"section\": \"$1\", \"note\": \"$2\"}" | tee -a "$DEST/notes.jsonl"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
section() {  # section NAME SECONDS COMMAND...: runs COMMAND for at most min(SECONDS, what is left)
  local name=$1 limit=$2; shift 2
  local t; t=$(left); (( t < limit )) && limit=$t
  if (( limit < 20 )); then note "$name" "skipped: the time budget is spent"; return; fi
  echo "== $name (up to ${limit}s)"
  timeout "$limit" "$@" || note "$name" "exit status $? (124: out of time)"
}

if [ -d .whl ]; then  # what the GPU image lacks (benchmarks/gpu/wheels.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda|flax|optax|orbax|numpy|torch|grain|simplejpeg|nvidia-dali)'
  echo "cpu cores: $(nproc); git: $(git rev-parse --short HEAD 2>/dev/null)"; } > "$DEST/env.txt" 2>&1
B256=(--batch=256 --dtype=bfloat16 --teacher_dtype=bfloat16)

# 1. the step after: flat AdamW update, MAE / DMAE / AMD, ViT-B student, bf16, batch 256
section step_flat 200 "$PY" -m benchmarks.step --models=B --methods=mae,dmae,amd "${B256[@]}" --steps=10 --warmup=2 \
  --optim_layout=flat --out="$DEST/step_flat_b256.jsonl"
# 2. before and after in one process, alternated: the update alone (tree / flat, f32 / bf16
#    first moment) and the whole DMAE step with each layout
section optimizer 120 "$PY" -m benchmarks.optimizer --method=dmae --model=B "${B256[@]}" --rounds=20 --step_rounds=10 \
  --loss_steps=0 --out="$DEST/optimizer_b256.jsonl"
# 3. the official DMAE release with its AMP, same GPU (its checkout in $DMAE_REPO)
if [ -f "$DMAE_REPO/models_mae_distill.py" ]; then
  TIMM=/tmp/timm049
  [ -d .whl/timm049 ] && "$PY" -m pip install -q --no-index --no-deps --target $TIMM .whl/timm049/*.whl
  section official_dmae 90 env PYTHONPATH="$TIMM:$PYTHONPATH" "$PY" -m benchmarks.official_dmae --repo="$DMAE_REPO" \
    --device=cuda --amp --batch=256 --steps=10 --warmup=3 --out="$DEST/official_dmae_b256.jsonl"
else
  note official_dmae "no checkout in $DMAE_REPO (models_mae_distill.py): skipped"
fi
# 4. the input pipeline on this host's cores: original JPEGs against prepared shards
section pipeline 100 "$PY" -m benchmarks.pipeline --skip_step --skip_eval --formats=jpeg,prepared --num_images=256 \
  --workdir=/tmp/mdistill-bench --loop_seconds=6 --workers=0,"$(nproc)" --batches=8 \
  | tee "$DEST/pipeline.jsonl"
# 4b. the DALI input path (config.data.decoder='dali') on this GPU: decode (nvJPEG), crop, resize and
#     flip there, batches delivered as jax.Arrays; the same JPEGs, one and $(nproc) DALI threads. Only where
#     the host has nvidia-dali: its wheel (~200 MB) is too large to carry in .whl
if $PY -c "import nvidia.dali" 2>/dev/null; then
  section dali 60 "$PY" -m benchmarks.pipeline --skip_step --formats=dali --num_images=256 \
    --workdir=/tmp/mdistill-bench --workers=0,"$(nproc)" --batch=128 --batches=8 | tee "$DEST/pipeline_dali.jsonl"
else
  note dali "nvidia-dali is not installed on this host: the DALI input path was not timed"
fi
# 5. the token gathers of the masked step by indexing vs one-hot matmul (which to use here)
section gather 40 "$PY" -m benchmarks.gather --batch=256 --dtype=bfloat16 --rounds=30 | tee "$DEST/gather_b256.jsonl"
# 6. the step before (main's optimizer, tree), same session, if time is left
section step_tree 200 "$PY" -m benchmarks.step --models=B --methods=mae,dmae,amd "${B256[@]}" --steps=10 --warmup=2 \
  --optim_layout=tree --out="$DEST/step_tree_b256.jsonl"
echo "done in $(( $(date +%s) - START )) s; lines in $DEST"
