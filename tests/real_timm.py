"""timm itself, for the tests that check mdistill's timm-layout import and export against the
real VisionTransformer. tests/run.sh installs timm 0.9.16 without its dependencies: PyPI's
torchvision is a CUDA build that does not load beside the CPU wheel of torch, and timm imports
torchvision only for its data transforms, batch-norm helpers and hub code, none of which a
VisionTransformer's construction, forward or load_state_dict touches. So when torchvision
cannot be imported, a stand-in module answers timm's imports with inert placeholder classes.
benchmarks/official_dmae.py uses the same stand-in for the official release's timm 0.4.9."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (InterpolationMode.NEAREST)."""

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return placeholder(attr)


def placeholder(name: str) -> type:
    return _Placeholder(name, (), {"__init__": lambda self, *args, **kwargs: None})


class TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import torchvision[.x]` with modules whose attributes are placeholders."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: placeholder(attr) if not attr.startswith("__") else None
        return module

    def exec_module(self, module):
        pass


def install_torchvision_stand_in() -> bool:
    """Make `import torchvision` succeed; True when the stand-in was needed."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:  # ImportError, or a build whose operators fail to register
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if not any(isinstance(f, TorchvisionStandIn) for f in sys.meta_path):
            sys.meta_path.insert(0, TorchvisionStandIn())
        return True


def import_timm():
    """The timm module, or skip the test when timm (or torch) is not installed."""
    import pytest

    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            pytest.skip(f"could not import 'timm': {e}")
        install_torchvision_stand_in()
    timm = pytest.importorskip("timm")
    from timm.models import vision_transformer  # noqa: F401  (the attribute the tests use)

    return timm
