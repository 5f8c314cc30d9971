"""Training: the state, the jitted sharded step, and the loop (log, checkpoint)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mdistill import checkpoint, data, optim, sharding
from mdistill.metrics import MetricsWriter, log
from mdistill.objectives import build_objective


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Plan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_steps(config) -> Plan:
    """Steps from epochs (or explicit step counts where set, >= 0)."""
    per_epoch = max(data.dataset_size(config) // config.batch_size, 1)
    total = config.total_steps if config.total_steps >= 0 else round(config.num_epochs * per_epoch)
    warmup = config.warmup_steps if config.warmup_steps >= 0 else round(config.warmup_epochs * per_epoch)
    return Plan(per_epoch, int(total), int(min(warmup, total)))


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


class Trainer:
    """Builds the objective, optimizer and the compiled step for one config on one mesh."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.objective = build_objective(config)
        self.plan = plan_steps(config)
        self.lr_schedule = optim.schedule(config.optim, config.batch_size, self.plan.total_steps,
                                          self.plan.warmup_steps)
        self.tx = optim.build_optimizer(config.optim, self.lr_schedule)
        self.init_rng, self.base_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        self.replicated = sharding.replicated(mesh)
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.step_fn = jax.jit(self._train_step, in_shardings=(self.replicated, self.replicated, self.batch_sharding),
                               out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

    # ---- shapes -------------------------------------------------------------------------
    def batch_shape(self, batch_size: int | None = None) -> jax.ShapeDtypeStruct:
        c = self.config
        shape = (batch_size or c.batch_size, c.image_size, c.image_size, c.data.channels)
        return jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=self.batch_sharding)

    def _init_state(self, rng):
        images = jnp.zeros((1,) + self.batch_shape().shape[1:], jnp.uint8)
        params = self.objective.init(rng, images)
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    def init_state(self) -> TrainState:
        init = jax.jit(self._init_state, out_shardings=self.replicated)
        return init(self.init_rng)

    def abstract_state(self) -> TrainState:
        shapes = jax.eval_shape(self._init_state, self.base_rng)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    # ---- teacher ------------------------------------------------------------------------
    def abstract_teacher(self):
        if not self.objective.uses_teacher:
            return None
        teacher = self.objective.teacher
        shapes = jax.eval_shape(teacher.init, self.base_rng, jnp.zeros(self.batch_shape(1).shape, jnp.float32))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    def load_teacher(self):
        """Frozen teacher parameters, replicated on the mesh (None for methods without one)."""
        if not self.objective.uses_teacher:
            return None
        teacher, path = self.objective.teacher, self.config.teacher.checkpoint
        if not path:
            log("WARNING: config.teacher.checkpoint is empty: distilling from a randomly "
                "initialised teacher (only meaningful for smoke tests)")
            images = jnp.zeros(self.batch_shape(1).shape, jnp.float32)
            return jax.jit(teacher.init, out_shardings=self.replicated)(jax.random.PRNGKey(self.config.seed + 1), images)
        params, _ = checkpoint.load_params(path, self.replicated)
        encoder = params["mae"]["encoder"] if "mae" in params else params.get("encoder", params)
        check_same_shapes(encoder, self.abstract_teacher(), f"teacher checkpoint {path}",
                          f"config.teacher.variant={self.config.teacher.variant!r}")
        return teacher.prepare(encoder)

    # ---- the step -----------------------------------------------------------------------
    def _grads(self, params, teacher_params, images, rng):
        """Gradients and metrics over the global batch, accumulated over micro-batches."""
        grad_fn = jax.value_and_grad(self.objective.loss, has_aux=True)
        accum = self.config.optim.accum_steps
        if accum == 1:
            (_, metrics), grads = grad_fn(params, teacher_params, images, rng)
            return grads, metrics
        # Micro-batch i takes samples i, i+accum, ...: each stays spread over all devices.
        micro = images.reshape((images.shape[0] // accum, accum) + images.shape[1:]).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(self.mesh, P(None, sharding.BATCH_AXES)))

        def body(grad_sum, xs):
            i, batch = xs
            (_, m), g = grad_fn(params, teacher_params, batch, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, grad_sum, g), m

        zeros = jax.tree.map(jnp.zeros_like, params)
        grad_sum, metrics = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
        return (jax.tree.map(lambda g: g / accum, grad_sum),
                jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics))

    def _train_step(self, state: TrainState, teacher_params, images):
        rng = jax.random.fold_in(self.base_rng, state.step)
        grads, metrics = self._grads(state.params, teacher_params, images, rng)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, lr=self.lr_schedule(state.step), grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, params, opt_state), metrics

    def compiled_step(self):
        """The step compiled abstractly (no data, no parameters in memory)."""
        return self.step_fn.lower(self.abstract_state(), self.abstract_teacher(), self.batch_shape()).compile()


