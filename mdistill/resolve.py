"""What a run, a checkpoint or the data already says, filled into a config before it is
validated, so that no entry point asks for it again.

- A teacher's architecture is its checkpoint's: config.teacher.variant follows it (and the
  DMAE projection's sizes follow the widths).
- An evaluation of a pre-training run (the linear probe, fine-tuning) takes the run's model
  (variant, image size, channels, frames) and its data (source, location, splits,
  normalisation) from the run's saved config; a converted release gives its architecture.
- The class count of a classifier is the data's.

`explicit` names the fields the user set on the command line (dotted, e.g.
'teacher.variant'): where one of them disagrees with what the checkpoint or the data says,
the run is refused in one line; a command-line data field replaces the run's data (an
evaluation on other data). The values of a config file are defaults that a checkpoint
replaces (logged)."""

from __future__ import annotations

import os

from mdistill.config import ConfigError, get, take, upgrade
from mdistill.metrics import log
from mdistill.models.vit import variant_name

# What a pre-training run says about its model, and about its data, for its evaluations.
MODEL_FIELDS = ("student.variant", "image_size", "num_frames", "tubelet_size", "data.channels")
DATA_FIELDS = ("data.source", "data.name", "data.path", "data.data_dir", "data.video_key", "data.mean", "data.std",
               "data.sampling_rate", "data.root", "eval.train_split", "eval.test_split")


def explicit_fields(overrides: dict, prefix: str = "") -> set[str]:
    """{'a.b', ...} of ml_collections' nested override values (config_flags.get_override_values)."""
    out = set()
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            out |= explicit_fields(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


# ---- the teacher ----------------------------------------------------------------------------
def teacher(config, explicit: set[str] = frozenset()) -> None:
    """config.teacher.variant from config.teacher.checkpoint's architecture (a method
    without a teacher, or no checkpoint: nothing to do); the DMAE projection's sizes follow."""
    from mdistill.weights import loader
    from mdistill.weights.checkpoint import CheckpointError
    from mdistill.objectives import OBJECTIVES

    objective = OBJECTIVES.get(config.method)
    path = config.teacher.checkpoint
    if objective is None or not objective.uses_teacher or not path:
        return
    try:
        arch = loader.architecture(path)
    except (ValueError, ImportError, OSError) as e:  # unreadable, unsupported, no torch for a .pth
        raise CheckpointError(f"config.teacher.checkpoint: {e}") from e
    spec = arch.spec
    name = variant_name(spec.width, spec.depth, spec.num_heads, spec.patch_size)
    before = config.teacher.variant
    if take(config, "teacher.variant", name, f"config.teacher.checkpoint {path}", explicit, arch.describe()):
        log(f"teacher: {path} holds a {name} encoder ({arch.describe()}); config.teacher.variant {before!r} -> "
            f"{name!r}")
    objective.follow_teacher(config, explicit)


# ---- evaluations of a pre-training run -----------------------------------------------------------
def pretrained_run(config, explicit: set[str] = frozenset()) -> None:
    """The model and data fields of config.pretrained's run (see the module's docstring).
    A field the user set on the command line wins for data, and must agree for the model."""
    path = config.pretrained
    if not path:
        return
    from mdistill.weights import loader
    from mdistill.weights.checkpoint import CheckpointError, load_shapes

    try:
        if os.path.isfile(path):
            meta = {"architecture": loader.architecture(path).to_json()}
        else:
            _, meta = load_shapes(path)
    except (ValueError, ImportError, OSError) as e:
        raise CheckpointError(f"config.pretrained: {e}") from e
    source = f"config.pretrained {path}"
    changed = []
    if "config" in meta:  # an mdistill run: its model and its data
        run = upgrade(meta["config"], f"{source}'s config")
        for field in MODEL_FIELDS:
            if take(config, field, get(run, field), source, explicit):
                changed.append(field)
        for field in DATA_FIELDS:  # the run's data, where the command line names none
            if field not in explicit and take(config, field, get(run, field), source, set()):
                changed.append(field)
    elif "architecture" in meta:  # a converted release: its architecture only
        a = meta["architecture"]
        values = {"student.variant": variant_name(a["width"], a["depth"], a["num_heads"], a["patch_size"]),
                  "image_size": a["image_size"], "data.channels": a["channels"]}
        for field, value in values.items():
            if take(config, field, value, source, explicit):
                changed.append(field)
    if changed:
        log(f"from {path}: " + ", ".join(f"{f}={get(config, f)!r}" for f in changed))


def num_classes(config, counted: int, where: str, explicit: set[str] = frozenset()) -> None:
    """config.num_classes from the data (`counted` classes in `where`) when it is 0; a value
    that disagrees is refused."""
    given = int(config.num_classes)
    if given and given != counted:
        flag = "--config.num_classes" if "num_classes" in explicit else "config.num_classes"
        raise ConfigError(f"{flag}={given} but {where} has {counted} classes: set it to {counted}, or to 0 to "
                          "read it from the data")
    if not given:
        config.num_classes = counted
        log(f"num_classes={counted}, from {where}")
