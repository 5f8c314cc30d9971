"""Every `runs/demo/<name>` the README, the docstrings and the scripts mention is a folder or
file that demo.sh writes: its stages' workdirs, parsed from demo.sh, and summary.json."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("mdistill", "configs", "scripts", "benchmarks", "launch", "notebooks", "tests", "docs")
# runs/demo/<name>, and the quick check's runs/demo-20steps/<name>
MENTION = re.compile(r"runs/demo(?:-\w+)?/([A-Za-z0-9_.*-]+)")


def demo_outputs() -> set[str]:
    """What demo.sh writes directly under $RUNS: each stage's --workdir, and the summary."""
    script = open(os.path.join(ROOT, "demo.sh")).read()
    stages = set(re.findall(r'--workdir="\$RUNS/(\w+)"', script))
    assert {"teacher", "student_dmae", "student_mae"} <= stages, stages  # the parse still finds the stages
    assert "scripts/demo_summary.py" in script
    summary = open(os.path.join(ROOT, "scripts", "demo_summary.py")).read()
    assert '"summary.json"' in summary
    return stages | {"summary.json"}


def mentions(text: str) -> list[str]:
    return MENTION.findall(text)


def sources() -> list[str]:
    out = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "demo.sh")]
    for folder in FOLDERS:
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            out += [os.path.join(dirpath, f) for f in files
                    if f.endswith((".py", ".md", ".sh", ".ipynb")) and f != os.path.basename(__file__)]
    return out


def test_mentions_are_parsed():
    text = "see runs/demo/student_dmae/linprobe, `runs/demo/summary.json` and runs/demo-20steps/teacher"
    assert mentions(text) == ["student_dmae", "summary.json", "teacher"]
    assert mentions("RUNS=runs/demo, or runs/demo-20steps") == []
    assert not set(mentions("--config.pretrained=runs/demo/dmae")) <= demo_outputs()


def test_every_demo_path_mentioned_is_one_demo_sh_writes():
    outputs = demo_outputs()
    wrong = [f"{os.path.relpath(path, ROOT)}:{i}: runs/demo/{name}"
             for path in sources() for i, line in enumerate(open(path, errors="replace"), 1)
             for name in mentions(line) if name not in outputs]
    assert wrong == [], f"paths demo.sh does not write (it writes {sorted(outputs)} under runs/demo)"
