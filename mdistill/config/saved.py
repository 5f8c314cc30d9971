"""A saved config (a checkpoint's meta, a run's config.json) as today's config.

Runs write their whole config; older runs lack the fields added since, and a field may be
renamed. upgrade() reads any of them into today's full config: every declared field, the
saved values where the run had them, and for a field it lacks the value that does what
that run did (today's default unless UNSAVED says otherwise). A saved field today's schema
does not declare is refused, naming it, rather than dropped in silence.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from mdistill.config.errors import ConfigError
from mdistill.config.schema import base_config

# Old dotted name -> today's, for saved configs written before a field was renamed.
RENAMED: dict[str, str] = {}

# Fields whose absence meant something other than today's default: the value that does
# what runs saved before the field existed did.
UNSAVED: dict[str, Any] = {
    "visualize_every": 0,  # before reconstruction grids were drawn by default: none
}
# The same for one method's runs only (other methods' sections are unused there).
UNSAVED_BY_METHOD: dict[str, dict[str, Any]] = {
    "amd": {"amd.train_mask_tokens": True},  # before the release's frozen generator mask tokens: trained
}


def upgrade(saved, where: str = "the saved config") -> ml_collections.ConfigDict:
    """Today's config (locked, as base_config()'s) holding what `saved` (a nested dict or a
    ConfigDict) says. `where` names the saved config in errors."""
    flat = _flatten(_plain(saved))
    for old, new in RENAMED.items():
        if old in flat:
            if new in flat:
                raise ConfigError(f"{where}: holds both {old!r} and {new!r} (its name since)")
            flat[new] = flat.pop(old)
    config = base_config()
    defaults = _flatten(config.to_dict())
    unknown = sorted(k for k in flat if k not in defaults)
    if unknown:
        raise ConfigError(f"{where}: field(s) {', '.join(unknown)} are not config fields of this version "
                          "(mdistill/config/schema.py, or an objective's section)")
    if "eval.train_split" not in flat and flat.get("data.source") == "fashion_mnist":
        # runs from before config.eval existed evaluated Fashion-MNIST on its own splits
        flat.update({"eval.train_split": "train", "eval.test_split": "test"})
    for field, value in {**UNSAVED, **UNSAVED_BY_METHOD.get(flat.get("method", "mae"), {})}.items():
        flat.setdefault(field, value)
    for field, value in flat.items():
        _set(config, field, _typed(value, defaults[field], f"{where}: {field}"))
    return config


def _plain(saved) -> dict:
    """A JSON-shaped copy (tuples as lists), whatever `saved` is."""
    if isinstance(saved, ml_collections.ConfigDict):
        saved = saved.to_dict()
    if not isinstance(saved, dict):
        raise ConfigError(f"a saved config must be a mapping of fields, not {type(saved).__name__}")
    return json.loads(json.dumps(saved))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _typed(value, default, where: str):
    """`value` in the type of the field's default: JSON's lists back to tuples (nested
    too), ints where a float is declared; anything else must already have the type."""
    if default is None:
        return value
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{where}={value!r} is a {type(value).__name__}, but the field is a "
                          f"{type(default).__name__} (default {default!r})")
    return value


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value
