"""Does distillation pay? The Fashion-MNIST study: one MAE teacher, then the same small
student pre-trained alone (MAE) and with the teacher (DMAE, AMD) at equal budgets and
paired seeds, every encoder beside raw pixels and a random encoder of its architecture.

  python -m benchmarks.fmnist.study run [--groups=teacher,core,finetune,sweeps] [--max_minutes=M]
  python -m benchmarks.fmnist.study report        # tables and plots from results.json only
  python -m benchmarks.fmnist.study plan          # the runs, and which are recorded

(from the repository root; `python benchmarks/fmnist/study.py ...` runs the same). What the
two studies share (plan, cache, runner, statistics, report) is benchmarks/study/.

`run` executes the planned runs that results.json does not hold yet (a run is recorded
with its settings; changed settings make it run again), each through mdistill's own
commands: pre-training (`python -m mdistill.main`), then k-NN and the linear probe from one
feature pass (`python -m mdistill.evaluate.linprobe --config.knn=True`, all 60k train and
10k test images). Every finished run is written to results.json at once, with its
settings, seed, code revision and wall times, so an interrupted study, or one spread over
several sessions, continues where it stopped; `report` regenerates results.md and the plots
from results.json alone, so committed numbers come from committed code.

The teacher is trained once (with the k-NN monitor, for its curve) in <out>/teacher; a
later session without that folder trains it again, and its parameters' digest is compared
with the recorded one (XLA on CPU is deterministic: same machine type, same teacher). The
students of one results.json must share one teacher: a different digest stops the run.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by its path: as the module, the repository importable
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.fmnist.study", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))})

import dataclasses
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.study import ROOT, runner, stats
from benchmarks.study.cache import ResultsError, Schema, is_recorded, save_results
from benchmarks.study.cache import load_results as load_study_results
from benchmarks.study.plan import until
from benchmarks.study.report import diff_cell, mean_std
from benchmarks.study.runner import environment, execute, params_digest

HERE = os.path.join(ROOT, "benchmarks", "fmnist")
TEACHER_VARIANT, STUDENT_VARIANT = "xs/4", "mu/4"
BUDGETS = (100, 200, 400)  # student pre-training steps (batch 128): 0.2, 0.4 and 0.9 epochs
SEEDS = (0, 1, 2)
SWEEP_BUDGET = 200
# AMD's students train their generator mask tokens: the default when the study's AMD runs were
# made, before the release's frozen tokens became it (results.json's "amendments" says so).
METHOD_CONFIGS = {"mae": ("configs/fmnist_dmae.py", ("--config.method=mae",)),
                  "dmae": ("configs/fmnist_dmae.py", ()),
                  "amd": ("configs/fmnist_amd.py", ("--config.amd.train_mask_tokens=True",)),
                  "tinymim": ("configs/fmnist_tinymim.py", ())}
# One-factor sweeps at SWEEP_BUDGET, each against the MAE student of the same seed:
# name -> (method, overrides). The core configs' settings are the reference point.
SWEEPS = {
    # the core configs again, from the teacher instance the sweeps learn from: the references the
    # variants are read against (the core grid's AMD students learnt from another instance)
    "dmae_ref": ("dmae", ()),
    "dmae_weight1": ("dmae", ("--config.distill.weight=1.0",)),    # the paper's weight
    "dmae_weight3": ("dmae", ("--config.distill.weight=3.0",)),
    "dmae_weight30": ("dmae", ("--config.distill.weight=30.0",)),
    "dmae_last_blocks": ("dmae", ("--config.distill.pairs=((3,5),)",)),  # last <-> last
    "dmae_mask0.9": ("dmae", ("--config.mask_ratio=0.9",)),          # DMAE's high-mask claim
    "dmae_mask0.95": ("dmae", ("--config.mask_ratio=0.95",)),
    # AMD's L2 on raw features starts near 10 per alignment against a pixel loss of 0.65:
    # weights that bring them to the pixel loss's scale
    "amd_ref": ("amd", ()),
    "amd_weights0.1": ("amd", ("--config.amd.dir_weight=0.1", "--config.amd.gen_weight=0.1")),
    "amd_weights0.03": ("amd", ("--config.amd.dir_weight=0.03", "--config.amd.gen_weight=0.03")),
}
EVAL = ("--config.knn=True", "--config.train_examples=-1", "--config.test_examples=-1")
# Fine-tuning: the students of FINETUNE_BUDGET steps, and the same architecture from random
# initialisation ("scratch"), fine-tuned end to end on 10% of the train labels until the test
# accuracy has flattened (the config says how that was measured).
FINETUNE_BUDGET = 400
NAMES = {"scratch": "scratch", "mae": "MAE", "dmae": "DMAE", "amd": "AMD", "tinymim": "TinyMIM"}  # as tables print them
# pre-training budgets where a method has fewer than BUDGETS: TinyMIM joined the study later, at
# the budget that is fine-tuned
METHOD_BUDGETS = {"tinymim": (FINETUNE_BUDGET,)}
FINETUNE_CONFIG = "configs/finetune_fmnist.py:labels10"
FINETUNE_METHODS = ("scratch", "mae", "dmae", "amd", "tinymim")
TEACHER_METHODS = ("dmae", "amd", "tinymim")  # students that learn from the teacher


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    group: str          # teacher | core | finetune | sweeps
    method: str
    config: str
    overrides: tuple
    seed: int
    steps: int          # pre-training steps; -1: the config's own; 0: none (fine-tuned from scratch)
    variant: str

    def settings(self) -> dict:
        return {"group": self.group, "method": self.method, "config": self.config, "overrides": list(self.overrides),
                "seed": self.seed, "steps": self.steps, "variant": self.variant, "eval": list(EVAL)}


def plan() -> list[Run]:
    runs = [Run("teacher", "teacher", "mae", "configs/fmnist_mae_teacher.py", (), 0, -1, TEACHER_VARIANT)]
    # MAE and DMAE over every budget and seed first, then AMD, then TinyMIM: an interrupted
    # study has complete pairs for the main comparison first.
    for methods in (("mae", "dmae"), ("amd",), ("tinymim",)):
        for steps in BUDGETS:
            for seed in SEEDS:
                for method in methods:
                    if steps not in METHOD_BUDGETS.get(method, BUDGETS):
                        continue
                    config, extra = METHOD_CONFIGS[method]
                    runs.append(Run(f"{method}_b{steps}_s{seed}", "core", method, config, extra, seed, steps,
                                    STUDENT_VARIANT))
    for seed in SEEDS:
        for method in FINETUNE_METHODS:
            steps = 0 if method == "scratch" else FINETUNE_BUDGET
            runs.append(Run(f"ft_{method}" + (f"_b{steps}" if steps else "") + f"_s{seed}", "finetune", method,
                            FINETUNE_CONFIG, (), seed, steps, STUDENT_VARIANT))
    for seed in SEEDS:
        for name, (method, extra) in SWEEPS.items():
            config, base = METHOD_CONFIGS[method]
            runs.append(Run(f"{name}_b{SWEEP_BUDGET}_s{seed}", "sweeps", method, config, base + extra, seed,
                            SWEEP_BUDGET, STUDENT_VARIANT))
    return runs


# ---- running ------------------------------------------------------------------------------
OUTPUTS = ("results.json", "results.md", "teacher_curve.png", "budget_curve.png", "finetune_curve.png")


def revision() -> tuple[str, list[str]]:
    """The code's git revision and the files that differ from it, this study's outputs aside."""
    return runner.revision(tuple(f"benchmarks/fmnist/{o}" for o in OUTPUTS))


def pretrain_cmd(run: Run, workdir: str, data: list[str], teacher_dir: str) -> list[str]:
    """`python -m mdistill.main` for the run's pre-training (a fine-tuning run: its student's)."""
    config, overrides = METHOD_CONFIGS[run.method] if run.group == "finetune" else (run.config, run.overrides)
    cmd = [sys.executable, "-m", "mdistill.main", f"--config={config}", f"--workdir={workdir}",
           f"--config.seed={run.seed}", *data, *overrides]
    if run.steps > 0:
        cmd += [f"--config.total_steps={run.steps}", f"--config.warmup_steps={max(run.steps // 10, 1)}",
                f"--config.log_every={max(run.steps // 10, 1)}", f"--config.checkpoint_every={run.steps}"]
    if run.group == "teacher":
        cmd += ["--config.eval.knn_every=200"]  # the curve: k-NN on 10k/2k every 200 steps
    else:
        cmd += [f"--config.teacher.checkpoint={teacher_dir}"]
    return cmd


def linprobe_record(workdir: str, run: Run, data: list[str], log: str, baselines: bool) -> dict:
    """k-NN and the linear probe of the encoder in workdir (evaluated unless <workdir>/linprobe
    already holds this evaluation of it, as after an interrupted driver)."""
    eval_dir = os.path.join(workdir, "linprobe")
    path, eval_seconds = os.path.join(eval_dir, "linprobe.json"), None
    if os.path.exists(path):
        with open(path) as f:
            ev = json.load(f)
        if ev.get("pretrained") != workdir or (baselines and "baselines" not in ev):
            ev = None
    else:
        ev = None
    if ev is None:
        eval_seconds = execute([sys.executable, "-m", "mdistill.evaluate.linprobe",
                                "--config=configs/linprobe_fmnist.py", f"--config.pretrained={workdir}",
                                f"--config.student.variant={run.variant}", f"--config.baselines={baselines}",
                                f"--workdir={eval_dir}", *data, *EVAL], log)
        with open(path) as f:
            ev = json.load(f)
    record = {"eval_seconds": None if eval_seconds is None else round(eval_seconds, 1),
              "knn_top1": ev["knn_top1"], "probe_top1": ev["top1"]}
    if baselines:
        record["baselines"] = {name: {"knn_top1": b["knn_top1"], "probe_top1": b["top1"]}
                               for name, b in ev["baselines"].items()}
    return record


def run_one(run: Run, out: str, data: list[str], teacher_dir: str, baselines: bool) -> dict:
    """Pre-train, then k-NN and probe: the record of a teacher, core or sweep run."""
    workdir, log = os.path.join(out, run.name), os.path.join(out, f"{run.name}.log")
    pretrain_seconds = execute(pretrain_cmd(run, workdir, data, teacher_dir), log)
    return pretrained_record(run, workdir, data, log, teacher_dir, baselines, round(pretrain_seconds, 1))


def pretrained_record(run: Run, workdir: str, data: list[str], log: str, teacher_dir: str, baselines: bool,
                      pretrain_seconds) -> dict:
    """The record of the pre-trained run in workdir: its losses, k-NN and probe, digests."""
    from mdistill.metrics import read_metrics

    records = read_metrics(workdir)
    last = [r for r in records if "loss" in r][-1]
    rev, dirty = revision()
    record = {**run.settings(), "revision": rev, "dirty_files": dirty, "environment": environment(),
              "pretrain_seconds": pretrain_seconds, **linprobe_record(workdir, run, data, log, baselines),
              "final": {k: v for k, v in last.items() if k.endswith("loss")}, "digest": params_digest(workdir),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if run.method in TEACHER_METHODS:
        record["teacher_digest"] = params_digest(teacher_dir)
    if run.group == "teacher":
        record["knn_curve"] = [[r["step"], r["knn_top1"]] for r in records if "knn_top1" in r]
    return record


def run_finetune(run: Run, out: str, data: list[str], teacher_dir: str) -> dict:
    """Fine-tune the run's student (pre-trained again first where this machine lacks its
    workdir: the core run's command, so the same student up to the teacher it learns from),
    or the architecture from random initialisation; the record of a finetune run."""
    from mdistill.metrics import read_metrics

    workdir, log = os.path.join(out, run.name), os.path.join(out, f"{run.name}.log")
    record, pretrained = {"pretrain_seconds": 0.0}, []
    if run.method != "scratch":
        student = os.path.join(out, f"{run.method}_b{run.steps}_s{run.seed}")
        if not os.path.isdir(os.path.join(student, "checkpoints")):
            record["pretrain_seconds"] = round(execute(pretrain_cmd(run, student, data, teacher_dir), log), 1)
        record["student_digest"] = params_digest(student)
        if run.method in TEACHER_METHODS:
            record["teacher_digest"] = params_digest(teacher_dir)
        pretrained = [f"--config.pretrained={student}"]
    seconds = execute([sys.executable, "-m", "mdistill.evaluate.finetune", f"--config={run.config}",
                       f"--workdir={workdir}", f"--config.seed={run.seed}", *data, *pretrained], log)
    with open(os.path.join(workdir, "finetune.json")) as f:
        ft = json.load(f)
    rev, dirty = revision()
    curve = [[r["step"], r["top1"]] for r in read_metrics(workdir) if "top1" in r]
    return {**run.settings(), "revision": rev, "dirty_files": dirty, "environment": environment(), **record,
            "finetune_seconds": round(seconds, 1), "top1": ft["top1"], "top5": ft["top5"],
            "initial_top1": ft["initial_top1"], "finetune_steps": ft["steps"], "curve": curve,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


# what the driver and the report read of a record, by its group
RECORDS = Schema(key="group", fields={
    "teacher": ("group", "revision", "digest", "knn_top1", "probe_top1"),
    "core": ("group", "revision", "knn_top1", "probe_top1"),
    "sweeps": ("group", "revision", "knn_top1", "probe_top1"),
    "finetune": ("group", "revision", "config", "top1", "initial_top1", "finetune_steps", "curve")},
    instance=("knn_top1", "probe_top1"),
    numbers=frozenset({"knn_top1", "probe_top1", "top1", "initial_top1", "finetune_steps"}))


def load_results(path: str) -> dict:
    """The study's record ({'runs': {}} where there is none yet), or a ResultsError naming the
    file and what is wrong with it (a truncated write, a record without its results)."""
    return load_study_results(path, RECORDS)


def current_teacher(results: dict, run: Run, out: str, data: list[str], teacher_dir: str, save) -> str:
    """Make sure a trained teacher is in teacher_dir and return its digest. A teacher trained
    again on another machine or session need not be bit-identical to the recorded one (same
    recipe, other floating-point rounding); it is recorded as a further instance under
    results["teachers"], and the students it teaches carry its digest."""
    teacher = results["runs"]["teacher"]
    fresh = None
    if not os.path.isdir(os.path.join(teacher_dir, "checkpoints")):
        print("recorded teacher, but no checkpoint here: training it again for the students", flush=True)
        fresh = run_one(run, out, data, teacher_dir, baselines=False)
    digest = params_digest(teacher_dir)
    if digest != teacher["digest"] and digest not in results.get("teachers", {}):
        if fresh is None:  # a teacher trained again by an interrupted driver: its evaluation, if any, is reused
            fresh = pretrained_record(run, teacher_dir, data, os.path.join(out, "teacher.log"), teacher_dir,
                                      baselines=False, pretrain_seconds=None)
        results.setdefault("teachers", {})[digest] = fresh
        save()
        print(f"teacher {digest}: trained again, not bit-identical to the recorded {teacher['digest']} "
              f"(k-NN {fresh['knn_top1']:.2f} vs {teacher['knn_top1']:.2f}); recorded as another instance of the "
              "same recipe", flush=True)
    return digest


def cmd_run(args) -> None:
    groups = args.groups.split(",")
    todo = [r for r in plan() if r.group in groups or r.group == "teacher"]
    results = load_results(args.results)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = [f"--config.data.path={args.data_path}"]
    teacher_dir = os.path.join(out, "teacher")
    for run in until(todo, args.max_minutes):
        if is_recorded(results, run):
            if run.group == "teacher":
                current_teacher(results, run, out, data, teacher_dir, lambda: save_results(args.results, results))
            continue
        # The baselines are evaluated with the teacher (pixels, random xs/4) and with the first
        # student of the core grid (random mu/4).
        baselines = run.group == "teacher" or run.name == f"mae_b{BUDGETS[0]}_s{SEEDS[0]}"
        if run.group == "finetune":
            results["runs"][run.name] = run_finetune(run, out, data, teacher_dir)
        else:
            results["runs"][run.name] = run_one(run, out, data, teacher_dir, baselines)
        save_results(args.results, results)
        r = results["runs"][run.name]
        seconds = f"({r['pretrain_seconds']:.0f}s + {r.get('eval_seconds') or r.get('finetune_seconds') or 0:.0f}s)"
        scores = (f"fine-tuned top-1 {r['top1']:.2f}" if run.group == "finetune"
                  else f"k-NN {r['knn_top1']:.2f}, probe {r['probe_top1']:.2f}")
        print(f"{run.name}: {scores} {seconds}", flush=True)
    cmd_report(args)


# ---- reporting ------------------------------------------------------------------------------
METRICS = (("knn_top1", "k-NN"), ("probe_top1", "linear probe"))


def paired(runs: dict, a_prefix: str, b_prefix: str, metric: str):
    """Values of a_prefix_s{seed} and b_prefix_s{seed} for the seeds both have."""
    seeds = [s for s in SEEDS if f"{a_prefix}_s{s}" in runs and f"{b_prefix}_s{s}" in runs]
    return ([runs[f"{a_prefix}_s{s}"][metric] for s in seeds], [runs[f"{b_prefix}_s{s}"][metric] for s in seeds])


def teacher_steps(teacher: dict):
    """The teacher's training steps: its own setting, else the last step its curve logged."""
    if teacher["steps"] > 0:
        return teacher["steps"]
    return teacher["knn_curve"][-1][0] if teacher.get("knn_curve") else "the config's"


