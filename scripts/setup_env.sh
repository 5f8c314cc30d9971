# shellcheck shell=bash
# Set-up shared by demo.sh, tests/run.sh and tests/run_torch.sh. Source it from the
# repository root; it defines functions only:
#
#   mdistill_find_python MIN [MAX]      print the newest Python 3.MIN..3.MAX (MAX default 99)
#                                       that runs: python3.N on PATH, then pyenv's
#                                       $(pyenv root)/versions/3.N*/bin/python3.N, then
#                                       python3; fail when none is in range
#   mdistill_setup_venv SPEC MODULE...  create the venv $MDISTILL_VENV (default .venv), with
#                                       $PYTHON when set, else the newest Python >= 3.12
#                                       found (the newest JAX needs 3.12), else python3
#                                       (>= 3.11); recreate it when it was made by another
#                                       Python 3.x than that one, or by one that is gone;
#                                       activate it, and run `pip install -q -e SPEC` unless
#                                       every MODULE imports and pyproject.toml is not newer
#                                       than the stamp file $MDISTILL_VENV/.mdistill-installed
#   mdistill_install_torch              install PyTorch (the optional 'torch' extra, for .pth
#                                       checkpoints) into the active venv from the local CPU
#                                       wheel torch-2.13.0+cpu, if it is not importable and
#                                       that wheel, built for the venv's Python, is in
#                                       $PIP_FIND_LINKS (default /opt/wheels);
#                                       never from an index, which would bring the CUDA build
#   mdistill_install_timm               install timm 0.9.16 without its dependencies (the tests
#                                       check timm-layout import and export against its
#                                       VisionTransformer; tests/real_timm.py stands in for
#                                       torchvision, whose PyPI build does not load beside the
#                                       CPU torch), if torch is importable and timm is not
#   mdistill_apt_install PACKAGE...     apt-get install the Debian packages when we are root
#                                       (apt-get update once first); fail otherwise
#   mdistill_fmnist_ready               succeed when the Fashion-MNIST IDX files are in
#                                       $MDISTILL_FMNIST_DIR (default: where Debian's
#                                       dataset-fashion-mnist puts them), installing that
#                                       package with apt-get first when they are missing and
#                                       we are root

