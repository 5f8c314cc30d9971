"""The Fashion-MNIST study's driver (benchmarks/fmnist/study.py): its plan, its cache of
finished runs, and the tables and plots it regenerates from results.json alone."""

import importlib.util
import os

import pytest

from benchmarks.study import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
    from benchmarks.fmnist import study

    return study


def record(study, run, knn, probe):
    return {**run.settings(), "revision": "abc123", "pretrain_seconds": 60.0, "eval_seconds": 30.0,
            "knn_top1": knn, "probe_top1": probe, "final": {"loss": 0.5}, "digest": "d1", "finished": "now"}


def fake_results(study):
    runs = {r.name: r for r in study.plan()}
    out = {"teacher": {**record(study, runs["teacher"], 80.0, 78.0), "knn_curve": [[100, 60.0], [200, 70.0]],
                       "baselines": {"pixels": {"knn_top1": 85.0, "probe_top1": 83.0},
                                     "random": {"knn_top1": 62.0, "probe_top1": 70.0}}}}
    b = study.BUDGETS[0]
    for seed, (mae, dmae) in enumerate([(70.0, 72.1), (71.0, 72.4), (69.5, 71.0)]):
        out[f"mae_b{b}_s{seed}"] = record(study, runs[f"mae_b{b}_s{seed}"], mae, mae - 1)
        out[f"dmae_b{b}_s{seed}"] = record(study, runs[f"dmae_b{b}_s{seed}"], dmae, dmae - 1)
    out[f"mae_b{b}_s0"]["baselines"] = {"pixels": {"knn_top1": 85.0, "probe_top1": 83.0},
                                        "random": {"knn_top1": 61.0, "probe_top1": 69.0}}
    return {"runs": out}


def test_plan_pairs_every_student_with_its_mae_twin(study):
    runs = study.plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) and names[0] == "teacher"
    for r in runs[1:]:
        twin = f"mae_b{r.steps or study.FINETUNE_BUDGET}_s{r.seed}"
        assert twin in names, r.name
        assert r.variant == study.STUDENT_VARIANT and (r.steps > 0 or r.method == "scratch")
    finetune = [r for r in runs if r.group == "finetune"]
    assert sorted(r.name for r in finetune) == sorted(study.finetune_name(m, s) for m in study.FINETUNE_METHODS
                                                      for s in study.SEEDS)
    # the students pre-trained again for fine-tuning run the core runs' own command
    for r in finetune:
        if r.method != "scratch":
            core = next(c for c in runs if c.name == f"{r.method}_b{r.steps}_s{r.seed}")
            assert study.pretrain_cmd(r, "w", [], "t") == study.pretrain_cmd(core, "w", [], "t")
    assert {r.steps for r in runs if r.group == "core"} == set(study.BUDGETS)
    budgets = {m: study.METHOD_BUDGETS.get(m, study.BUDGETS) for m in study.METHOD_CONFIGS}
    assert budgets["tinymim"] == (study.FINETUNE_BUDGET,)
    for method, steps in budgets.items():
        assert sorted((r.steps, r.seed) for r in runs if r.group == "core" and r.method == method) == \
            sorted((b, s) for b in steps for s in study.SEEDS), method
    for r in runs:  # every config file the plan names exists
        assert os.path.exists(os.path.join(ROOT, r.config.split(":")[0])), r.config


def test_recorded_runs_are_skipped_unless_their_settings_changed(study):
    results = fake_results(study)
    run = next(r for r in study.plan() if r.name == f"dmae_b{study.BUDGETS[0]}_s0")
    assert study.is_recorded(results, run)
    results["runs"][run.name]["overrides"] = ["--config.distill.weight=1.0"]
    assert not study.is_recorded(results, run)
    assert not study.is_recorded(results, next(r for r in study.plan() if r.group == "sweeps"))


