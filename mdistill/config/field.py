"""One config field's declaration, apart from the schema so that an objective can declare its
section's fields without importing the schema (which lists the objectives)."""

from __future__ import annotations

from typing import Any, NamedTuple

RESUMABLE = True  # a Field's 4th element, spelt out


class Field(NamedTuple):
    name: str      # dotted: 'data.source' (in an objective's `fields`: the name within its section)
    default: Any   # also the field's type (ml_collections keeps it)
    meaning: str   # one line
    # may differ between a run and its resumption: alters neither the model, the optimizer nor
    # the data order (mdistill.weights.checkpoint.config_changes)
    resumable: bool = False
