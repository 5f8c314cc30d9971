"""benchmarks/attention.py: every formulation it times gives softmax attention's gradients,
and its records carry the fields RESULTS.md quotes."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    from benchmarks import attention

    return attention


def test_formulations_agree_and_records_are_complete():
    bench = load()
    records = bench.bench_shape("tiny", tokens=9, width=16, heads=2, batch=2, rounds=2)
    assert {(r["formulation"], r["part"]) for r in records} == {
        (f, p) for f in bench.FORMULATIONS for p in ("forward", "forward_backward")}
    for r in records:
        assert r["grad_max_rel_diff_vs_softmax_first"] < 1e-5, r
        assert r["ms_median"] > 0 and r["gflop_per_s"] > 0


def test_flops_are_the_two_products():
    bench = load()
    # decoder of the DMAE step: 8 images x 197 tokens x 512 channels; q k^T and p v are
    # 2 * 197 * 197 * 512 multiply-adds each per image
    assert bench.attention_flops(8, 197, 512, backward=False) == 8 * 2 * 2 * 197 * 197 * 512
    assert bench.attention_flops(8, 197, 512, backward=True) == 3 * 8 * 2 * 2 * 197 * 197 * 512