def report_text(results: dict) -> str:
    runs = results["runs"]
    lines = ["# Fashion-MNIST study: does distillation pay?", "",
             "Generated by `python benchmarks/fmnist/study.py report` from results.json. Accuracies: top-1 (%) "
             "on the 10k test images, k-NN (k=20, cosine, T=0.07, avg pool) and linear probe (cls token) "
             "trained on all 60k train images; students `mu/4`, teacher `xs/4`; mean ± std over seeds; "
             "differences are paired by seed, with their 95% t interval.", ""]
    lines += headline(runs)
    teacher = runs.get("teacher")
    if teacher:
        base = {**teacher.get("baselines", {})}
        first = runs.get(f"mae_b{BUDGETS[0]}_s{SEEDS[0]}", {})
        lines += ["## Baselines and the teacher", "", "| encoder | k-NN | linear probe |", "|---|---:|---:|"]
        rows = [("raw pixels", base.get("pixels")), (f"random {TEACHER_VARIANT}", base.get("random")),
                (f"random {STUDENT_VARIANT}", first.get("baselines", {}).get("random")),
                (f"teacher {TEACHER_VARIANT} ({teacher_steps(teacher)} steps)", teacher)]
        rows += [(f"teacher {TEACHER_VARIANT}, trained again ({digest})", r)
                 for digest, r in results.get("teachers", {}).items()]
        lines += [f"| {name} | {r['knn_top1']:.2f} | {r['probe_top1']:.2f} |" for name, r in rows if r]
        curve = ", ".join(f"{s}: {v:.1f}" for s, v in teacher.get("knn_curve", []))
        lines += ["", f"Teacher k-NN monitor (10k/2k) by step: {curve}.", ""]
        if results.get("teachers"):
            lines += [f"The teacher was trained again where a session lacked its checkpoint: same recipe, seed and "
                      f"code, yet not bit-identical (the cause is not established: MAE students trained again "
                      f"reproduced their recorded evaluations exactly); each instance above is recorded with its "
                      f"digest, and each distilled student with its teacher's: {teacher_counts(runs)}.", ""]

    lines += ["## Students at equal budgets", "",
              "| budget (steps) | method | runs | k-NN | linear probe | k-NN vs MAE | probe vs MAE |",
              "|---:|---|---:|---:|---:|---|---|"]
    for steps in BUDGETS:
        for method in METHOD_CONFIGS:
            done = [runs[f"{method}_b{steps}_s{s}"] for s in SEEDS if f"{method}_b{steps}_s{s}" in runs]
            if not done:
                continue
            cells = [mean_std([r[m] for r in done]) for m, _ in METRICS]
            diffs = ["" if method == "mae" else diff_cell(stats.paired_difference(
                *paired(runs, f"{method}_b{steps}", f"mae_b{steps}", m))) for m, _ in METRICS]
            lines.append(f"| {steps} | {NAMES[method]} | {len(done)} | {' | '.join(cells)} | {' | '.join(diffs)} |")

    sweep_rows = []
    for name, (method, extra) in SWEEPS.items():
        prefix = f"{name}_b{SWEEP_BUDGET}"
        done = [runs[f"{prefix}_s{s}"] for s in SEEDS if f"{prefix}_s{s}" in runs]
        if done:
            # the core config of the same method, from the same teacher instance where the sweeps have it
            reference = f"{method}_ref_b{SWEEP_BUDGET}"
            if name == f"{method}_ref" or not any(f"{reference}_s{s}" in runs for s in SEEDS):
                reference = f"{method}_b{SWEEP_BUDGET}"
            diffs = [diff_cell(stats.paired_difference(*paired(runs, prefix, f"mae_b{SWEEP_BUDGET}", m)))
                     for m, _ in METRICS]
            vs_core = diff_cell(stats.paired_difference(*paired(runs, prefix, reference, "knn_top1")))
            sweep_rows.append(f"| {name} | {' '.join(extra)} | {len(done)} | "
                              f"{' | '.join(mean_std([r[m] for r in done]) for m, _ in METRICS)} | "
                              f"{' | '.join(diffs)} | {vs_core} |")
    if sweep_rows:
        lines += ["", f"## One-factor sweeps at {SWEEP_BUDGET} steps", "",
                  "| variant | overrides | runs | k-NN | linear probe | k-NN vs MAE | probe vs MAE | "
                  "k-NN vs the reference |", "|---|---|---:|---:|---:|---|---|---|", *sweep_rows, "",
                  "The reference of a variant is the core config of its method trained again from the teacher "
                  "instance the sweeps learn from (`dmae_ref`, `amd_ref`); theirs is the core grid's student of "
                  "the same seed, so their row shows what the teacher instance changes (nothing where both "
                  "learnt from the same instance: then the runs are bit-identical)."]
    lines += finetune_section(runs)
    revisions = sorted({r["revision"] for r in runs.values()})
    digests = sorted({r["digest"] for r in runs.values() if r["group"] == "teacher"} | set(results.get("teachers", {})))
    lines += ["", f"Runs recorded: {len(runs)} of {len(plan())} planned; code revisions: {', '.join(revisions)}; "
              f"teacher digests: {', '.join(digests) or '-'}."]
    for amendment in results.get("amendments", []):
        lines += ["", f"Amended {amendment['date']} ({amendment['runs']} records): {amendment['what']}"]
    return "\n".join(lines) + "\n"


