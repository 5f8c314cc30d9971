"""The one form of a config error: the field, its value and what is allowed.

mdistill.config.validation checks the shared fields; each objective checks its own
(mdistill.objectives.base.Objective.validate) with the same helpers."""

from __future__ import annotations

import contextlib

import ml_collections

from mdistill.models.vit import ViTSpec


class ConfigError(ValueError):
    pass


def require(ok: bool, field: str, value, allowed: str) -> None:
    """Raise ConfigError for config.<field>=<value> unless `ok`; `allowed` says what is."""
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def variant(field: str, value: str) -> ViTSpec:
    """The ViT a config field names, or a ConfigError naming the field."""
    try:
        return ViTSpec.parse(value)
    except ValueError as e:
        raise ConfigError(f"config.{field}: {e}") from None


# ---- a field that a checkpoint or the data also says (mdistill.resolve) ----------------------
def get(config, field: str, default=None):
    """config.<field> for a dotted field ('data.path'), or `default` where it is absent."""
    node = config
    for name in field.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
            return default
        node = node[name]
    return node


def _set(config, field: str, value) -> None:
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    with node.unlocked() if isinstance(node, ml_collections.ConfigDict) else contextlib.nullcontext():
        node[leaf] = value


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _same(x, y) for x, y in zip(a, b))
    return a == b


def take(config, field: str, value, source: str, explicit: set[str], what: str = "") -> bool:
    """Set config.<field> to what `source` says, unless the user set it: then it must agree.
    Returns whether the value changed."""
    current = get(config, field)
    if _same(current, value):
        return False
    if field in explicit:
        raise ConfigError(f"--config.{field}={current!r} disagrees with {source}, which says {value!r}"
                          f"{' (' + what + ')' if what else ''}: drop the flag to take it from there")
    _set(config, field, value)
    return True
