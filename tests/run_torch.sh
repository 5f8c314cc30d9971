#!/usr/bin/env bash
# The tests that need PyTorch: bash tests/run_torch.sh [pytest arguments]
#
# The checkpoint-conversion and timm/VideoMAE parity tests compare against PyTorch, whose
# local CPU wheel ($PIP_FIND_LINKS, default /opt/wheels: torch-2.13.0+cpu) is built for one
# Python only (3.11 here), while tests/run.sh's .venv takes the newest Python, where they
# skip. So this makes a second venv, .venv-torch, with the Python the wheel is built for
# (found as scripts/setup_env.sh's mdistill_find_python does; MDISTILL_TORCH_PYTHON
# overrides it; PYTHON, tests/run.sh's, is ignored here), installs mdistill's test extras, that torch wheel and timm 0.9.16
# into it (scripts/setup_env.sh), and runs only the test files that need torch: those that
# call pytest.importorskip("torch") (test_convert.py, test_timm_teachers.py, test_videomae.py
# and others), whole, with two pytest-xdist workers (MDISTILL_TEST_WORKERS) as tests/run.sh
# does. It fails when torch cannot be installed, rather than skipping.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

wheels=${PIP_FIND_LINKS:-/opt/wheels}
PYTHON=${MDISTILL_TORCH_PYTHON:-}
if [[ -z $PYTHON ]]; then
  # torch-2.13.0+cpu-cp311-cp311-...whl -> 11
  wheel=$(compgen -G "$wheels/torch-2.13.0+cpu-cp3*.whl" | head -n 1) ||
    mdistill_die "no torch-2.13.0+cpu wheel in $wheels (set PIP_FIND_LINKS to its folder)"
  minor=${wheel##*-cp3}
  minor=${minor%%-*}
  PYTHON=$(mdistill_find_python "$minor" "$minor") ||
    mdistill_die "no Python 3.$minor for $wheel (set MDISTILL_TORCH_PYTHON to one)"
fi
export PYTHON
MDISTILL_VENV=.venv-torch
mdistill_setup_venv '.[test]' mdistill pytest xdist
mdistill_install_torch || mdistill_die "PyTorch could not be installed into $MDISTILL_VENV"
mdistill_install_timm || mdistill_die "timm could not be installed into $MDISTILL_VENV"

mapfile -t files < <(grep -l 'importorskip("torch")' tests/test_*.py)
(( ${#files[@]} )) || mdistill_die "no test file calls pytest.importorskip(\"torch\")"
echo "PyTorch tests on $(python --version): ${files[*]}"
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
exec python -m pytest -q -n "${MDISTILL_TEST_WORKERS:-2}" --dist loadfile "${files[@]}" "$@"
