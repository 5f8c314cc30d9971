#!/usr/bin/env bash
# The tests: bash tests/run.sh [pytest arguments]
#
# Creates .venv if missing (with $PYTHON, default the newest Python >= 3.12 found, else
# python3 >= 3.11; an existing .venv of another Python 3.x is recreated: see
# scripts/setup_env.sh), installs mdistill with its test extras and, where its Python has
# one, PyTorch's local CPU wheel (for the checkpoint-conversion tests, which skip without it;
# bash tests/run_torch.sh runs them in .venv-torch on the wheel's Python; .ci/run runs both),
# installs Debian's dataset-fashion-mnist when the files are
# missing and we are root (tests that need the real data skip without it), and shellcheck
# likewise (the shell-script lint test skips without it), then runs
# `python -m pytest -q -n 2 --dist loadfile tests "$@"`: two pytest-xdist workers, each
# test file on one of them (module fixtures are built once). Most of the suite's time is
# single-threaded (XLA compiling, processes starting), so two workers share 2 cores well;
# MDISTILL_TEST_WORKERS sets their number (0: no workers, everything in this process).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup_env.sh
source scripts/setup_env.sh

mdistill_setup_venv '.[test]' mdistill pytest xdist nbclient matplotlib
mdistill_install_torch ||
  echo "PyTorch not installed for $(python --version): the tests that need it will be skipped here;" \
       "bash tests/run_torch.sh runs them"
mdistill_install_timm ||
  echo "timm not installed: the checks against timm's own VisionTransformer will be skipped here"
mdistill_fmnist_ready ||
  echo "Fashion-MNIST not in $MDISTILL_FMNIST_DIR: tests that need the real data will be skipped"

command -v shellcheck >/dev/null 2>&1 || mdistill_apt_install shellcheck ||
  echo "shellcheck not installed: tests/test_launch.py's lint of the shell scripts will be skipped"

# huge-page malloc for the test processes and the CLI runs they start, set once here so that
# each `python -m mdistill.main` does not re-execute itself for it (mdistill/hugepages.py)
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
exec python -m pytest -q -n "${MDISTILL_TEST_WORKERS:-2}" --dist loadfile tests "$@"