def headline(runs: dict) -> list[str]:
    """Which distilled students beat their MAE twins at FINETUNE_BUDGET steps, by each measure
    (better where the paired 95% t interval lies above zero), beside the MAE twins and the
    baselines: raw pixels and the random student architecture (fine-tuned: from scratch)."""
    measures = (("k-NN", "", "knn_top1"), ("linear probe", "", "probe_top1"), ("fine-tuning", "ft_", "top1"))

    def mean(prefix: str, metric: str) -> str:
        values = [runs[f"{prefix}_s{s}"][metric] for s in SEEDS if f"{prefix}_s{s}" in runs]
        return f"{np.mean(values):.2f}" if values else "-"

    rows = [f"| MAE (the twins) | {' | '.join(mean(f'{ft}mae_b{FINETUNE_BUDGET}', m) for _, ft, m in measures)} |"]
    for method in TEACHER_METHODS:
        cells = []
        for _, ft, metric in measures:
            name, twin = f"{ft}{method}_b{FINETUNE_BUDGET}", f"{ft}mae_b{FINETUNE_BUDGET}"
            diff = stats.paired_difference(*paired(runs, name, twin, metric))
            verdict = "**beats**" if diff["n"] > 1 and diff["t_ci"][0] > 0 else "does not beat"
            cells.append("-" if diff["n"] == 0 else
                         f"{mean(name, metric)}: {verdict} ({diff['mean']:+.2f}, n={diff['n']})")
        rows.append(f"| {NAMES[method]} | {' | '.join(cells)} |")
    baselines = runs.get("teacher", {}).get("baselines", {})
    random_student = runs.get(f"mae_b{BUDGETS[0]}_s{SEEDS[0]}", {}).get("baselines", {}).get("random")
    for label, b, finetuned in (("raw pixels", baselines.get("pixels"), "-"),
                                (f"random {STUDENT_VARIANT} (fine-tuned: from scratch)", random_student,
                                 mean("ft_scratch", "top1"))):
        if b:
            rows.append(f"| {label} | {b['knn_top1']:.2f} | {b['probe_top1']:.2f} | {finetuned} |")
    return ["## Headline", "",
            f"Each distilled `{STUDENT_VARIANT}` student of {FINETUNE_BUDGET} steps against its MAE twin (same seed, "
            "same budget): its mean top-1 (%), then **beats** where the paired 95% t interval of the difference "
            "lies above zero, with the mean difference in points and the number of seed pairs; the baselines "
            "below. Details further down.", "",
            f"| encoder | {' | '.join(name for name, _, _ in measures)} |", "|---|---|---|---|", *rows, ""]


