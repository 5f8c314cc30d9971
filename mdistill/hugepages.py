"""Back large host allocations with transparent huge pages (glibc's malloc tunable).

XLA:CPU allocates a step's outputs and temporaries afresh on every call, and glibc's malloc
serves blocks that large straight from mmap and returns them to the kernel when freed. So
each step touches its whole working set anew and the kernel zero-fills it 4 KiB at a time:
about 387,000 page faults per DMAE ViT-L -> ViT-B step at batch 8 on CPU, about 2 s
of kernel CPU time (benchmarks/RESULTS.md). With the tunable glibc.malloc.hugetlb=1 malloc
marks those blocks MADV_HUGEPAGE, the kernel backs them with 2 MiB pages, and the same step
takes about 1,100 faults and about 1 s of kernel CPU time.

Tunables are read once, when a process starts, so `ensure()` re-executes the interpreter
with the tunable added to GLIBC_TUNABLES (same PID, same arguments). The command-line
entry points call it first, before any large allocation. It does nothing off Linux/glibc, when the
kernel's transparent huge pages are off, when the tunable is already set, or when
MDISTILL_HUGEPAGES=0.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), '' if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def glibc_supports_tunable() -> bool:
    """glibc.malloc.hugetlb exists from glibc 2.35 on."""
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def wanted_environment(environ: dict, mode: str, glibc_ok: bool) -> dict | None:
    """The environment to re-execute with, or None when nothing should change."""
    if environ.get("MDISTILL_HUGEPAGES", "1") == "0":
        return None
    if not glibc_ok or mode not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables:  # set by the user, or by our own re-execution: never a second time
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def ensure() -> None:
    """Re-execute this process with huge-page malloc if it is available and not yet on."""
    if sys.platform != "linux" or not getattr(sys, "orig_argv", None):
        return
    env = wanted_environment(os.environ, thp_mode(), glibc_supports_tunable())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