def test_report_shows_baselines_and_paired_differences(study, tmp_path):
    results = fake_results(study)
    text = study.report_text(results)
    assert "| raw pixels | 85.00 | 83.00 |" in text and "| random xs/4 | 62.00 | 70.00 |" in text
    assert "| random mu/4 | 61.00 | 69.00 |" in text
    diff = stats.paired_difference([72.1, 72.4, 71.0], [70.0, 71.0, 69.5])
    low, high = diff["t_ci"]
    b = study.BUDGETS[0]
    row = next(line for line in text.splitlines() if line.startswith(f"| {b} | DMAE |"))
    assert f"{diff['mean']:+.2f} [{low:+.2f}, {high:+.2f}] (n=3, {stats.verdict(diff)})" in row
    assert "Teacher k-NN monitor (10k/2k) by step: 100: 60.0, 200: 70.0." in text
    pytest.importorskip("matplotlib")
    study.plots(results, str(tmp_path))
    for name in ("teacher_curve.png", "budget_curve.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_save_results_is_atomic_and_round_trips(study, tmp_path):
    path = str(tmp_path / "results.json")
    study.save_results(path, fake_results(study))
    assert study.load_results(path) == fake_results(study)
    assert not os.path.exists(path + ".tmp")
    assert study.load_results(str(tmp_path / "none.json")) == {"runs": {}}


def test_report_shows_fine_tuning_against_mae_and_scratch(study):
    results = fake_results(study)
    runs = {r.name: r for r in study.plan()}
    tuned = {"scratch": (80.0, 81.0, 79.0), "mae": (85.0, 86.5, 84.0), "dmae": (86.0, 87.0, 85.5)}
    for method, values in tuned.items():
        for seed, top1 in enumerate(values):
            name = study.finetune_name(method, seed)
            results["runs"][name] = {**runs[name].settings(), "revision": "abc", "top1": top1, "top5": 99.0,
                                     "initial_top1": 10.0, "finetune_steps": 700, "pretrain_seconds": 0.0,
                                     "curve": [[100, top1 - 10], [700, top1]]}
    text = study.report_text(results)
    row = next(line for line in text.splitlines() if line.startswith("| DMAE student"))
    vs_mae = stats.paired_difference([86.0, 87.0, 85.5], [85.0, 86.5, 84.0])
    vs_scratch = stats.paired_difference([86.0, 87.0, 85.5], [80.0, 81.0, 79.0])
    assert row.startswith("| DMAE student, 400 steps | 3 | 86.17 ± 0.76 | 10.00 ± 0.00 |")
    assert f"{vs_mae['mean']:+.2f} [{vs_mae['t_ci'][0]:+.2f}, {vs_mae['t_ci'][1]:+.2f}]" in row
    assert f"{vs_scratch['mean']:+.2f} [{vs_scratch['t_ci'][0]:+.2f}, {vs_scratch['t_ci'][1]:+.2f}]" in row
    assert "| scratch (random init) | 3 | 80.00 ± 1.00 |" in text
    # the headline: each distilled method's verdict beside its twins and the baselines
    headline = text.split("## Headline", 1)[1].split("##", 1)[0]
    dmae = next(line for line in headline.splitlines() if line.startswith("| DMAE |"))
    verdict = "**beats**" if vs_mae["t_ci"][0] > 0 else "does not beat"
    assert dmae.endswith(f"| 86.17: {verdict} ({vs_mae['mean']:+.2f}, n=3) |")
    assert "| raw pixels | 85.00 | 83.00 | - |" in headline
    assert f"| random {study.STUDENT_VARIANT} (fine-tuned: from scratch) | 61.00 | 69.00 | 80.00 |" in headline


def test_a_teacher_trained_again_is_recorded_as_another_instance(study, tmp_path, monkeypatch):
    """A session without the teacher's checkpoint trains it again; where the result is not
    bit-identical, the driver keeps both teachers and goes on (it used to stop)."""
    results = fake_results(study)
    teacher = next(r for r in study.plan() if r.group == "teacher")
    (tmp_path / "teacher" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(study, "params_digest", lambda workdir: "d2")
    monkeypatch.setattr(study, "linprobe_record", lambda *a, **k: {"eval_seconds": 1.0, "knn_top1": 81.0,
                                                                   "probe_top1": 79.0})
    monkeypatch.setattr(study, "revision", lambda: ("abc", []))
    with open(tmp_path / "teacher" / "metrics.jsonl", "w") as f:
        f.write('{"step": 200, "loss": 0.5, "knn_top1": 71.0}\n')
    saved = []
    digest = study.current_teacher(results, teacher, str(tmp_path), [], str(tmp_path / "teacher"),
                                   lambda: saved.append(True))
    assert digest == "d2" and saved and results["teachers"]["d2"]["knn_top1"] == 81.0
    assert results["teachers"]["d2"]["knn_curve"] == [[200, 71.0]]
    assert results["runs"]["teacher"]["digest"] == "d1"  # the recorded teacher stays
    assert "teacher xs/4, trained again (d2) | 81.00 | 79.00 |" in study.report_text(results)
    saved.clear()
    assert study.current_teacher(results, teacher, str(tmp_path), [], str(tmp_path / "teacher"),
                                 lambda: saved.append(True)) == "d2" and not saved


def test_the_fine_tuning_config_is_the_recipe_the_study_states(study):
    path, arg = study.FINETUNE_CONFIG.split(":")
    spec = importlib.util.spec_from_file_location("finetune_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    from mdistill.config.validation import validate

    validate(c, num_devices=1)
    assert (c.train_examples, c.batch_size, c.num_epochs, c.student.variant) == (6000, 256, 40.0, study.STUDENT_VARIANT)
    assert c.total_steps < 0 and c.test_examples < 0  # the schedule from the epochs; all 10k test images
    with pytest.raises(ValueError, match="unknown variant 'labels11'"):
        module.get_config("labels11")
