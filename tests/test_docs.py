"""The README and docs/: every relative link resolves (the file or folder exists, and an
#anchor names a heading of the page it points at, by GitHub's rules), docs/README.md indexes
every page, no table copies a row of the generated results files (they are linked), and the
README stays short (at most 250 lines)."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_README_LINES = 250

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1[^\n]*$", re.M | re.S)
# [text](target) and ![alt](target); the text may span lines, the target may carry a "title"
LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
ANCHOR_TAG = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
# results live only in these generated files; pages link them
GENERATED = ("benchmarks/fmnist/results.md", "benchmarks/moving_fmnist/results.md", "benchmarks/RESULTS.md")
DECIMAL = re.compile(r"[-+]?\d+\.\d+")


def pages() -> list[str]:
    out = [os.path.join(ROOT, "README.md")]
    for dirpath, dirnames, files in os.walk(os.path.join(ROOT, "docs")):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".md")]
    return out


def without_code_blocks(text: str) -> str:
    """Fenced blocks blanked, their lines kept so that line numbers still hold."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (inline code, links and emphasis
    reduced to their text), lower-cased, punctuation other than '-' and '_' dropped, each space
    a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)  # emphasis (a word's own '_' stays)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = open(path, encoding="utf-8").read()
    seen: dict[str, int] = {}
    out = set(ANCHOR_TAG.findall(text))
    for _, heading in HEADING.findall(without_code_blocks(text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: str) -> list[tuple[int, str]]:
    text = without_code_blocks(open(path, encoding="utf-8").read())
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in LINK.finditer(text)]


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def broken_links(path: str) -> list[str]:
    out = []
    for line, target in links(path):
        if is_external(target):
            continue
        where = f"{os.path.relpath(path, ROOT)}:{line}: {target}"
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file))) if file else path
        if not os.path.exists(resolved):
            out.append(f"{where} (no such file)")
        elif not os.path.realpath(resolved).startswith(ROOT + os.sep) and os.path.realpath(resolved) != ROOT:
            out.append(f"{where} (outside the repository)")
        elif anchor and resolved.endswith(".md") and unquote(anchor) not in anchors(resolved):
            out.append(f"{where} (no heading with anchor #{anchor} in {os.path.relpath(resolved, ROOT)})")
    return out


def test_slug_follows_github():
    assert slug("Install") == "install"
    assert slug("Methods and masks") == "methods-and-masks"
    assert slug("Teachers beyond MAE") == "teachers-beyond-mae"
    assert slug("One-factor sweeps at 200 steps") == "one-factor-sweeps-at-200-steps"
    assert slug("Train step on a GPU: one NVIDIA H200, bf16, batch 256 (`benchmarks/step.py`, "
                "`benchmarks/official_dmae.py`)") == (
        "train-step-on-a-gpu-one-nvidia-h200-bf16-batch-256-benchmarkssteppy-benchmarksofficial_dmaepy")
    assert slug("Operations: outputs, fault tolerance, scaling out") == (
        "operations-outputs-fault-tolerance-scaling-out")
    assert slug("**Bold** and [a link](x.md)") == "bold-and-a-link"


def test_parsing_finds_links_outside_code_only(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n\nsee [x](b.md#c) and ![i](d.png)\n\n```\n[no](e.md)\n```\n"
                    "[two\nlines](f.md) [ext](https://example.com)\n## A\n")
    assert links(str(page)) == [(3, "b.md#c"), (3, "d.png"), (8, "f.md"), (9, "https://example.com")]
    assert anchors(str(page)) == {"a", "a-1"}


def test_every_relative_link_resolves():
    wrong = [w for path in pages() for w in broken_links(path)]
    assert wrong == [], "broken links:\n" + "\n".join(wrong)


def test_docs_index_lists_every_page():
    index = os.path.join(ROOT, "docs", "README.md")
    assert os.path.exists(index)
    linked = {os.path.normpath(os.path.join(os.path.dirname(index), t.partition("#")[0]))
              for _, t in links(index) if not is_external(t)}
    missing = [os.path.relpath(p, ROOT) for p in pages()[1:] if p != index and p not in linked]
    assert missing == [], f"docs/README.md does not link {missing}"


def test_readme_links_the_docs_index_and_the_results():
    targets = {t.partition("#")[0] for _, t in links(os.path.join(ROOT, "README.md"))}
    for needed in ("docs/README.md", "benchmarks/fmnist/results.md",
                   "benchmarks/moving_fmnist/results.md", "benchmarks/RESULTS.md"):
        assert needed in targets, needed


def table_rows(path: str) -> list[tuple[int, str]]:
    text = without_code_blocks(open(path, encoding="utf-8").read())
    return [(i, line) for i, line in enumerate(text.split("\n"), 1) if line.lstrip().startswith("|")]


def copies(row: str, generated: list[list[str]]) -> bool:
    """A row whose decimal numbers (two or more) appear, in order, in one generated row."""
    mine = DECIMAL.findall(row)

    def in_order(sub: list[str], seq: list[str]) -> bool:
        it = iter(seq)
        return all(x in it for x in sub)
    return len(mine) >= 2 and any(in_order(mine, g) for g in generated)


def test_copies_detects_a_copied_row():
    generated = [["85.69", "84.57"], ["0.0705", "0.0653", "14.88"]]
    assert copies("| raw pixels | 85.69 | 84.57 |", generated)
    assert copies("| MAE | 0.0705 | 3631 | 14.88 |", generated)
    assert not copies("| DMAE release | 8 GPUs | 4 | 128 |", generated)
    assert not copies("| data 8, fsdp 1 | 1349.3 MB | 606.2 MB |", generated)


def test_no_table_copies_a_generated_result():
    generated = [DECIMAL.findall(row) for path in GENERATED for _, row in table_rows(os.path.join(ROOT, path))]
    wrong = [f"{os.path.relpath(path, ROOT)}:{i}: {row[:80]}" for path in pages()
             for i, row in table_rows(path) if copies(row, generated)]
    assert wrong == [], ("rows copied from a generated results file (link the file instead):\n"
                         + "\n".join(wrong))


def test_readme_is_short():
    n = len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (at most {MAX_README_LINES})"
