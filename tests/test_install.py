"""What `pip install` is told (pyproject.toml) admits the newest JAX and names the accelerator
plugins; scripts/setup_env.sh picks the newest Python for the venv. No network: the
requirements are read, not resolved (the README's Install records the resolutions)."""

import importlib.metadata
import os
import shutil
import subprocess
import textwrap
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the newest JAX release when the range was last widened (pip download, Python 3.12)
NEWEST_JAX = "0.12.0.1"


@pytest.fixture(scope="module")
def project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def requirements(reqs):
    return {r.name.lower(): r for r in map(Requirement, reqs)}


def test_the_jax_range_admits_the_newest_release_and_the_installed_one(project):
    jax = requirements(project["dependencies"])["jax"]
    assert jax.specifier.contains(NEWEST_JAX), jax
    installed = importlib.metadata.version("jax")
    assert jax.specifier.contains(installed), (installed, jax)
    assert jax.specifier.contains(importlib.metadata.version("jaxlib")), jax


def test_every_installed_dependency_is_in_its_range(project):
    """The venv pip made from these ranges is a consistent set (flax, optax, orbax, grain...)."""
    for name, req in requirements(project["dependencies"]).items():
        version = importlib.metadata.version(name)
        assert req.specifier.contains(version, prereleases=True), (name, version, str(req))


def test_python_requirement_admits_3_11_to_the_newest(project):
    spec = Requirement("python" + project["requires-python"]).specifier
    assert all(spec.contains(v) for v in ["3.11.0", "3.12.1", "3.13.0"])
    assert not spec.contains("3.10.12")


def test_the_cuda_extra_is_jax_with_its_cuda13_plugin(project):
    [req] = map(Requirement, project["optional-dependencies"]["cuda"])
    assert req.name == "jax" and req.extras == {"cuda13"}, req
    jax = requirements(project["dependencies"])["jax"]
    # the plugin exists from JAX 0.7.2 on; the extra admits the newest JAX the base range does
    assert not req.specifier.contains("0.7.1") and req.specifier.contains(NEWEST_JAX)
    assert jax.specifier.contains(NEWEST_JAX)


def test_the_tpu_extra_is_jax_with_libtpu(project):
    [req] = map(Requirement, project["optional-dependencies"]["tpu"])
    assert req.name == "jax" and req.extras == {"tpu"}, req
    assert req.specifier.contains(NEWEST_JAX)


def fake_python(folder, name, minor):
    """An executable that answers setup_env.sh's version question; minor None: a pyenv shim of
    a version that is not selected (found on PATH, fails when run)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + ("exit 127\n" if minor is None else f"echo {minor}\n"))
    os.chmod(path, 0o755)
    return path


def find_python(tmp_path, *args, path_dirs=(), pyenv_root=None):
    bin_dir = tmp_path / ("bin-pyenv" if pyenv_root else "bin")
    bin_dir.mkdir(exist_ok=True)
    if pyenv_root:
        with open(bin_dir / "pyenv", "w") as f:
            f.write(f"#!/bin/sh\necho {pyenv_root}\n")
        os.chmod(bin_dir / "pyenv", 0o755)
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), str(bin_dir)]), "HOME": str(tmp_path)}  # no system Python
    script = textwrap.dedent(f"""
        source scripts/setup_env.sh
        mdistill_find_python {' '.join(args)}
    """)
    out = subprocess.run([shutil.which("bash"), "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_setup_env_picks_the_newest_python_that_runs(tmp_path):
    path = tmp_path / "path"
    fake_python(path, "python3.13", None)  # a shim that does not run
    fake_python(path, "python3.12", 12)
    fake_python(path, "python3", 11)
    assert find_python(tmp_path, "12", path_dirs=[path]) == str(path / "python3.12")
    # pyenv's installed versions count, a newer one wins
    root = tmp_path / "pyenv"
    fake_python(root / "versions/3.13.0/bin", "python3.13", 13)
    fake_python(root / "versions/3.11.7/bin", "python3.11", 11)
    newest = find_python(tmp_path, "12", path_dirs=[path], pyenv_root=root)
    assert newest == str(root / "versions/3.13.0/bin/python3.13")
    # a range: the torch stage asks for the wheel's 3.11 exactly; python3 is the last resort
    in_range = find_python(tmp_path, "11", "11", path_dirs=[path], pyenv_root=root)
    assert in_range == str(root / "versions/3.11.7/bin/python3.11")
    assert find_python(tmp_path, "11", "11", path_dirs=[path]) == str(path / "python3")
    assert find_python(tmp_path, "14", path_dirs=[path], pyenv_root=root) is None
