"""A study's plan: the runs it makes, in order, each named and identified by its settings
(what its results.json record must match to count as done; see cache.is_recorded)."""

from __future__ import annotations

import math
import time
from typing import Iterable, Iterator, Protocol, TypeVar


class Run(Protocol):
    """What a study's run is to the library: a name (its key in results.json) and the
    settings that identify it."""

    name: str

    def settings(self) -> dict: ...


R = TypeVar("R")


def until(runs: Iterable[R], max_minutes: float) -> Iterator[R]:
    """The runs in order until max_minutes (0: no limit) have passed since the first was
    taken: no run starts after that, and the next call of the study continues."""
    deadline = time.time() + 60 * max_minutes if max_minutes > 0 else math.inf
    for run in runs:
        if time.time() > deadline:
            print(f"--max_minutes={max_minutes} reached; rerun to continue")
            return
        yield run
