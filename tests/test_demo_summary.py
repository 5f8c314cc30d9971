"""demo.sh's summary (scripts/demo_summary.py): rows from the runs' metrics and
evaluations, the baselines named by architecture, summary.json, and verdicts whose words
follow the sign and size of each difference, or say that a short run checks the pipeline
only."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(runs, folder, knn, probe, baselines=None, steps=None):
    steps = steps or (800 if folder == "teacher" else 400)  # the demo's full budgets
    os.makedirs(runs / folder / "linprobe")
    with open(runs / folder / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": steps, "loss": 0.6, "rec_loss": 0.55}) + "\n")
        f.write(json.dumps({"step": steps, "loss": 0.5, "rec_loss": 0.45}) + "\n")  # a resumed run's repeat wins
    ev = {"knn_top1": knn, "top1": probe, "train_examples": 60000, "test_examples": 10000}
    if baselines:
        ev["baselines"] = {k: {"knn_top1": a, "top1": b} for k, (a, b) in baselines.items()}
    with open(runs / folder / "linprobe" / "linprobe.json", "w") as f:
        json.dump(ev, f)


def test_summary_rows_and_verdicts(tmp_path):
    write_run(tmp_path, "teacher", 76.5, 75.0, {"pixels": (85.7, 84.6), "random": (64.4, 70.7)})
    write_run(tmp_path, "student_dmae", 74.0, 73.0, {"pixels": (85.7, 84.6), "random": (70.8, 75.8)})
    write_run(tmp_path, "student_mae", 70.0, 72.0)
    out = summarize(tmp_path)
    rows = {r["name"]: r for r in json.load(open(tmp_path / "summary.json"))["rows"]}
    assert list(rows) == ["pixels", "random", "random_xs4", "teacher", "student_mae", "student_dmae"]
    assert rows["random"]["knn_top1"] == 70.8 and rows["random"]["variant"] == "mu/4"
    assert rows["random_xs4"]["probe_top1"] == 70.7 and rows["pixels"]["knn_top1"] == 85.7
    assert rows["student_mae"]["rec_loss"] == 0.45 and rows["teacher"]["probe_top1"] == 75.0
    assert "teacher ahead of a random mu/4 encoder by 5.70 points (k-NN)\n" in out
    assert "teacher behind raw pixels by 9.20 points (k-NN)\n" in out
    assert "DMAE student ahead of its MAE twin (same seed and budget) by 4.00 points (k-NN)\n" in out
    # the probe's difference, 1.0 point, is within one seed's noise
    assert "DMAE student ahead of its MAE twin (same seed and budget) by 1.00 points (linear probe): within " \
           "one seed's noise (under 1.5 points), no conclusion\n" in out
    assert "pipeline check" not in out


def summarize(runs) -> str:
    return subprocess.run([sys.executable, "scripts/demo_summary.py", str(runs)], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_verdicts_follow_the_sign_and_size(tmp_path):
    write_run(tmp_path, "teacher", 85.0, 80.0, {"pixels": (85.7, 84.6), "random": (64.4, 70.7)})
    write_run(tmp_path, "student_dmae", 71.0, 73.0, {"pixels": (85.7, 84.6), "random": (70.8, 75.8)})
    write_run(tmp_path, "student_mae", 75.0, 73.0)
    out = summarize(tmp_path)
    assert "DMAE student behind its MAE twin (same seed and budget) by 4.00 points (k-NN)\n" in out
    assert "DMAE student level with its MAE twin (same seed and budget) (linear probe): within one seed's noise" in out
    assert "teacher behind raw pixels by 0.70 points (k-NN): within one seed's noise" in out
    assert "+" not in out.split("top-1 in %")[1]  # no signed gain whatever the sign


def test_a_short_run_is_a_pipeline_check(tmp_path):
    write_run(tmp_path, "teacher", 70.0, 70.0, {"pixels": (85.7, 84.6), "random": (64.4, 70.7)}, steps=20)
    write_run(tmp_path, "student_dmae", 74.0, 73.0, {"pixels": (85.7, 84.6), "random": (70.8, 75.8)}, steps=20)
    write_run(tmp_path, "student_mae", 70.0, 72.0, steps=20)
    out = summarize(tmp_path)
    assert "pipeline check: fewer steps than the demo's (steps trained of the full budget: teacher 20 of 800, " \
           "student_mae 20 of 400, student_dmae 20 of 400)" in out
    assert "no conclusion is drawn" in out
    for word in ("ahead", "behind", "level with", "points"):
        assert word not in out, word


def test_the_full_budgets_are_demo_sh_s():
    from scripts import demo_summary

    demo = open(os.path.join(ROOT, "demo.sh")).read()
    teacher_steps = re.search(r"teacher_overrides=\(--config.total_steps=(\d+) ", demo).group(1)
    assert teacher_steps == str(demo_summary.TEACHER_STEPS)
    assert "--config.total_steps" not in demo.split("== Stage 2/4")[1]  # the students train their config's steps
    assert demo_summary.full_steps()["student_dmae"] == 400


def test_summary_of_unfinished_runs(tmp_path):
    write_run(tmp_path, "teacher", 76.5, 75.0)
    out = summarize(tmp_path)
    rows = json.load(open(tmp_path / "summary.json"))["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student_mae", "student_dmae"]
    assert rows[1]["knn_top1"] is None and "distillation" not in out