def check_same_shapes(actual, expected, what: str, hint: str) -> None:
    """Raise one error listing every parameter whose presence or shape differs."""
    flat_a = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(actual)[0]}
    flat_e = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    problems = [f"  {k}: missing from the checkpoint (expected {flat_e[k]})" for k in flat_e if k not in flat_a]
    problems += [f"  {k}: shape {flat_a[k]} in the checkpoint, {flat_e[k]} expected"
                 for k in flat_e if k in flat_a and tuple(flat_a[k]) != tuple(flat_e[k])]
    problems += [f"  {k}: in the checkpoint but not in the model" for k in flat_a if k not in flat_e]
    if problems:
        raise ValueError(f"{what} does not match {hint}:\n" + "\n".join(problems[:20])
                         + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def summarize(config, mesh) -> dict:
    """What --dry_run prints: sizes, plan and XLA's FLOPs for one compiled step."""
    trainer = Trainer(config, mesh)
    state, teacher = trainer.abstract_state(), trainer.abstract_teacher()
    objective = trainer.objective
    t0 = time.time()
    compiled = trainer.compiled_step()
    return {
        "method": config.method,
        "student": config.student.variant,
        "student_params": count_params(state.params["mae"]["encoder"]),
        "trainable_params": count_params(state.params),
        "teacher": config.teacher.variant if objective.uses_teacher else None,
        "teacher_params": count_params(teacher) if teacher is not None else 0,
        "teacher_blocks_run": objective.teacher.blocks_run(objective.teacher_blocks) if teacher is not None else 0,
        "global_batch_size": config.batch_size,
        "devices": mesh.size,
        "steps_per_epoch": trainer.plan.steps_per_epoch,
        "total_steps": trainer.plan.total_steps,
        "warmup_steps": trainer.plan.warmup_steps,
        "peak_lr": optim.peak_learning_rate(config.optim, config.batch_size),
        "compile_seconds": round(time.time() - t0, 1),
        "flops_per_step": flops_of(compiled),
    }


def train(config, workdir: str, mesh=None) -> dict:
    """Run (or resume) training; returns the last logged metrics."""
    mesh = mesh or sharding.make_mesh()
    trainer = Trainer(config, mesh)
    plan = trainer.plan
    teacher_params = trainer.load_teacher()
    mngr = checkpoint.manager(checkpoint.checkpoint_dir(workdir), keep=config.keep_checkpoints)
    state = trainer.init_state()
    if mngr.latest_step() is not None:
        params, opt_state, meta = checkpoint.restore(mngr, mngr.latest_step(), trainer.abstract_state().params,
                                                     trainer.abstract_state().opt_state)
        state = TrainState(jnp.asarray(meta["step"], jnp.int32), params, opt_state)
        log(f"resumed from {mngr.directory} at step {meta['step']}")
    start = int(state.step)
    source = data.build_source(config)
    batches = data.BatchIterator(source, config.batch_size, trainer.batch_sharding, config.seed, start)
    writer = MetricsWriter(workdir)
    log(f"{config.method}: {count_params(state.params)} trainable params, {plan.total_steps} steps "
        f"({plan.steps_per_epoch}/epoch), global batch {config.batch_size} on {mesh.size} device(s)")

    pending, last, t_log, step_log = [], {}, time.time(), start
    for step in range(start, plan.total_steps):
        state, metrics = trainer.step_fn(state, teacher_params, next(batches))
        pending.append(metrics)  # stays on device until the next log
        done = step + 1
        if done % config.log_every == 0 or done == plan.total_steps:
            fetched = jax.device_get(pending)
            last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            now = time.time()
            ips = (done - step_log) * config.batch_size / max(now - t_log, 1e-9)
            last.update(step=done, images_per_sec=ips)
            writer.write(done, last)
            eta = (plan.total_steps - done) * config.batch_size / max(ips, 1e-9)
            log(format_line(done, plan.total_steps, last, eta))
            pending, t_log, step_log = [], now, done
            if not np.isfinite(last["loss"]):
                raise FloatingPointError(f"non-finite loss {last['loss']} at step {done}: {last}")
        if done % config.checkpoint_every == 0 or done == plan.total_steps:
            checkpoint.save(mngr, done, state.params, state.opt_state,
                            {"step": done, "config": config.to_dict()})
    mngr.wait_until_finished()
    writer.close()
    return last


def format_line(step: int, total: int, m: dict, eta: float) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in m.items() if k.endswith("loss"))
    return (f"step {step}/{total} | {losses} | lr {m['lr']:.2e} | {m['images_per_sec']:.0f} img/s | "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
