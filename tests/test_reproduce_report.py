"""The Fashion-MNIST reproduction's report (benchmarks/fmnist/reproduce.py): its table and
plots from recorded results, including evaluations run on only some seeds."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "benchmarks/fmnist/reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed, linprobe, finetune=None):
    r = {"seed": seed, "wall_seconds": 100.0 + seed, "step_ms": 50.0, "final_rec_loss": 0.5, "linprobe": linprobe}
    if finetune is not None:
        r["finetune"] = finetune
    return r


RESULTS = {"teacher": [run(0, 80.0, 90.0)],
           "mae": [run(0, 70.0, 88.0), run(1, 72.0), run(2, 74.0)],
           "dmae": [run(0, 75.0, 89.0), run(1, 75.0), run(2, 75.0)]}


def test_mean_std_marks_partial_columns(reproduce):
    assert reproduce.mean_std([70.0, 72.0, 74.0]) == "72.00 ± 2.00"
    assert reproduce.mean_std([88.0], runs=3) == "88.00 ± 0.00 (n=1)"
    assert reproduce.mean_std([88.0], runs=1) == "88.00 ± 0.00"
    assert reproduce.mean_std([], runs=3) == "-"
    assert reproduce.mean_std([0.51234, 0.5], digits=4) == "0.5062 ± 0.0087"


def test_table_rows(reproduce):
    lines = reproduce.table(RESULTS, ["mae", "dmae"], ["linprobe", "finetune"]).splitlines()
    assert lines[0].startswith("| model | runs | linear probe top-1 (%) | fine-tune top-1 (%) |")
    assert lines[2] == "| teacher | 1 | 80.00 ± 0.00 | 90.00 ± 0.00 | 100 ± 0 | 50 ± 0 | 0.5000 ± 0.0000 |"
    assert lines[3].startswith("| MAE student | 3 | 72.00 ± 2.00 | 88.00 ± 0.00 (n=1) | 101 ± 1 |")
    assert lines[4].startswith("| DMAE student | 3 | 75.00 ± 0.00 | 89.00 ± 0.00 (n=1) |")


def test_plots_from_partial_results(reproduce, tmp_path):
    pytest.importorskip("matplotlib")
    for m in ("mae", "dmae"):
        for s in range(3):
            os.makedirs(tmp_path / f"{m}_s{s}")
            with open(tmp_path / f"{m}_s{s}" / "metrics.jsonl", "w") as f:
                for step in (10, 20):
                    f.write(json.dumps({"step": step, "loss": 1.0 / step, "rec_loss": 0.5 / step}) + "\n")
    reproduce.plots(str(tmp_path), RESULTS, ["mae", "dmae"], [0, 1, 2], ["linprobe", "finetune"])
    for name in ("loss_curves.png", "accuracy.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
