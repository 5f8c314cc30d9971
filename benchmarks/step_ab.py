"""Paired A/B of one train step compiled with different XLA compiler options.

On a shared CPU host the same step varies by 10-15% from one run to the next, which is
more than most changes one wants to measure. This script compiles the step once per variant
in one process and then alternates the variants call by call (A B, then B A, ...), so that
each round compares them under the same conditions. It prints one JSON line per variant:
its median step time, and the median over rounds of the first variant's time divided by its
own (the paired speed-up), with the rounds it won. The first step's loss is checked to be
the same for every variant.

  python -m benchmarks.step_ab --method=dmae --model=B --batch=8 --rounds=12 \\
      --variant= --variant=xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT

A variant is a comma-separated list of XLA option=value pairs, given to the compiler for
the train step as `jax.jit(...).lower(...).compile(compiler_options=...)` would; the empty
variant is XLA's defaults, what mdistill.main runs.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import step as step_bench


def parse_variant(text: str) -> dict:
    """'a=1,b=true,c=NAME' -> {'a': 1, 'b': True, 'c': 'NAME'}; '' -> {}."""
    options = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--variant item {item!r}: expected option=value")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                options[key] = value
    return options


def paired_summary(times: dict[str, list[float]]) -> list[dict]:
    """Per variant: median seconds, and the first variant's time over its own, round by round."""
    names = list(times)
    base = times[names[0]]
    out = []
    for name in names:
        ratios = [b / t for b, t in zip(base, times[name])]
        out.append({"variant": name, "step_s_median": round(statistics.median(times[name]), 4),
                    "step_s_all": [round(t, 4) for t in times[name]],
                    "speedup_vs_first_median": round(statistics.median(ratios), 4),
                    "rounds_faster_than_first": sum(r > 1.0 for r in ratios), "rounds": len(ratios)})
    return out


def define_flags() -> None:
    step_bench.define_one_step_flags()
    flags.adopt_module_key_flags(step_bench)  # listed by --help as this script's own
    flags.DEFINE_integer("rounds", 12, "rounds of one call per variant", lower_bound=1)
    flags.DEFINE_multi_string("variant", None, "option=value[,option=value...]; repeat for each variant "
                              "(at least two; --variant= is XLA's defaults)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    variants = args.variant or []
    if len(variants) < 2:
        raise app.UsageError("give at least two --variant (the empty one, --variant=, is XLA's defaults)", exitcode=2)
    if len(set(variants)) != len(variants):
        raise app.UsageError(f"--variant given twice: {variants}", exitcode=2)
    try:
        options = {v: parse_variant(v) for v in variants}
    except ValueError as e:
        raise app.UsageError(str(e), exitcode=2) from e

    trainer = step_bench.one_step_trainer(args)
    lowered = trainer.step_fn.lower(trainer.abstract_state(), trainer.abstract_teacher(), trainer.batch_shape())
    compiled = {v: lowered.compile(compiler_options=options[v] or None) for v in variants}
    state, teacher, images = step_bench.step_inputs(trainer)
    # the step donates its state: every variant advances a copy of its own
    states = {v: jax.tree.map(lambda x: x.copy(), state) for v in variants}
    losses = {}
    for v in variants:  # first call of each: warm-up, and the losses must agree
        states[v], metrics = compiled[v](states[v], teacher, images)
        losses[v] = float(metrics["loss"])
    first = losses[variants[0]]
    for v, loss in losses.items():
        if not np.isclose(loss, first, rtol=1e-4):
            raise SystemExit(f"variant {v!r} gives loss {loss} on the first step, the first variant {first}")

    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            t = time.perf_counter()
            states[v], metrics = compiled[v](states[v], teacher, images)
            jax.block_until_ready((states[v], metrics))
            times[v].append(time.perf_counter() - t)
    for record in paired_summary(times):
        record.update(bench="step_ab", method=args.method, model=args.model, batch=args.batch,
                      options=options[record["variant"]], first_step_loss=losses[record["variant"]],
                      backend=jax.default_backend())
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    from mdistill import hugepages
    hugepages.ensure()
    define_flags()
    app.run(main)
