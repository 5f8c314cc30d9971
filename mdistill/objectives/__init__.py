"""One file per method (distill.py holds what the teacher-student ones share). Each
objective builds its models from the config and exposes
init(rng, images) -> trainable params and
loss(params, teacher_params, images, rng) -> (loss, metrics)."""

from mdistill.objectives.amd import AMDObjective
from mdistill.objectives.dmae import DMAEObjective
from mdistill.objectives.mae import MAEObjective

OBJECTIVES = {"mae": MAEObjective, "dmae": DMAEObjective, "amd": AMDObjective}


def build_objective(config):
    if config.method not in OBJECTIVES:
        raise ValueError(f"config.method={config.method!r}: expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[config.method](config)
