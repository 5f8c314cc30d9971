"""Where does a train step's time go? Times the parts of one method's step separately.

For one (method, model) of benchmarks/step.py it compiles and times, each on its own:
the whole step, the loss's gradients (forward + backward, no optimizer), the loss alone
(forward), the optimizer update with the gradient norm, and for distillation methods the
teacher's partial forward. Each is the median of --steps runs after one warm-up; one JSON
line per part, with the model's FLOPs for it where benchmarks.flops names them.

  python -m benchmarks.step_parts --method=dmae --model=B --batch=8
"""

from __future__ import annotations

import statistics
import time

import jax
import optax
from absl import app, flags

from benchmarks import flops as flops_model
from benchmarks import step as step_bench


def median_time(fn, *args, steps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def define_flags() -> None:
    step_bench.define_one_step_flags()
    flags.adopt_module_key_flags(step_bench)  # listed by --help as this script's own
    flags.DEFINE_integer("steps", 4, "timed runs of each part (the median is reported)", lower_bound=1)
    flags.DEFINE_string("out", "", "also append the JSON lines to this file")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    trainer = step_bench.one_step_trainer(args)
    objective = trainer.objective
    state, teacher, images = step_bench.step_inputs(trainer)
    rng = jax.random.PRNGKey(3)
    terms = flops_model.step_flops(trainer.config)

    def report(part, seconds, flops=None):
        record = dict(bench="step_part", method=args.method, model=args.model, batch=args.batch, part=part,
                      seconds=round(seconds, 4))
        if flops:
            record.update(model_flops=flops, useful_flops_per_s=flops / seconds)
        step_bench.emit(args.out, **record)

    loss = lambda params, teacher_params, x: objective.loss(params, teacher_params, x, rng)[0]  # noqa: E731
    grads = jax.jit(jax.grad(loss))
    forward_flops = terms["total"] - terms["backward"]

    report("step", median_time(jax.jit(trainer._train_step), state, teacher, images, steps=args.steps),
           terms["total"])
    report("forward_and_backward", median_time(grads, state.params, teacher, images, steps=args.steps),
           terms["total"])
    report("forward", median_time(jax.jit(loss), state.params, teacher, images, steps=args.steps), forward_flops)

    def update(state, g):
        updates, opt_state = trainer.tx.update(g, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state, optax.tree.norm(g)

    g = grads(state.params, teacher, images)
    report("optimizer_update", median_time(jax.jit(update), state, g, steps=args.steps))
    if teacher is not None:
        x = objective.prepare_images(images)
        ids = objective.sample_masks(rng, x.shape[0]).teacher_ids  # AMD: its own, larger visible set
        teacher_forward = jax.jit(lambda t, x: objective.teacher.features(t, x, ids, objective.teacher_blocks))
        report("teacher_forward", median_time(teacher_forward, teacher, x, steps=args.steps),
               terms["teacher_forward"])


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # as mdistill.main does (MDISTILL_HUGEPAGES=0: off)
    define_flags()
    app.run(main)
