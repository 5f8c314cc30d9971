"""mdistill.hugepages: when it re-executes, with what environment, and that the re-executed
process really gets huge pages for a large allocation."""

import os
import subprocess
import sys

import pytest

from mdistill import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("environ, mode, glibc_ok, expected", [
    ({}, "madvise", True, "glibc.malloc.hugetlb=1"),
    ({}, "always", True, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "madvise", True,
     "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", True, None),  # the user's choice stands
    ({"MDISTILL_HUGEPAGES": "0"}, "madvise", True, None),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", True, None),  # never a second time
    ({}, "never", True, None),
    ({}, "", True, None),
    ({}, "madvise", False, None),
])
def test_wanted_environment(environ, mode, glibc_ok, expected):
    env = hugepages.wanted_environment(environ, mode, glibc_ok)
    if expected is None:
        assert env is None
    else:
        assert env["GLIBC_TUNABLES"] == expected
        assert all(env[k] == v for k, v in environ.items() if k != "GLIBC_TUNABLES")  # the rest kept


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(str(f)) == "always"
    assert hugepages.thp_mode(str(tmp_path / "missing")) == ""


SCRIPT = r"""
import os, sys
print("pid", os.getpid(), flush=True)
from mdistill import hugepages
hugepages.ensure()
import numpy as np
a = np.ones(256 << 20 >> 3)  # 256 MiB, from mmap
a += 1.0
huge = 0
with open("/proc/self/smaps_rollup") as f:
    for line in f:
        if line.startswith("AnonHugePages:"):
            huge = int(line.split()[1])
print("tunables", os.environ.get("GLIBC_TUNABLES", ""))
print("argv", sys.argv[1:])
print("huge_kb", huge)
"""


@pytest.mark.skipif(sys.platform != "linux" or hugepages.thp_mode() not in ("always", "madvise")
                    or not hugepages.glibc_supports_tunable(),
                    reason="needs Linux with transparent huge pages and glibc >= 2.35")
def test_ensure_reexecutes_once_and_large_allocations_get_huge_pages(tmp_path):
    # run as `python -m module args`, the way the command line is started
    (tmp_path / "hugepage_probe.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "hugepage_probe", "--some=arg"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "MDISTILL_HUGEPAGES")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split("\n")
    pids = [line for line in out if line.startswith("pid ")]
    assert len(pids) == 2 and pids[0] == pids[1], out  # printed before and after the exec: same process
    assert "tunables glibc.malloc.hugetlb=1" in out, out
    assert "argv ['--some=arg']" in out, out
    huge_kb = int(next(line for line in out if line.startswith("huge_kb")).split()[1])
    assert huge_kb >= 2048, out

    env["MDISTILL_HUGEPAGES"] = "0"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split("\n")
    assert len([line for line in out if line.startswith("pid ")]) == 1, out
    assert "tunables " in out, out
