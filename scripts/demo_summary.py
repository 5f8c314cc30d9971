"""demo.sh's last stage: the table of its runs and <RUNS>/summary.json.

  python scripts/demo_summary.py RUNS      # as demo.sh runs it (mdistill installed)
  python -m scripts.demo_summary RUNS      # the same, from the repository root

Reads <RUNS>/{teacher,student_dmae,student_mae}/metrics.jsonl and linprobe/linprobe.json
(the baselines come from the evaluations that ran with --config.baselines=True), prints
one row per encoder with k-NN and linear-probe top-1, and what the table shows, in words
that follow the sign and the size of each difference: the teacher against the random
encoders and raw pixels, the DMAE student against its MAE twin (ahead of, behind, level
with; a difference smaller than one seed's noise, NOISE_POINTS, is called that).

When the runs trained fewer steps than the demo's full budgets (MDISTILL_DEMO_STEPS: the
teacher's TEACHER_STEPS, the students' configs/fmnist_dmae.py), the table checks the
pipeline only: it says so and draws no conclusion.
"""

from __future__ import annotations

import json
import os

from absl import app

from mdistill.metrics import read_metrics

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


# The demo's full budgets: demo.sh trains the teacher TEACHER_STEPS steps (the recipe's 2400
# do not fit its time), the students configs/fmnist_dmae.py's total_steps.
TEACHER_STEPS = 800
# One seed's noise, in points of top-1: in benchmarks/fmnist/results.md the 400-step
# students' k-NN and probe vary by about 1 point (std) from seed to seed, so the difference
# of two single-seed runs varies by about 1.4; smaller differences say nothing.
NOISE_POINTS = 1.5


def full_steps() -> dict:
    import importlib.util

    # the config file by its path, as --config= reads it: this script also runs by its path (demo.sh)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "fmnist_dmae.py")
    spec = importlib.util.spec_from_file_location("fmnist_dmae", path)
    fmnist_dmae = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fmnist_dmae)
    student = fmnist_dmae.get_config().total_steps
    return {"teacher": TEACHER_STEPS, "student_mae": student, "student_dmae": student}


def short_runs(table: list[dict]) -> list[str]:
    """'name: N of M steps' for each run that trained fewer steps than the demo's full budget."""
    full = full_steps()
    return [f"{r['name']} {r['steps']} of {full[r['name']]}" for r in table
            if r["name"] in full and r.get("steps") is not None and r["steps"] < full[r["name"]]]


def compare(subject: str, other: str, diff: float, what: str) -> str:
    """`subject` against `other` in words that follow the sign and size of `diff` (points)."""
    if abs(diff) < 0.005:
        words = f"{subject} level with {other} ({what})"
    else:
        words = f"{subject} {'ahead of' if diff > 0 else 'behind'} {other} by {abs(diff):.2f} points ({what})"
    if abs(diff) < NOISE_POINTS:
        words += f": within one seed's noise (under {NOISE_POINTS} points), no conclusion"
    return words


def verdicts(table: list[dict]) -> list[str]:
    short = short_runs(table)
    if short:
        return [f"pipeline check: fewer steps than the demo's (steps trained of the full budget: {', '.join(short)}). "
                "These numbers show that every stage runs, not what distillation does: no conclusion is drawn "
                "from them. `bash demo.sh` without MDISTILL_DEMO_STEPS trains the full budgets."]
    by = {r["name"]: r for r in table}
    top1 = lambda name, key="knn_top1": (by.get(name) or {}).get(key)  # noqa: E731
    lines = []
    randoms = [by[k] for k in ("random", "random_xs4") if top1(k) is not None]
    if top1("teacher") is not None and randoms:
        best = max(randoms, key=lambda r: r["knn_top1"])  # the stronger random encoder, if both ran
        lines.append(compare("teacher", f"a random {best['variant']} encoder", top1("teacher") - best["knn_top1"],
                             "k-NN"))
    if top1("teacher") is not None and top1("pixels") is not None:
        lines.append(compare("teacher", "raw pixels", top1("teacher") - top1("pixels"), "k-NN"))
    for key, what in (("knn_top1", "k-NN"), ("probe_top1", "linear probe")):
        if top1("student_dmae", key) is not None and top1("student_mae", key) is not None:
            lines.append(compare("distillation: the DMAE student", "its MAE twin (same seed and budget)",
                                 top1("student_dmae", key) - top1("student_mae", key), what))
    if any(line.startswith("distillation") for line in lines):
        lines.append("one seed; benchmarks/fmnist/results.md has the paired study over seeds and budgets")
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
