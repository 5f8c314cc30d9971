# shellcheck shell=bash
# Set-up shared by demo.sh and tests/run.sh. Source it from the repository root; it defines
# functions only:
#
#   mdistill_setup_venv SPEC MODULE...  create .venv if missing (Python >= 3.11; $PYTHON,
#                                       default python3), activate it, and run
#                                       `pip install -q -e SPEC` unless every MODULE imports
#                                       and pyproject.toml is not newer than the stamp file
#                                       .venv/.mdistill-installed
#   mdistill_install_torch              install PyTorch (the optional 'torch' extra, for .pth
#                                       checkpoints) into the active venv from the local CPU
#                                       wheel torch-2.13.0+cpu, if it is not importable and
#                                       that wheel is in $PIP_FIND_LINKS (default /opt/wheels);
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
    mdistill_die "'$py' is Python $version; mdistill needs Python >= 3.11 (point PYTHON at one, e.g. PYTHON=python3.11, and delete any old .venv)"
}

mdistill_setup_venv() {
  local spec=$1 stamp=.venv/.mdistill-installed python=${PYTHON:-python3}
  shift
  if [[ ! -f .venv/bin/activate ]]; then
    mdistill_check_python "$python"
    echo "Creating .venv with $(command -v "$python") ..."
    if ! "$python" -m venv .venv; then
      rm -rf .venv
      mdistill_die "'$python -m venv .venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
  fi
  # shellcheck disable=SC1091  # created above
  source .venv/bin/activate
  mdistill_check_python python

  local imports
  imports=$(IFS=,; echo "$*")
  if [[ -f $stamp && ! pyproject.toml -nt $stamp ]] && python -c "import $imports" >/dev/null 2>&1; then
    return 0
  fi
  echo "Installing mdistill ('pip install -e $spec') into .venv ..."
  if ! pip install -q -e "$spec" >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    mdistill_die "'pip install -e $spec' failed (log above, also in .venv/pip-install.log)"
  fi
  touch "$stamp"
}

mdistill_install_timm() {
  python -c "import torch" >/dev/null 2>&1 || return 1
  python -c "import timm" >/dev/null 2>&1 && return 0
  python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('timm') is None)" && return 0
  pip install -q --no-deps "timm==0.9.16" >.venv/pip-timm.log 2>&1 || {
    echo "timm install failed (log: .venv/pip-timm.log)" >&2
    return 1
  }
}

mdistill_install_torch() {
  python -c "import torch" >/dev/null 2>&1 && return 0
  local dir=${PIP_FIND_LINKS:-/opt/wheels}
  compgen -G "$dir/torch-2.13.0+cpu-*.whl" >/dev/null || return 1
  echo "Installing PyTorch 2.13.0+cpu from $dir for the checkpoint-conversion tests ..."
  # the +cpu pin matches only the local wheel (pip picks the one for this Python); its
  # dependencies come from the index as usual
  pip install -q --find-links "$dir" "torch==2.13.0+cpu" >.venv/pip-torch.log 2>&1 || {
    echo "PyTorch install failed (log: .venv/pip-torch.log)" >&2
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
