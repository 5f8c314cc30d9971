"""Does AMD pay on video? MAE and AMD students on Moving Fashion-MNIST clips, paired by seed,
beside raw pixels and random encoders, on two labels of the same clips: the direction of
motion (which no single frame shows) and the object's class (which one frame shows).

  python -m benchmarks.moving_fmnist.study run [--max_minutes=M]
  python -m benchmarks.moving_fmnist.study report   # results.md from results.json only
  python -m benchmarks.moving_fmnist.study plan     # the runs, and which are recorded
  python -m benchmarks.moving_fmnist.study reevaluate  # the k-NN of every recorded run again

(from the repository root; `python benchmarks/moving_fmnist/study.py ...` runs the same).

`run` writes the dataset first if --data lacks it (`python -m scripts.make_moving_fmnist`: 2000
training clips from Fashion-MNIST's train split, 1000 test clips from its test split, 8
directions, seed 0), then trains the video MAE teacher (configs/moving_fmnist.py, with the
k-NN monitor for its curve) and the students (configs/moving_fmnist.py:role=student), each
with mdistill's own commands, and evaluates every encoder with `python -m
mdistill.evaluate.knn` on both labellings (k=20, cosine, average of the tokens, all 2000
train and 1000 test clips). Each finished run goes to results.json at once with its
settings, code revision, digests and wall times, so the study continues across sessions;
the report is regenerated from that file alone. A teacher trained again in another
session is recorded as another instance; each student names the instance it learnt from.
The plan, cache, runner, statistics and report helpers are the Fashion-MNIST study's too
(benchmarks/study/).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by its path: as the module, the repository importable
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.moving_fmnist.study", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))})

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import app, flags

from benchmarks.study import ROOT, runner, stats
from benchmarks.study.cache import ResultsError, Schema, is_recorded, load_results, save_results
from benchmarks.study.plan import until
from benchmarks.study.report import diff_cell, mean_std
from benchmarks.study.runner import environment, execute, params_digest

HERE = os.path.join(ROOT, "benchmarks", "moving_fmnist")
OUTPUTS = tuple(f"benchmarks/moving_fmnist/{o}" for o in ("results.json", "results.md"))
CONFIG = "configs/moving_fmnist.py"
SEEDS = (0, 1, 2)
METHODS = ("mae", "amd")
LABELS = ("direction", "class")  # the two labellings of the same clips
EVAL_BATCH = 128  # configs/moving_fmnist.py's eval.batch_size
TRAIN_CLIPS, TEST_CLIPS = 2000, 1000
DATASET = (f"--train_clips={TRAIN_CLIPS}", f"--test_clips={TEST_CLIPS}", "--directions=8", "--seed=0")
TEACHER_MONITOR = ("--config.eval.knn_every=250", "--config.eval.knn_train_examples=1000",
                   "--config.eval.knn_test_examples=500")
# what the driver and the report read of a record, by its method
_FIELDS = ("method", "revision", "digest", "steps", "knn_direction", "knn_class")
RECORDS = Schema(key="method", fields={method: _FIELDS for method in ("teacher", *METHODS)},
                 instance=("knn_direction", "knn_class"),
                 numbers=frozenset({"steps", "knn_direction", "knn_class"}))


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    method: str     # teacher | mae | amd
    config: str
    seed: int

    def settings(self) -> dict:
        return {"method": self.method, "config": self.config, "seed": self.seed, "dataset": list(DATASET)}


def plan() -> list[Run]:
    runs = [Run("teacher", "teacher", CONFIG, 0)]
    for seed in SEEDS:  # seed-major: an interrupted study has complete pairs first
        for method in METHODS:
            runs.append(Run(f"{method}_s{seed}", method, f"{CONFIG}:role=student,method={method}", seed))
    return runs


# ---- running ------------------------------------------------------------------------------
def ensure_dataset(data: str) -> None:
    if all(os.path.exists(os.path.join(data, label, "test")) for label in LABELS):
        return
    execute([sys.executable, "-m", "scripts.make_moving_fmnist", f"--out={data}", *DATASET],
            os.path.join(os.path.dirname(os.path.abspath(data)), "make_moving_fmnist.log"))


def knn_record(workdir: str, data: str, log: str, baselines: bool) -> dict:
    """k-NN top-1 of the encoder in workdir on each labelling (and the baselines')."""
    out = {}
    for label in LABELS:
        eval_dir = os.path.join(workdir, f"knn_{label}")
        path = os.path.join(eval_dir, "knn.json")
        if not os.path.exists(path):  # an evaluation an interrupted driver finished is reused
            # every encoder on the whole splits (the teacher's run config holds its monitor's subsets),
            # in batches of one size: a batch's size can change float rounding and so a close vote
            execute([sys.executable, "-m", "mdistill.evaluate.knn", f"--workdir={eval_dir}",
                     f"--checkpoint={workdir}", f"--config.data.path={os.path.join(data, label)}",
                     "--config.eval.knn_train_examples=-1", "--config.eval.knn_test_examples=-1",
                     f"--config.eval.batch_size={EVAL_BATCH}"]
                    + (["--baselines"] if baselines else []), log)
        with open(path) as f:
            result = json.load(f)
        if (result["train_examples"], result["test_examples"]) != (TRAIN_CLIPS, TEST_CLIPS):
            sys.exit(f"{path}: k-NN on {result['train_examples']} / {result['test_examples']} clips, expected the "
                     f"whole splits ({TRAIN_CLIPS} / {TEST_CLIPS}); delete that folder and run again")
        out[f"knn_{label}"] = result["knn_top1"]
        for name, b in result.get("baselines", {}).items():
            out.setdefault("baselines", {})[f"{name}_{label}"] = b["knn_top1"]
    return out


def run_one(run: Run, out: str, data: str, teacher_dir: str, baselines: bool) -> dict:
    from mdistill.metrics import read_metrics

    workdir = teacher_dir if run.method == "teacher" else os.path.join(out, run.name)
    log = os.path.join(out, f"{run.name}.log")
    cmd = [sys.executable, "-m", "mdistill.main", f"--config={run.config}", f"--workdir={workdir}",
           f"--config.seed={run.seed}", f"--config.data.path={os.path.join(data, 'direction')}"]
    cmd += list(TEACHER_MONITOR) if run.method == "teacher" else []
    cmd += [f"--config.teacher.checkpoint={teacher_dir}"] if run.method == "amd" else []
    pretrain_seconds = round(execute(cmd, log), 1)  # resumes an interrupted run; a finished one returns
    t0 = time.time()
    record = knn_record(workdir, data, log, baselines)
    records = read_metrics(workdir)
    rev, dirty = runner.revision(OUTPUTS)
    record.update(run.settings(), revision=rev, dirty_files=dirty, environment=environment(),
                  pretrain_seconds=pretrain_seconds, eval_seconds=round(time.time() - t0, 1),
                  steps=max(r["step"] for r in records),
                  final={k: v for k, v in [r for r in records if "loss" in r][-1].items() if k.endswith("loss")},
                  digest=params_digest(workdir), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    if run.method == "teacher":
        record["knn_curve"] = [[r["step"], r["knn_top1"]] for r in records if "knn_top1" in r]
    elif run.method == "amd":
        record["teacher_digest"] = params_digest(teacher_dir)
    return record


def cmd_reevaluate(args) -> None:
    """The k-NN evaluations of every recorded run again, from its checkpoint in --out (after
    a change to the evaluation); pre-training and its record stay as they are."""
    results = load_results(args.results, RECORDS)
    out, data = os.path.abspath(args.out), os.path.abspath(args.data)
    for run in plan():
        r = results["runs"].get(run.name)
        if r is None:
            continue
        workdir = os.path.join(out, "teacher" if run.method == "teacher" else run.name)
        if params_digest(workdir) != r["digest"]:
            sys.exit(f"{workdir}: not the recorded {run.name} (digest {r['digest']}); nothing re-evaluated after it")
        for label in LABELS:
            shutil.rmtree(os.path.join(workdir, f"knn_{label}"), ignore_errors=True)
        t0 = time.time()
        baselines = run.name in ("teacher", f"{METHODS[0]}_s{SEEDS[0]}")
        fresh = knn_record(workdir, data, os.path.join(out, f"{run.name}.log"), baselines)
        rev, dirty = runner.revision(OUTPUTS)
        r.update(fresh, eval_seconds=round(time.time() - t0, 1), eval_revision=rev, eval_dirty_files=dirty)
        save_results(args.results, results)
        print(f"{run.name}: k-NN direction {r['knn_direction']:.2f}, class {r['knn_class']:.2f} (re-evaluated)",
              flush=True)
    cmd_report(args)


def cmd_run(args) -> None:
    results = load_results(args.results, RECORDS)
    out, data = os.path.abspath(args.out), os.path.abspath(args.data)
    os.makedirs(out, exist_ok=True)
    ensure_dataset(data)
    teacher_dir = os.path.join(out, "teacher")
    for run in until(plan(), args.max_minutes):
        if is_recorded(results, run):
            if run.method == "teacher" and not os.path.isdir(os.path.join(teacher_dir, "checkpoints")):
                print("recorded teacher, but no checkpoint here: training it again for the students", flush=True)
                fresh = run_one(run, out, data, teacher_dir, baselines=False)
                results.setdefault("teachers", {})[fresh["digest"]] = fresh
                save_results(args.results, results)
            continue
        # baselines: pixels and a random xs/8 with the teacher, a random mu/8 with the first student
        baselines = run.name in ("teacher", f"{METHODS[0]}_s{SEEDS[0]}")
        results["runs"][run.name] = run_one(run, out, data, teacher_dir, baselines)
        save_results(args.results, results)
        r = results["runs"][run.name]
        print(f"{run.name}: k-NN direction {r['knn_direction']:.2f}, class {r['knn_class']:.2f} "
              f"({r['pretrain_seconds']:.0f}s + {r['eval_seconds']:.0f}s)", flush=True)
    cmd_report(args)


# ---- reporting ------------------------------------------------------------------------------
def report_lines(results: dict) -> list[str]:
    runs = results["runs"]
    lines = ["# Moving Fashion-MNIST: MAE vs AMD students on clips", "",
             "Generated by `python benchmarks/moving_fmnist/study.py report` from results.json; "
             "k-NN top-1 in % (k=20, cosine, average of the tokens), trained on 2000 clips, tested on 1000.", "",
             "| encoder | arch | runs | direction | class |", "|---|---|---:|---:|---:|"]
    base = {**runs.get("teacher", {}).get("baselines", {}), **runs.get("mae_s0", {}).get("baselines", {})}
    if base:
        lines.append(f"| raw pixels | - | 1 | {base['pixels_direction']:.2f} | {base['pixels_class']:.2f} |")
    random_rows = (("teacher", "xs/8"), ("mae_s0", "mu/8"))
    for name, arch in random_rows:
        b = runs.get(name, {}).get("baselines", {})
        if "random_direction" in b:
            lines.append(f"| random | {arch} | 1 | {b['random_direction']:.2f} | {b['random_class']:.2f} |")
    if "teacher" in runs:
        t = runs["teacher"]
        lines.append(f"| teacher ({t['steps']} steps) | xs/8 | 1 | {t['knn_direction']:.2f} | {t['knn_class']:.2f} |")
    for method in METHODS:
        done = [runs[f"{method}_s{s}"] for s in SEEDS if f"{method}_s{s}" in runs]
        if done:
            cells = [mean_std([r[f"knn_{label}"] for r in done]) for label in LABELS]
            lines.append(f"| {method.upper()} student ({done[0]['steps']} steps) | mu/8 | {len(done)} | "
                         + " | ".join(cells) + " |")
    pairs = [s for s in SEEDS if f"amd_s{s}" in runs and f"mae_s{s}" in runs]
    if pairs:
        lines += ["", "AMD student minus its MAE twin (same seed, initialisation, data order and budget), "
                  "mean [95% t interval]:", ""]
        for label in LABELS:
            diff = stats.paired_difference([runs[f"amd_s{s}"][f"knn_{label}"] for s in pairs],
                                           [runs[f"mae_s{s}"][f"knn_{label}"] for s in pairs])
            per_seed = ", ".join(f"{runs[f'amd_s{s}'][f'knn_{label}'] - runs[f'mae_s{s}'][f'knn_{label}']:+.2f}"
                                 for s in pairs)
            lines.append(f"- {label}: {diff_cell(diff)}; per seed {per_seed}")
    if "teacher" in runs and runs["teacher"].get("knn_curve"):
        curve = ", ".join(f"{s}: {v:.1f}" for s, v in runs["teacher"]["knn_curve"])
        lines += ["", f"Teacher's k-NN monitor (direction, 1000 train / 500 test clips) by step: {curve}."]
    teachers = {r.get("teacher_digest") for n, r in runs.items() if n != "teacher"} - {None}
    if teachers:
        lines += ["", "Teacher instances the students learnt from: " + ", ".join(sorted(teachers))
                  + f" (the recorded teacher: {runs['teacher']['digest']})."]
    return lines


def cmd_report(args) -> None:
    results = load_results(args.results, RECORDS)
    path = os.path.join(os.path.dirname(os.path.abspath(args.results)), "results.md")
    with open(path, "w") as f:
        f.write("\n".join(report_lines(results)) + "\n")
    print(f"wrote {path}")


def cmd_plan(args) -> None:
    results = load_results(args.results, RECORDS)
    for run in plan():
        print(f"{'done' if is_recorded(results, run) else 'todo':5} {run.name:10} {run.config}")


def main(argv):
    commands = {"run": cmd_run, "reevaluate": cmd_reevaluate, "report": cmd_report, "plan": cmd_plan}
    if len(argv) != 2 or argv[1] not in commands:
        raise app.UsageError(f"expected one command of {sorted(commands)}", exitcode=2)
    try:
        commands[argv[1]](flags.FLAGS)
    except ResultsError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.DEFINE_string("results", os.path.join(HERE, "results.json"), "the study's record")
    flags.DEFINE_string("out", "runs/moving_fmnist_study", "workdirs (checkpoints, logs)")
    flags.DEFINE_string("data", "data/moving_fmnist", "the dataset (written there first if missing)")
    flags.DEFINE_float("max_minutes", 0, "start no run after this long (0: no limit)")
    app.run(main)
