"""Configs: one declared schema (schema.py: every field, its default, its meaning and whether
a resume may change it; field.py: one field's declaration), what config files share
(presets.py), the errors that name a field (errors.py), the checks run before anything
compiles (validation.py, imported as mdistill.config.validation) and upgrade(), which reads
any saved config as today's (saved.py)."""

from mdistill.config.errors import ConfigError, get, require, take, variant
from mdistill.config.presets import apply_smoke, fashion_mnist, parse_arg
from mdistill.config.schema import FIELDS, IMAGENET_MEAN, IMAGENET_STD, Field, base_config, meaning
from mdistill.config.saved import upgrade

__all__ = ["FIELDS", "IMAGENET_MEAN", "IMAGENET_STD", "ConfigError", "Field", "apply_smoke", "base_config",
           "fashion_mnist", "get", "meaning", "parse_arg", "require", "take", "upgrade", "variant"]
