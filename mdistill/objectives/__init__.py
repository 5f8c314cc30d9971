"""One file per method (distill.py holds what the teacher-student ones share). Each is an
Objective (base.py: the interface, written down) and OBJECTIVES is the only list of methods:
the config defaults, the validation, the FLOP model, --dry_run and benchmarks/step.py all
read it. A new method is one file here, one line below (or register()), and one config."""

from mdistill.objectives.amd import AMDObjective
from mdistill.objectives.base import Objective
from mdistill.objectives.dmae import DMAEObjective
from mdistill.objectives.mae import MAEObjective
from mdistill.objectives.tinymim import TinyMIMObjective

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MAEObjective, DMAEObjective, AMDObjective,
                                                                    TinyMIMObjective)}


def register(cls: type[Objective]) -> type[Objective]:
    """Add a method (config.method = cls.name); usable as a class decorator."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute 'name' (its config.method)")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_class(config) -> type[Objective]:
    if config.method not in OBJECTIVES:
        raise ValueError(f"config.method={config.method!r}: expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[config.method]


def build_objective(config) -> Objective:
    return objective_class(config)(config)


__all__ = ["OBJECTIVES", "AMDObjective", "DMAEObjective", "MAEObjective", "Objective", "TinyMIMObjective",
           "build_objective", "objective_class", "register"]
