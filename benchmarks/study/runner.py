"""Running a study's steps: mdistill's own commands from the repository root, each logged
to a file, and what a record says about the code and the encoders it came from."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.study import ROOT


def revision(outputs: tuple[str, ...]) -> tuple[str, list[str]]:
    """The code's git revision ('+dirty' when tracked files differ from it) and those files;
    a study's own outputs (paths from the repository root) do not count."""
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\n")
    dirty = sorted(line[3:] for line in dirty if line.strip() and not line[3:].startswith(tuple(outputs)))
    return (rev.stdout.strip() or "unknown") + ("+dirty" if dirty else ""), dirty


def execute(cmd: list[str], log_path: str) -> float:
    """Run a command from the repository root, its output appended to log_path; seconds."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
    return time.time() - t0


def params_digest(workdir: str) -> str:
    """sha256 of the encoder's parameters in the run's latest checkpoint."""
    from mdistill.weights import checkpoint
    from mdistill.evaluate.common import encoder_params

    params, _ = checkpoint.load_params(workdir, None)
    h = hashlib.sha256()
    for leaf in _leaves(encoder_params(params)):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def _leaves(tree):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k])
    else:
        yield tree


def environment() -> dict:
    import jax

    # the CPU too: XLA compiles for the host's instruction set, so a teacher trained again on
    # another CPU model need not be bit-identical
    return {"jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu": cpu_model()}


def cpu_model() -> str:
    """The host CPU's model name and whether it has AVX-512 (Linux; '' where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return f"{name}{', avx512' if ' avx512f' in info else ''}"
