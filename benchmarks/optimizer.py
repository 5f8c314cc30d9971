"""AdamW's update, per step and per parameter: optax's adamw over the parameter tree (main's
optimizer, config.optim.layout='tree') against the flattened update ('flat'), each also with
a bfloat16 first moment (config.optim.mu_dtype), on one (method, model) of benchmarks/step.py.

1. update: the compiled update alone (tx.update + apply_updates + the gradient norm, as the
   train step runs it) on the model's parameters and one gradient, the variants alternated
   call by call for --rounds rounds (a shared machine drifts); ms per update and ns per
   parameter, and the paired ratio tree / variant.
2. step: the whole train step with each layout, alternated the same way (--step_rounds; 0
   skips it), and the first step's loss of each, which must agree.
3. loss: --loss_steps steps of the tiny (':smoke') config on fixed random batches with each
   variant: the largest difference from the tree layout's losses (flat: float rounding at
   most; bfloat16 first moment: its measured effect).

  python -m benchmarks.optimizer --method=mae --model=B --batch=8
  python -m benchmarks.optimizer --method=dmae --model=B --batch=256 --dtype=bfloat16 --teacher_dtype=bfloat16

One JSON line per figure ({"bench": "optimizer_update" | "optimizer_step" | "optimizer_loss", ...}).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np
import optax
from absl import app, flags

from benchmarks import step as step_bench

VARIANTS = {"tree": ("tree", "float32"), "flat": ("flat", "float32"),
            "tree_mu_bf16": ("tree", "bfloat16"), "flat_mu_bf16": ("flat", "bfloat16")}


def trainer_for(args, layout: str, mu_dtype: str, method=None, model=None):
    args.optim_layout, args.mu_dtype = layout, mu_dtype
    config = step_bench.build_config(method or args.method, model or args.model, args)
    return step_bench.train.Trainer(config, step_bench.sharding.make_mesh())


def alternate(calls: dict, rounds: int) -> dict[str, list[float]]:
    """name -> seconds of each call, the calls alternated (forward, then backward order)."""
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def bench_update(args, out):
    base = trainer_for(args, "tree", "float32")
    state, teacher, images = step_bench.step_inputs(base)
    grads = jax.jit(jax.grad(lambda p: base.objective.loss(p, teacher, images, jax.random.PRNGKey(3))[0]))(
        state.params)
    count = sum(x.size for x in jax.tree.leaves(state.params))
    leaves = len(jax.tree.leaves(state.params))
    calls = {}
    for name in args.variants:
        tx = trainer_for(args, *VARIANTS[name]).tx
        opt_state = jax.jit(tx.init)(state.params)

        def update(params, opt_state, g, tx=tx):
            updates, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, optax.tree.norm(g)

        fn = jax.jit(update)
        jax.block_until_ready(fn(state.params, opt_state, grads))  # compile
        calls[name] = (lambda fn=fn, s=opt_state: fn(state.params, s, grads))
    times = alternate(calls, args.rounds)
    for name in args.variants:
        median = statistics.median(times[name])
        ratios = [a / b for a, b in zip(times["tree"], times[name])]
        step_bench.emit(out, bench="optimizer_update", method=args.method, model=args.model, variant=name,
                        layout=VARIANTS[name][0], mu_dtype=VARIANTS[name][1], parameters=count, leaves=leaves,
                        backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                        ms_median=round(median * 1e3, 3), ms_all=[round(t * 1e3, 3) for t in times[name]],
                        ns_per_parameter=round(median / count * 1e9, 4),
                        paired_speedup_over_tree=round(statistics.median(ratios), 3))


def bench_step(args, out):
    calls, losses = {}, {}
    for name in ("tree", "flat"):
        trainer = trainer_for(args, *VARIANTS[name])
        state, teacher, images = step_bench.step_inputs(trainer)
        step = jax.jit(trainer._train_step)  # no donation: the same state is reused every call
        _, metrics = jax.block_until_ready(step(state, teacher, images))
        losses[name] = float(metrics["loss"])
        calls[name] = (lambda step=step, s=state, t=teacher, x=images: step(s, t, x)[1])
    times = alternate(calls, args.step_rounds)
    for name in calls:
        ratios = [a / b for a, b in zip(times["tree"], times[name])]
        step_bench.emit(out, bench="optimizer_step", method=args.method, model=args.model, batch=args.batch,
                        dtype=args.dtype, layout=name, backend=jax.default_backend(),
                        device_kind=jax.devices()[0].device_kind,
                        step_s_median=round(statistics.median(times[name]), 4),
                        step_s_all=[round(t, 4) for t in times[name]],
                        paired_speedup_over_tree=round(statistics.median(ratios), 3),
                        first_loss=losses[name], first_loss_equal_to_tree=losses[name] == losses["tree"])


def bench_loss(args, out):
    """The tiny config's losses over loss_steps steps, each variant from the same init."""
    curves = {}
    for name in args.variants:
        saved = args.batch, args.dtype, args.teacher_dtype
        args.batch, args.dtype, args.teacher_dtype = 16, "float32", "float32"
        trainer = trainer_for(args, *VARIANTS[name], model="tiny")
        args.batch, args.dtype, args.teacher_dtype = saved
        state, teacher, _ = step_bench.step_inputs(trainer)
        shape = trainer.batch_shape().shape
        curve = []
        for i in range(args.loss_steps):
            images = jax.device_put(np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8),
                                    trainer.batch_sharding)
            state, metrics = trainer.step_fn(state, teacher, images)
            curve.append(float(metrics["loss"]))
        curves[name] = curve
    for name, curve in curves.items():
        diff = np.abs(np.asarray(curve) - np.asarray(curves["tree"]))
        step_bench.emit(out, bench="optimizer_loss", method=args.method, model="tiny", variant=name,
                        steps=args.loss_steps, first_loss=curve[0], last_loss=curve[-1],
                        mean_loss_last_10=round(float(np.mean(curve[-10:])), 6),
                        max_abs_loss_difference_from_tree=float(diff.max()),
                        bitwise_equal_to_tree=bool(diff.max() == 0))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    unknown = sorted(set(args.variants) - set(VARIANTS)) + ([] if "tree" in args.variants else ["(tree is needed)"])
    if unknown:
        raise app.UsageError(f"--variants: {unknown}, expected some of {list(VARIANTS)} with tree", exitcode=2)
    step_bench.emit(args.out, bench="env", backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
                    jax=jax.__version__, optax=optax.__version__, cpu_count=os.cpu_count(),
                    loadavg=[round(x, 2) for x in os.getloadavg()])
    if args.rounds:
        bench_update(args, args.out)
    if args.step_rounds:
        bench_step(args, args.out)
    if args.loss_steps:
        bench_loss(args, args.out)


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()
    step_bench.define_one_step_flags()
    flags.DEFINE_list("variants", list(VARIANTS), f"of {list(VARIANTS)}; tree is the reference")
    flags.DEFINE_integer("rounds", 10, "alternated calls of each update variant (0: skip)")
    flags.DEFINE_integer("step_rounds", 4, "alternated whole train steps per layout (0: skip)")
    flags.DEFINE_integer("loss_steps", 40, "tiny-config steps compared per variant (0: skip)")
    flags.DEFINE_string("out", "", "also append the JSON lines to this file")
    app.run(main)
