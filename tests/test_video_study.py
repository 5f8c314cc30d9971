"""The Moving Fashion-MNIST study (benchmarks/moving_fmnist/study.py) and its config
(configs/moving_fmnist.py): the plan pairs every AMD student with its MAE twin, the report
puts both baselines beside the models and gives the paired differences on both labels, and
each role of the config is valid as the study runs it."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
    from benchmarks.moving_fmnist import study

    return study


def test_plan_pairs_each_amd_student_with_its_mae_twin(study):
    runs = study.plan()
    assert runs[0].name == "teacher" and runs[0].config == "configs/moving_fmnist.py"
    students = {(r.method, r.seed): r for r in runs[1:]}
    assert set(students) == {(m, s) for m in ("mae", "amd") for s in study.SEEDS}
    assert students["amd", 1].config.endswith(":role=student,method=amd")
    # seed-major, so an interrupted study holds whole pairs
    assert [r.seed for r in runs[1:]] == sorted(r.seed for r in runs[1:])


def fake(study):
    runs = {r.name: r for r in study.plan()}

    def rec(name, direction, cls, **extra):
        return {**runs[name].settings(), "knn_direction": direction, "knn_class": cls, "steps": 300, "digest": "t1",
                **extra}

    out = {"teacher": rec("teacher", 90.0, 60.0, knn_curve=[[250, 70.0], [500, 80.0]],
                          baselines={"pixels_direction": 99.0, "pixels_class": 30.0, "random_direction": 50.0,
                                     "random_class": 40.0})}
    for seed, (mae, amd) in enumerate([(60.0, 63.0), (61.0, 65.0), (59.0, 61.5)]):
        out[f"mae_s{seed}"] = rec(f"mae_s{seed}", mae, mae - 10)
        out[f"amd_s{seed}"] = rec(f"amd_s{seed}", amd, mae - 10.5, teacher_digest="t1")
    out["mae_s0"]["baselines"] = {"pixels_direction": 99.0, "pixels_class": 30.0, "random_direction": 48.0,
                                  "random_class": 41.0}
    return {"runs": out}


def test_report_has_the_baselines_and_paired_differences_on_both_labels(study):
    text = "\n".join(study.report_lines(fake(study)))
    assert "| raw pixels | - | 1 | 99.00 | 30.00 |" in text
    assert "| random | xs/8 | 1 | 50.00 | 40.00 |" in text and "| random | mu/8 | 1 | 48.00 | 41.00 |" in text
    assert "| AMD student (300 steps) | mu/8 | 3 |" in text
    # direction: +3, +4, +2.5 -> mean +3.17; class: -0.5 in every seed
    assert "- direction: +3.17 [" in text and "per seed +3.00, +4.00, +2.50" in text
    assert "- class: -0.50" in text
    assert "250: 70.0, 500: 80.0" in text


def test_every_role_of_the_config_is_valid(study):
    from configs import moving_fmnist
    from mdistill.config import validation

    for arg in ("", "role=student,method=mae", "role=student,method=amd", "role=student,method=amd,smoke"):
        c = moving_fmnist.get_config(arg or None)
        validation.validate(c, 1)
    c = moving_fmnist.get_config("role=student,method=amd")
    assert (c.num_frames, c.tubelet_size, c.image_size, c.data.flip) == (8, 2, 64, False)
    assert c.student.variant == "mu/8" and c.teacher.variant == "xs/8" and c.amd.teacher_mask_ratio == 0.75
    with pytest.raises(ValueError, match="role='x'"):
        moving_fmnist.get_config("role=x")