def teacher_counts(runs: dict) -> str:
    counts = {}
    for r in runs.values():
        if r.get("teacher_digest"):
            counts[r["teacher_digest"]] = counts.get(r["teacher_digest"], 0) + 1
    return ", ".join(f"{d}: {n} students" for d, n in sorted(counts.items()))


def finetune_name(method: str, seed: int) -> str:
    return f"ft_{method}" + ("" if method == "scratch" else f"_b{FINETUNE_BUDGET}") + f"_s{seed}"


def finetune_section(runs: dict) -> list[str]:
    """Fine-tuned top-1 (the last evaluation, not the best: the test split picks nothing) per
    method, paired by seed against MAE and against the same network from scratch."""
    rows = []
    for method in FINETUNE_METHODS:
        done = {s: runs[finetune_name(method, s)] for s in SEEDS if finetune_name(method, s) in runs}
        if not done:
            continue
        cells = []
        for ref in ("mae", "scratch"):
            seeds = [s for s in done if finetune_name(ref, s) in runs]
            cells.append("" if ref == method else diff_cell(stats.paired_difference(
                [done[s]["top1"] for s in seeds], [runs[finetune_name(ref, s)]["top1"] for s in seeds])))
        name = ("scratch (random init)" if method == "scratch"
                else f"{NAMES[method]} student, {FINETUNE_BUDGET} steps")
        rows.append(f"| {name} | {len(done)} | {mean_std([r['top1'] for r in done.values()])} | "
                    f"{mean_std([r['initial_top1'] for r in done.values()])} | {cells[0]} | {cells[1]} |")
    if not rows:
        return []
    example = next(r for r in runs.values() if r["group"] == "finetune")
    return ["", "## Fine-tuning", "",
            f"End-to-end fine-tuning (`{example['config']}`, {example['finetune_steps']} steps) of the "
            f"{FINETUNE_BUDGET}-step students and of the same `{STUDENT_VARIANT}` from random initialisation; "
            "top-1 (%) on the 10k test images at the end of fine-tuning; `before`: the head's first evaluation.", "",
            "| encoder | runs | fine-tuned top-1 | before | vs MAE | vs scratch |", "|---|---:|---:|---:|---|---|",
            *rows]


