"""A study's results.json: every finished run's record under its name, so an interrupted
study, or one spread over several sessions, continues where it stopped. A record holds the
run's settings; a run whose settings changed is no longer recorded and runs again. The file
is written whole (never half-written) and never rewritten or removed because it is damaged:
loading it names the file and what is wrong with it."""

from __future__ import annotations

import dataclasses
import json
import os

from benchmarks.study import ROOT
from benchmarks.study.plan import Run


class ResultsError(Exception):
    """results.json cannot be used as it is; it is never rewritten or removed because of it."""


@dataclasses.dataclass(frozen=True)
class Schema:
    """What a study reads of its records: each run's record needs fields[record[key]]; a
    further teacher instance (results['teachers'], digest -> record) needs instance; the
    fields in numbers must be numbers."""
    key: str
    fields: dict
    instance: tuple
    numbers: frozenset


def load_results(path: str, schema: Schema) -> dict:
    """The study's record ({'runs': {}} where there is none yet), or a ResultsError naming the
    file and what is wrong with it (a truncated write, a record without its results)."""
    if not os.path.exists(path):
        return {"runs": {}}
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    restore = "" if relative.startswith("..") else f", restore it (git checkout -- {relative})"
    keep = f"it is left as it is: repair it{restore} or move it away to start a new record"
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}; truncated or "
                           f"hand-edited?); {keep}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot be read ({e}); {keep}") from None
    problem = results_problem(results, schema)
    if problem:
        raise ResultsError(f"{path}: {problem}; {keep}")
    return results


def results_problem(results, schema: Schema) -> str | None:
    """What makes a loaded results.json unusable (None: nothing)."""
    if not isinstance(results, dict) or not isinstance(results.get("runs"), dict):
        return "expected an object with a 'runs' object (run name -> record)"
    records = [(f"run {name!r}", r, None) for name, r in results["runs"].items()]
    teachers = results.get("teachers", {})
    if not isinstance(teachers, dict):
        return "'teachers' is not an object (teacher digest -> record)"
    records += [(f"teacher instance {digest!r}", r, schema.instance) for digest, r in teachers.items()]
    for what, record, fields in records:
        if not isinstance(record, dict):
            return f"{what} is not an object"
        if fields is None:
            kind = record.get(schema.key)
            if kind not in schema.fields:
                return f"{what} has {schema.key} {kind!r}, expected one of {sorted(schema.fields)}"
            fields = schema.fields[kind]
        missing = [k for k in fields if k not in record]
        if missing:
            return f"{what} lacks {', '.join(missing)} (an incomplete record)"
        bad = [k for k in fields if k in schema.numbers and (isinstance(record[k], bool)
                                                             or not isinstance(record[k], (int, float)))]
        if bad:
            return f"{what}: {', '.join(f'{k}={record[k]!r}' for k in bad)} is not a number"
    return None


def save_results(path: str, results: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)  # never a half-written results.json


def is_recorded(results: dict, run: Run) -> bool:
    r = results["runs"].get(run.name)
    return r is not None and all(r.get(k) == v for k, v in run.settings().items())
