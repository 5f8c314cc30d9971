"""Every test process sees 8 simulated CPU devices, so sharded steps are tested for real.
Processes started by the tests take their XLA_FLAGS from xla_flags(devices).

Compiled executables go to a persistent cache (in .pytest_cache/, shared with the training
processes the tests start): many tests compile the same small steps, and reading one back
takes a fraction of compiling it again."""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA:CPU compiles about a quarter faster without LLVM's optimisations, and compiling is most
# of what the tests do; their tiny models run fine unoptimised. Every process the tests start
# gets the same flags (xla_flags), so results compared across processes come from the same code.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with `devices` simulated CPU devices."""
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# The longest files first, so that with pytest-xdist (tests/run.sh) they do not start last
# and leave one worker running alone at the end.
LONGEST_FILES = ("test_multihost.py", "test_fault_tolerance.py", "test_notebook.py", "test_reliability.py",
                 "test_train.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: order kept within files


# Two tiers (tests/README.md): a test that takes more than a few seconds (a training run, a
# CLI or other subprocess, the notebook, multi-host) is marked `slow`; `-m "not slow"` is the
# fast tier. At the end of any run, the unmarked tests that took longer than SLOW_TEST_S
# (set-up, module fixtures included) are listed, slowest first, as candidates for the mark:
# listed, never failed, since a loaded machine makes any fast test slow now and then.
SLOW_TEST_S = float(os.environ.get("MDISTILL_SLOW_TEST_S", "3"))
_unmarked_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if "slow" not in report.keywords:
        _unmarked_seconds[report.nodeid] = _unmarked_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    over = sorted(((s, nodeid) for nodeid, s in _unmarked_seconds.items() if s > SLOW_TEST_S), reverse=True)
    if not over:
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    terminalreporter.section(f"tests without the slow mark over {SLOW_TEST_S:g} s (load average {load:.1f})")
    for seconds, nodeid in over[:15]:
        terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")
    if len(over) > 15:
        terminalreporter.write_line(f"... and {len(over) - 15} more")
    terminalreporter.write_line("mark them @pytest.mark.slow, or make them faster (tests/README.md)")