MDISTILL_VENV=${MDISTILL_VENV:-.venv}
MDISTILL_FMNIST_DIR=${MDISTILL_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
MDISTILL_FMNIST_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
                       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

mdistill_die() {
  echo "error: $*" >&2
  exit 1
}

# mdistill_check_python PYTHON: exit with a clear message unless PYTHON runs and is >= 3.11.
mdistill_check_python() {
  local py=$1 version
  command -v "$py" >/dev/null 2>&1 || mdistill_die "'$py' not found; mdistill needs Python >= 3.11"
  version=$("$py" -c 'import platform; print(platform.python_version())' 2>/dev/null) ||
    mdistill_die "'$py' does not run (a .venv made by a Python that is gone? delete .venv and rerun)"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    mdistill_die "'$py' is Python $version; mdistill needs Python >= 3.11 (point PYTHON at one, e.g. PYTHON=python3.12)"
}

# mdistill_python_minor PYTHON: print PYTHON's 3.x minor version; fail if it does not run.
mdistill_python_minor() {
  "$1" -c 'import sys; assert sys.version_info[0] == 3; print(sys.version_info[1])' 2>/dev/null
}

mdistill_find_python() {
  local min=$1 max=${2:-99} py minor best="" best_minor=-1 root="" dir
  local candidates=()
  for ((minor = max < 20 ? max : 20; minor >= min; minor--)); do
    candidates+=("python3.$minor")
  done
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root 2>/dev/null) || root=""
  fi
  if [[ -n $root ]]; then
    for dir in "$root"/versions/3.*; do
      minor=${dir##*/versions/3.}
      minor=${minor%%[!0-9]*}
      [[ -n $minor ]] && candidates+=("$dir/bin/python3.$minor")
    done
  fi
  candidates+=(python3)
  for py in "${candidates[@]}"; do
    # a pyenv shim of a version that is not selected is on PATH but does not run
    command -v "$py" >/dev/null 2>&1 || continue
    minor=$(mdistill_python_minor "$py") || continue
    if (( minor >= min && minor <= max && minor > best_minor )); then
      best=$py best_minor=$minor
    fi
  done
  [[ -n $best ]] || return 1
  command -v "$best"
}

mdistill_setup_venv() {
  local spec=$1 venv=$MDISTILL_VENV stamp=$MDISTILL_VENV/.mdistill-installed python=${PYTHON:-}
  shift
  if [[ -z $python ]]; then
    python=$(mdistill_find_python 12) || python=python3
  fi
  if [[ -f $venv/bin/activate ]]; then
    local have want
    have=$(mdistill_python_minor "$venv/bin/python") || have=""
    want=$(mdistill_python_minor "$python") || want=""
    if [[ -n $want && $have != "$want" ]]; then
      echo "Recreating $venv with Python 3.$want (it was made by ${have:+Python 3.}${have:-a Python that no longer runs}) ..."
      rm -rf "$venv"
    fi
  fi
  if [[ ! -f $venv/bin/activate ]]; then
    mdistill_check_python "$python"
    echo "Creating $venv with $(command -v "$python") ..."
    if ! "$python" -m venv "$venv"; then
      rm -rf "$venv"
      mdistill_die "'$python -m venv $venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
  fi
  # shellcheck disable=SC1091  # created above
  source "$venv/bin/activate"
  mdistill_check_python python

  local imports
  imports=$(IFS=,; echo "$*")
  if [[ -f $stamp && ! pyproject.toml -nt $stamp ]] && python -c "import $imports" >/dev/null 2>&1; then
    return 0
  fi
  echo "Installing mdistill ('pip install -e $spec') into $venv ..."
  if ! pip install -q -e "$spec" >"$venv/pip-install.log" 2>&1; then
    cat "$venv/pip-install.log" >&2
    mdistill_die "'pip install -e $spec' failed (log above, also in $venv/pip-install.log)"
  fi
  touch "$stamp"
}

mdistill_install_timm() {
  python -c "import torch" >/dev/null 2>&1 || return 1
  python -c "import timm" >/dev/null 2>&1 && return 0
  python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('timm') is None)" && return 0
  pip install -q --no-deps "timm==0.9.16" >"$MDISTILL_VENV/pip-timm.log" 2>&1 || {
    echo "timm install failed (log: $MDISTILL_VENV/pip-timm.log)" >&2
    return 1
  }
}

mdistill_install_torch() {
  python -c "import torch" >/dev/null 2>&1 && return 0
  local dir=${PIP_FIND_LINKS:-/opt/wheels} tag
  tag=cp3$(mdistill_python_minor python) || return 1
  compgen -G "$dir/torch-2.13.0+cpu-$tag-*.whl" >/dev/null || return 1  # none for this Python
  echo "Installing PyTorch 2.13.0+cpu from $dir for the checkpoint-conversion tests ..."
  # the +cpu pin matches only the local wheel (pip picks the one for this Python); its
  # dependencies come from the index as usual
  pip install -q --find-links "$dir" "torch==2.13.0+cpu" >"$MDISTILL_VENV/pip-torch.log" 2>&1 || {
    echo "PyTorch install failed (log: $MDISTILL_VENV/pip-torch.log)" >&2
    return 1
  }
}

MDISTILL_APT_UPDATED=
mdistill_apt_install() {
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
  if [[ -z $MDISTILL_APT_UPDATED ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    MDISTILL_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

mdistill_fmnist_missing() {
  local f
  for f in "${MDISTILL_FMNIST_FILES[@]}"; do
    [[ -f $MDISTILL_FMNIST_DIR/$f ]] || return 0
  done
  return 1
}

mdistill_fmnist_ready() {
  mdistill_fmnist_missing || return 0
  if [[ $(id -u) -eq 0 ]]; then
    echo "Fashion-MNIST is not in $MDISTILL_FMNIST_DIR: installing Debian's dataset-fashion-mnist ..."
    mdistill_apt_install dataset-fashion-mnist || echo "warning: apt-get could not install dataset-fashion-mnist" >&2
  fi
  ! mdistill_fmnist_missing
}
