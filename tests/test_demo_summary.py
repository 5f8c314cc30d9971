"""demo.sh's summary (scripts/demo_summary.py): rows from the runs' metrics and
evaluations, the baselines named by architecture, and summary.json."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(runs, folder, knn, probe, baselines=None):
    os.makedirs(runs / folder / "linprobe")
    with open(runs / folder / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 400, "loss": 0.6, "rec_loss": 0.55}) + "\n")
        f.write(json.dumps({"step": 400, "loss": 0.5, "rec_loss": 0.45}) + "\n")  # a resumed run's repeat wins
    ev = {"knn_top1": knn, "top1": probe, "train_examples": 60000, "test_examples": 10000}
    if baselines:
        ev["baselines"] = {k: {"knn_top1": a, "top1": b} for k, (a, b) in baselines.items()}
    with open(runs / folder / "linprobe" / "linprobe.json", "w") as f:
        json.dump(ev, f)


def test_summary_rows_and_verdicts(tmp_path):
    write_run(tmp_path, "teacher", 76.5, 75.0, {"pixels": (85.7, 84.6), "random": (64.4, 70.7)})
    write_run(tmp_path, "student_dmae", 74.0, 73.0, {"pixels": (85.7, 84.6), "random": (70.8, 75.8)})
    write_run(tmp_path, "student_mae", 70.0, 72.0)
    out = subprocess.run([sys.executable, "scripts/demo_summary.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rows = {r["name"]: r for r in json.load(open(tmp_path / "summary.json"))["rows"]}
    assert list(rows) == ["pixels", "random", "random_xs4", "teacher", "student_mae", "student_dmae"]
    assert rows["random"]["knn_top1"] == 70.8 and rows["random"]["variant"] == "mu/4"
    assert rows["random_xs4"]["probe_top1"] == 70.7 and rows["pixels"]["knn_top1"] == 85.7
    assert rows["student_mae"]["rec_loss"] == 0.45 and rows["teacher"]["probe_top1"] == 75.0
    assert "teacher vs the random encoders (k-NN): +5.70 points" in out
    assert "teacher vs raw pixels (k-NN): -9.20 points" in out
    assert "distillation (DMAE student vs its MAE twin, same seed and budget, k-NN): +4.00 points" in out


def test_summary_of_unfinished_runs(tmp_path):
    write_run(tmp_path, "teacher", 76.5, 75.0)
    out = subprocess.run([sys.executable, "scripts/demo_summary.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rows = json.load(open(tmp_path / "summary.json"))["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student_mae", "student_dmae"]
    assert rows[1]["knn_top1"] is None and "distillation" not in out
