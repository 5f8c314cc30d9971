"""One file per method. Each objective builds its models from the config and exposes
init(rng, images) -> trainable params and
loss(params, teacher_params, images, rng) -> (loss, metrics)."""

from mdistill.objectives.dmae import DMAEObjective
from mdistill.objectives.mae import MAEObjective

OBJECTIVES = {"mae": MAEObjective, "dmae": DMAEObjective}


def build_objective(config):
    if config.method not in OBJECTIVES:
        raise ValueError(f"config.method={config.method!r}: expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[config.method](config)
