"""The package's shape: no import cycle between mdistill's modules, the trainer below the
evaluators, the models and weights below both, a method's knowledge in objectives/ only, and
lines within the ruff limit."""

from __future__ import annotations

import ast
import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mdistill")


def modules() -> dict[str, str]:
    """Dotted name -> path of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of its code (an import inside
    a function is an edge too)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mdistill"):
                for alias in node.names:  # `from mdistill import train` imports the module train
                    child = f"{node.module}.{alias.name}"
                    deps.add(child if child in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("mdistill")}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_trainer_imports_nothing_from_the_evaluators():
    graph = import_graph()
    assert not {d for d in graph["mdistill.train"] if d.startswith("mdistill.evaluate")}


def test_the_models_own_their_names_and_the_weights_serve_the_jobs():
    """models/ (tensor names included) imports nothing else of the package; the weights
    package reads and writes parameters for train.py and evaluate/, importing neither."""
    graph = import_graph()
    assert not {d for m, deps in graph.items() if m.startswith("mdistill.models.")
                for d in deps if not d.startswith("mdistill.models")}
    assert not {d for m, deps in graph.items() if m.startswith("mdistill.weights")
                for d in deps if d.startswith(("mdistill.train", "mdistill.evaluate", "mdistill.main"))}
    assert "mdistill.models.names" in graph["mdistill.weights.state_dict"]


def test_methods_are_named_only_in_objectives():
    """A method's knowledge lives in its objective: nothing else asks which method runs."""
    found = [f"{path}:{i}" for name, path in modules().items() if not name.startswith("mdistill.objectives")
             for i, line in enumerate(open(path), 1) if re.search(r"config\.method\s*[!=]=", line)]
    assert found == []


def python_files():
    """The project's Python files (relative paths), outside the ruff config's exclusions."""
    ruff = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["ruff"]
    excluded = tuple(ruff.get("extend-exclude", ()))
    for top in ("mdistill", "configs", "tests", "benchmarks", "scripts", "launch", "notebooks"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                rel = os.path.relpath(os.path.join(folder, f), ROOT)
                if f.endswith(".py") and not rel.startswith(excluded):
                    yield rel


def test_lines_fit_the_ruff_line_length():
    ruff = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["ruff"]
    limit = ruff["line-length"]
    exempt = {f for f, rules in ruff.get("lint", {}).get("per-file-ignores", {}).items() if "E501" in rules}
    long = [f"{rel}:{i} ({len(line.rstrip(chr(10)))})" for rel in python_files() if rel not in exempt
            for i, line in enumerate(open(os.path.join(ROOT, rel)), 1) if len(line.rstrip("\n")) > limit]
    assert long == [], f"lines longer than {limit} (pyproject.toml's [tool.ruff] line-length)"


# mdistill/weights/state_dict.py names argparse.Namespace only to let torch unpickle the 'args' that
# the official MAE training checkpoints hold; it parses no command line.
ARGPARSE_READERS = {"mdistill/weights/state_dict.py"}


def test_every_command_line_is_absl_flags():
    """One command-line style: the entry points of mdistill/, benchmarks/ and scripts/ use
    absl flags; none imports argparse."""
    found = []
    for rel in python_files():
        if rel.split(os.sep)[0] not in ("mdistill", "benchmarks", "scripts"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] == "argparse" for n in names):
                found.append(f"{rel}:{node.lineno}")
    assert [f for f in found if f.split(":")[0] not in ARGPARSE_READERS] == []
    assert all(any(f.startswith(f"{r}:") for f in found) for r in ARGPARSE_READERS), "exemption no longer needed"
