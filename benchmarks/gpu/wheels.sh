#!/usr/bin/env bash
# Run here (a machine with PyPI), in the repository root, before benchmarks/gpu/run.sh goes to a
# GPU host that cannot reach PyPI: the wheels of what mdistill needs beyond the GPU image's
# packages (JAX with CUDA, flax, optax, orbax, PyTorch, Pillow, absl are there), for its Python
# 3.12 on x86-64, into .whl/ (about 15 MB; ignored by git through .git/info/exclude).
# timm 0.4.9 (the official DMAE release's) goes to .whl/timm049/, apart: only
# benchmarks/official_dmae.py puts it on its path.
set -euo pipefail
exclude=$(git rev-parse --git-path info/exclude)
for p in /.whl/ /.dmae/; do grep -qx "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          "${platforms[@]}" -d "$@"; }
get .whl ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 simplejpeg==1.9.0 tensorboardX==2.6.5 portpicker==1.6.0 \
    importlib_resources zipp
get .whl/timm049 timm==0.4.9
ls -la .whl .whl/timm049
