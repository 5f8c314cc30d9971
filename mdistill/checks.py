"""The one form of a config error: the field, its value and what is allowed.

mdistill.validation checks the shared fields; each objective checks its own
(mdistill.objectives.base.Objective.validate) with the same helpers."""

from __future__ import annotations

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
