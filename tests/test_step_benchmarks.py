"""benchmarks/step.py and benchmarks/step_ab.py run end to end on the tiny model and print
the JSON lines RESULTS.md quotes; step_ab's variant parsing and paired statistics."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, timeout=600):
    module = "benchmarks." + script.removesuffix(".py")
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r, lines


@pytest.mark.slow
def test_step_benchmark_tiny():
    r, lines = run("step.py", "--models=tiny", "--methods=mae,dmae", "--batch=8", "--steps=2", "--warmup=1")
    assert r.returncode == 0, r.stderr[-3000:]
    steps = {line["method"]: line for line in lines if line["bench"] == "step"}
    assert set(steps) == {"mae", "dmae"}
    for line in steps.values():
        assert line["batch"] == 8 and len(line["step_s_all"]) == 2 and line["step_s_median"] > 0
        assert line["model_flops"] > 0 and line["xla_flops"] > 0 and 0 < line["fraction_of_matmul"]
    # the teacher's partial forward is DMAE's extra work
    assert steps["dmae"]["model_flops_terms"]["teacher_forward"] > 0
    assert steps["dmae"]["model_flops"] > steps["mae"]["model_flops"]
    assert any(line["bench"] == "dmae_overhead" for line in lines)


@pytest.mark.slow
def test_step_ab_tiny_compares_compiler_options():
    variant = "xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
    r, lines = run("step_ab.py", "--method=mae", "--model=tiny", "--batch=8", "--rounds=2",
                   "--variant=", f"--variant={variant}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [line["variant"] for line in lines] == ["", variant]
    assert lines[1]["options"]["xla_cpu_scheduler_type"] == "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
    assert lines[0]["speedup_vs_first_median"] == 1.0 and lines[1]["rounds"] == 2
    assert lines[0]["first_step_loss"] == pytest.approx(lines[1]["first_step_loss"], rel=1e-4)


def test_step_ab_needs_two_variants():
    r, _ = run("step_ab.py", "--model=tiny", "--variant=", timeout=120)
    assert r.returncode == 2 and "at least two --variant" in r.stderr


def test_variant_parsing_and_paired_statistics():
    from benchmarks import step_ab

    assert step_ab.parse_variant("") == {}
    assert step_ab.parse_variant("a=1, b=true,c=NAME") == {"a": 1, "b": True, "c": "NAME"}
    with pytest.raises(ValueError, match="expected option=value"):
        step_ab.parse_variant("a=1,b")
    summary = step_ab.paired_summary({"A": [2.0, 4.0, 3.0], "B": [1.0, 5.0, 2.0]})
    assert summary[0]["speedup_vs_first_median"] == 1.0
    # ratios A/B per round: 2.0, 0.8, 1.5 -> median 1.5, two rounds won
    assert summary[1]["speedup_vs_first_median"] == 1.5 and summary[1]["rounds_faster_than_first"] == 2
    assert summary[1]["step_s_median"] == 2.0
