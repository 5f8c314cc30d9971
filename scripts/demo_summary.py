"""demo.sh's last stage: the table of its runs and <RUNS>/summary.json.

  python scripts/demo_summary.py RUNS

Reads <RUNS>/{teacher,student_dmae,student_mae}/metrics.jsonl and linprobe/linprobe.json
(the baselines come from the evaluations that ran with --config.baselines=True), prints
one row per encoder with k-NN and linear-probe top-1, and what the table shows: whether the
teacher beats the random encoders and whether distillation paid (DMAE student against its
MAE twin).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from mdistill.metrics import read_metrics  # noqa: E402

MODELS = (("teacher", "teacher", "xs/4"), ("student_mae", "student_mae", "mu/4"),
          ("student_dmae", "student_dmae", "mu/4"))


def last_metrics(workdir: str) -> dict:
    records = read_metrics(workdir)
    return records[-1] if records else {}


def evaluation(workdir: str) -> dict:
    path = os.path.join(workdir, "linprobe", "linprobe.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def rows(runs: str) -> list[dict]:
    out, baselines = [], {}
    for name, folder, variant in MODELS:
        ev = evaluation(os.path.join(runs, folder))
        for base, b in ev.get("baselines", {}).items():
            key = "pixels" if base == "pixels" else ("random" if variant == "mu/4" else "random_xs4")
            baselines[key] = {"name": key, "variant": "-" if base == "pixels" else variant,
                              "knn_top1": b.get("knn_top1"), "probe_top1": b["top1"]}
        m = last_metrics(os.path.join(runs, folder))
        out.append({"name": name, "variant": variant, "steps": m.get("step"), "rec_loss": m.get("rec_loss"),
                    "knn_top1": ev.get("knn_top1"), "probe_top1": ev.get("top1"),
                    "train_examples": ev.get("train_examples"), "test_examples": ev.get("test_examples")})
    order = [k for k in ("pixels", "random", "random_xs4") if k in baselines]
    return [baselines[k] for k in order] + out


def verdicts(table: list[dict]) -> list[str]:
    by = {r["name"]: r for r in table}
    knn = lambda name: (by.get(name) or {}).get("knn_top1")  # noqa: E731
    lines = []
    if knn("teacher") is not None and knn("random") is not None:
        randoms = [knn(k) for k in ("random", "random_xs4") if knn(k) is not None]
        lines.append(f"teacher vs the random encoders (k-NN): {knn('teacher') - max(randoms):+.2f} points")
    if knn("teacher") is not None and knn("pixels") is not None:
        lines.append(f"teacher vs raw pixels (k-NN): {knn('teacher') - knn('pixels'):+.2f} points")
    if knn("student_dmae") is not None and knn("student_mae") is not None:
        gain = knn("student_dmae") - knn("student_mae")
        lines.append(f"distillation (DMAE student vs its MAE twin, same seed and budget, k-NN): {gain:+.2f} points "
                     "(one seed; benchmarks/fmnist/results.md has the paired study)")
    return lines


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summarize(runs: str) -> None:
    table = rows(runs)
    print(f"{'encoder':<14}{'arch':>6}{'steps':>7}{'rec_loss':>10}{'k-NN top1':>11}{'probe top1':>12}")
    for r in table:
        print(f"{r['name']:<14}{r['variant']:>6}{fmt(r.get('steps'), 'd'):>7}{fmt(r.get('rec_loss'), '.4f'):>10}"
              f"{fmt(r['knn_top1'], '.2f'):>11}{fmt(r['probe_top1'], '.2f'):>12}")
    sizes = sorted({(r["train_examples"], r["test_examples"]) for r in table if r.get("test_examples")})
    print("top-1 in %; " + "; ".join(f"trained on {a}, tested on {b} images" for a, b in sizes))
    for line in verdicts(table):
        print(line)
    with open(os.path.join(runs, "summary.json"), "w") as f:
        json.dump({"rows": table}, f, indent=2)
    print(f"written: {os.path.join(runs, 'summary.json')}")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(f"expected one argument, the RUNS folder; got {argv[1:]}", exitcode=2)
    summarize(argv[1])


if __name__ == "__main__":
    app.run(main)