def plots(results: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    teacher = runs.get("teacher")
    if teacher and teacher.get("knn_curve"):
        fig, ax = plt.subplots(figsize=(6, 4))
        steps, values = zip(*teacher["knn_curve"])
        ax.plot(steps, values, "o-", label=f"MAE teacher {TEACHER_VARIANT} (monitor, 10k/2k)")
        ax.plot(steps[-1], teacher["knn_top1"], "s", color="C0", label="the final teacher (60k/10k)")
        for name, style in (("pixels", "--"), ("random", ":")):
            b = teacher.get("baselines", {}).get(name)
            if b:
                ax.axhline(b["knn_top1"], linestyle=style, color="gray",
                           label=f"{'raw pixels' if name == 'pixels' else 'random ' + TEACHER_VARIANT} (60k/10k)")
        ax.set(xlabel="pre-training step (batch 128)", ylabel="k-NN top-1 (%)",
               title="Fashion-MNIST teacher: k-NN during pre-training")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "teacher_curve.png"), dpi=120)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, title) in zip(axes, METRICS):
        for i, method in enumerate(METHOD_CONFIGS):
            xs, means, stds = [], [], []
            for steps in BUDGETS:
                v = [runs[f"{method}_b{steps}_s{s}"][metric] for s in SEEDS if f"{method}_b{steps}_s{s}" in runs]
                if v:
                    xs.append(steps), means.append(np.mean(v)), stds.append(np.std(v, ddof=1) if len(v) > 1 else 0)
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{i}",
                            label=f"{NAMES[method]} student {STUDENT_VARIANT}")
        if teacher:
            ax.axhline(teacher[metric], color="k", linewidth=1, label="teacher")
            pixels = teacher.get("baselines", {}).get("pixels")
            if pixels:
                ax.axhline(pixels[metric], color="gray", linestyle="--", label="raw pixels")
        random_student = runs.get(f"mae_b{BUDGETS[0]}_s{SEEDS[0]}", {}).get("baselines", {}).get("random")
        if random_student:  # the students' own architecture, randomly initialised
            ax.axhline(random_student[metric], color="gray", linestyle=":", label=f"random {STUDENT_VARIANT}")
        ax.set(xscale="log", xlabel="student pre-training steps (batch 128)", ylabel=f"{title} top-1 (%)",
               title=title)
        ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "budget_curve.png"), dpi=120)
    tuned = [(m, [runs[finetune_name(m, s)]["curve"] for s in SEEDS if finetune_name(m, s) in runs])
             for m in FINETUNE_METHODS]
    if any(curves for _, curves in tuned):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (method, curves) in enumerate(tuned):
            for j, curve in enumerate(curves):
                steps, top1 = zip(*curve)
                ax.plot(steps, top1, color=f"C{i}", alpha=0.8, linewidth=1,
                        label=None if j else ("scratch" if method == "scratch" else NAMES[method]))
        ax.set(xlabel="fine-tuning step", ylabel="test top-1 (%)",
               title=f"Fine-tuning {STUDENT_VARIANT} on 10% of the labels (one line per seed)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "finetune_curve.png"), dpi=120)
    plt.close("all")


def cmd_report(args) -> None:
    results = load_results(args.results)
    text = report_text(results)
    out_dir = os.path.dirname(os.path.abspath(args.results))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    plots(results, out_dir)
    print(text)


def cmd_plan(args) -> None:
    results = load_results(args.results)
    for r in plan():
        print(f"{'done' if is_recorded(results, r) else 'todo'}  {r.name:<28} {r.config} {' '.join(r.overrides)}")


def main():
    flags.DEFINE_string("results", os.path.join(HERE, "results.json"), "the study's record")
    flags.DEFINE_string("out", "runs/fmnist_study", "workdirs (checkpoints, logs)")
    flags.DEFINE_string("groups", "teacher,core,finetune,sweeps", "of teacher, core, finetune, sweeps")
    flags.DEFINE_float("max_minutes", 0, "start no run after this long (0: no limit)")
    flags.DEFINE_string("data_path", os.environ.get("MDISTILL_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"),
                        "Fashion-MNIST IDX folder")
    commands = {"run": cmd_run, "report": cmd_report, "plan": cmd_plan}

    def command(argv):
        if len(argv) != 2 or argv[1] not in commands:
            raise app.UsageError(f"expected one command, one of {tuple(commands)}; got {argv[1:]}", exitcode=2)
        try:
            commands[argv[1]](flags.FLAGS)
        except ResultsError as e:
            sys.exit(f"error: {e}")

    app.run(command)


if __name__ == "__main__":
    main()
