"""Pre-training: the state, the jitted sharded step, the teacher, the dry-run summary; the
steps run in mdistill.loop, with the k-NN monitor and the reconstruction pictures."""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mdistill import data, inputs, loop, optim, sharding, visualize
from mdistill.loop import Monitor, Plan, TrainState
from mdistill.metrics import MetricsWriter, log
from mdistill.objectives import build_objective
from mdistill.preemption import PreemptionWatcher
from mdistill.config.validation import BEST_METRIC_FORM, ConfigError
from mdistill.weights import checkpoint, init, loader


def plan_steps(config) -> Plan:
    """Steps from epochs over the dataset (or explicit step counts where set, >= 0)."""
    return loop.plan_steps(config, data.dataset_size(config), data.records_per_step(config))


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


class Trainer:
    """Builds the objective, optimizer and the compiled step for one config on one mesh."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.objective = build_objective(config)
        if self.objective.uses_teacher and config.teacher.checkpoint:
            # the teacher's layout (learned position table, cls token, norm_pre, ...) is the
            # checkpoint's; its size is config.teacher.variant's, checked when it is loaded
            try:
                self.objective.use_teacher_layout(init.teacher_architecture(config).spec.layout)
            except ValueError as e:  # a teacher that does not cut the input into the student's tokens
                raise checkpoint.CheckpointError(str(e)) from e
        self.plan = plan_steps(config)
        self.lr_schedule = optim.schedule(config.optim, config.batch_size, self.plan.total_steps,
                                          self.plan.warmup_steps)
        self.tx = optim.build_optimizer(config.optim, self.lr_schedule, frozen=self.objective.frozen())
        self.init_rng, self.base_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        self.replicated = sharding.replicated(mesh)
        self.batch_sharding = sharding.batch_sharding(mesh)
        # Parameter-shaped trees are placed by the partition rules of mdistill.sharding.
        self.state_sharding = sharding.tree_shardings(mesh, jax.eval_shape(self._init_state, self.init_rng))
        self.teacher_sharding = (sharding.tree_shardings(mesh, self._teacher_shapes())
                                 if self.objective.uses_teacher else None)
        self.step_fn = jax.jit(self._train_step,
                               in_shardings=(self.state_sharding, self.teacher_sharding, self.batch_sharding),
                               out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

    # ---- shapes -------------------------------------------------------------------------
    def batch_shape(self, batch_size: int | None = None) -> jax.ShapeDtypeStruct:
        """uint8 [B, H, W, C] images, or [B, T, H, W, C] clips."""
        shape = (batch_size or self.config.batch_size, *inputs.sample_shape(self.config))
        return jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=self.batch_sharding)

    def _init_state(self, rng):
        images = jnp.zeros((1,) + self.batch_shape().shape[1:], jnp.uint8)
        params = self.objective.init(rng, images)
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    def init_state(self) -> TrainState:
        """A fresh state: random parameters, or config.student.init's where set."""
        state = jax.jit(self._init_state, out_shardings=self.state_sharding)(self.init_rng)
        path = self.config.student.init
        return init.student(self.config, self.objective, state, path, self.state_sharding, self.tx) if path else state

    def abstract_state(self) -> TrainState:
        return _abstract(jax.eval_shape(self._init_state, self.init_rng), self.state_sharding)

    # ---- teacher ------------------------------------------------------------------------
    def _teacher_init(self, rng):
        return self.objective.teacher.init(rng, jnp.zeros(self.batch_shape(1).shape, jnp.float32))

    def _teacher_shapes(self):
        return jax.eval_shape(self._teacher_init, self.init_rng)

    def abstract_teacher(self):
        if not self.objective.uses_teacher:
            return None
        return _abstract(self._teacher_shapes(), self.teacher_sharding)

    def load_teacher(self):
        """Frozen teacher parameters, placed by the partition rules (None for methods
        without a teacher)."""
        random_init = jax.jit(self._teacher_init, out_shardings=self.teacher_sharding)
        return init.teacher(self.config, self.objective, self.mesh, random_init)

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

    def metric_names(self) -> set[str]:
        """The metrics each step returns (the objective's, lr, grad_norm): traced, not run."""
        _, metrics = jax.eval_shape(self._train_step, self.abstract_state(), self.abstract_teacher(),
                                    self.batch_shape())
        return set(metrics)

    def compiled_step(self):
        """The step compiled abstractly (no data, no parameters in memory)."""
        return self.step_fn.lower(self.abstract_state(), self.abstract_teacher(), self.batch_shape()).compile()


def _abstract(shapes, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def summarize(config, mesh, device_memory: int | None = None) -> dict:
    """What --dry_run prints: sizes, plan, XLA's FLOPs and memory for one compiled step, and
    whether that fits the device's memory (`device_memory` bytes, default what JAX reports)."""
    trainer = Trainer(config, mesh)
    state, teacher = trainer.abstract_state(), trainer.abstract_teacher()
    objective = trainer.objective
    t0 = time.time()
    compiled = trainer.compiled_step()
    summary = {
        "method": config.method,
        "student": config.student.variant,
        "student_params": count_params(loader.encoder_of(state.params)),
        "trainable_params": count_params(state.params),
        "teacher": config.teacher.variant if objective.uses_teacher else None,
        "teacher_params": count_params(teacher) if teacher is not None else 0,
        "teacher_blocks_run": objective.teacher.blocks_run(objective.teacher_blocks) if teacher is not None else 0,
        "num_frames": inputs.num_frames(config),
        "tubelet_size": config.tubelet_size if inputs.is_video(config) else None,
        "global_batch_size": config.batch_size,
        "records_per_step": data.records_per_step(config),  # fewer than the batch with repeated sampling
        "devices": mesh.size,
        "steps_per_epoch": trainer.plan.steps_per_epoch,
        "total_steps": trainer.plan.total_steps,
        "warmup_steps": trainer.plan.warmup_steps,
        "peak_lr": optim.peak_learning_rate(config.optim, config.batch_size),
        "compile_seconds": round(time.time() - t0, 1),
        # XLA counts the FLOPs of one device's share of the partitioned step
        "flops_per_step": flops_of(compiled) * mesh.size,
        "flops_per_step_per_device": flops_of(compiled),
        "mesh": dict(mesh.shape),
        # what one device holds of the trained state and of the teacher, under the partition rules
        "state_bytes_per_device": sharding.bytes_per_device(state, trainer.state_sharding),
        "teacher_bytes_per_device": (sharding.bytes_per_device(teacher, trainer.teacher_sharding)
                                     if teacher is not None else 0),
        **memory_of(compiled),
        "teacher_checkpoint": (config.teacher.checkpoint or None) if objective.uses_teacher else None,
        **objective.describe(),
    }
    params_bytes = sharding.bytes_per_device(state.params, trainer.state_sharding.params)
    summary.update(memory_fit(config, mesh, summary, params_bytes,
                              device_memory if device_memory is not None else device_memory_of(mesh)))
    return summary


def memory_of(compiled) -> dict:
    """XLA's per-device memory estimate of a compiled step (absent on some backends)."""
    try:
        m = compiled.memory_analysis()
        return {"argument_bytes_per_device": int(m.argument_size_in_bytes),
                "temp_bytes_per_device": int(m.temp_size_in_bytes)}
    except Exception:  # not every backend implements it
        return {}


GIB = 2 ** 30


def device_memory_of(mesh) -> int | None:
    """Bytes one device of the mesh may allocate, as JAX reports it (the allocator's limit: on a
    GPU what JAX preallocates, 75% of the memory by default); None where it reports none (CPU)."""
    try:
        stats = mesh.devices.flat[0].memory_stats()
    except Exception:  # not implemented on every backend
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def memory_fit(config, mesh, summary: dict, params_bytes: int, limit: int | None) -> dict:
    """One device's memory for the step (XLA's arguments + temporaries) against `limit`, and
    when it does not fit, the smallest `optim.accum_steps` (same mesh) and the smallest
    `mesh.fsdp` (same accum_steps) estimated to fit. The estimate: temporaries shrink with the
    per-device micro-batch, except a gradient-sized part (the gradients and their
    accumulator, 2 x the trained parameters a device holds); arguments (state, teacher,
    batch) do not shrink with it, while fsdp divides the state and teacher among its devices.
    An estimate: check a suggestion with another --dry_run."""
    if "temp_bytes_per_device" not in summary:
        return {"memory_gib_per_device": None, "device_memory_gib": None if limit is None else round(limit / GIB, 3)}
    args, temp = summary["argument_bytes_per_device"], summary["temp_bytes_per_device"]
    out = {"memory_gib_per_device": round((args + temp) / GIB, 3),
           "device_memory_gib": None if limit is None else round(limit / GIB, 3),
           "fits_device_memory": None if limit is None else args + temp <= limit}
    if limit is None or args + temp <= limit:
        return out
    accum, batch, devices = config.optim.accum_steps, config.batch_size, mesh.size
    fixed = min(temp, 2 * params_bytes)
    scaled = temp - fixed  # proportional to the micro-batch, batch / (devices x accum_steps)
    out["accum_steps_to_fit"] = next(
        (a for a in range(accum + 1, batch // devices + 1)
         if batch % a == 0 and (batch // a) % devices == 0 and args + fixed + scaled * accum / a <= limit), None)
    fsdp = mesh.shape["fsdp"]
    sharded = summary["state_bytes_per_device"] + summary["teacher_bytes_per_device"]
    out["fsdp_to_fit"] = next(
        (f for f in range(fsdp + 1, devices + 1)
         if devices % f == 0 and max(args - sharded, 0) + sharded * fsdp / f + fixed * fsdp / f + scaled <= limit),
        None)
    return out


def ensure_writable(workdir: str) -> None:
    """The workdir and its checkpoints/ folder exist and take files: found now, not at the
    first save after all the training."""
    checkpoint.ensure_writable(workdir)
    checkpoint.ensure_writable(checkpoint.checkpoint_dir(workdir), f"workdir {workdir!r}: folder")


def check_best_metric(config, trainer: Trainer, monitors: Sequence[Monitor]) -> None:
    """config.best_metric must name a metric every checkpoint is saved with: the step's, and
    the monitors'."""
    name = config.best_metric.rpartition(":")[2]
    if not name:
        return
    logged = trainer.metric_names()  # traced: seconds for large models, so only when asked
    for monitor in monitors:
        logged |= monitor.metric_names()
    if name not in logged:
        raise ConfigError(f"config.best_metric={config.best_metric!r} is invalid: this run logs no {name!r} at "
                          f"its checkpoints; expected one of {sorted(logged)}, as {BEST_METRIC_FORM}")


def resume_or_init(trainer: Trainer, mngr, teacher: dict | None = None) -> tuple[TrainState, dict | None]:
    """The latest readable checkpoint's state and its input-pipeline state, or a fresh state
    and None. Refuses (moving nothing) a checkpoint whose config differs in anything that
    changes the model, optimizer or data, that was distilled from another teacher than
    `teacher` (checkpoint.teacher_record; unless config.teacher.allow_change), or that does
    not fit the model. One that fails its checksums is set aside for the previous one."""
    abstract = trainer.abstract_state()
    restored = loop.restore(mngr, abstract.params, abstract.opt_state, trainer.config.to_dict(), teacher=teacher,
                            allow_teacher_change=bool(trainer.config.teacher.allow_change))
    if restored is None:
        return trainer.init_state(), None
    params, opt_state, meta = restored
    return TrainState(jnp.asarray(meta["step"], jnp.int32), params, opt_state), meta.get("data")


def train(config, workdir: str, mesh=None, monitors: Sequence[Monitor] = ()) -> dict:
    """Run (or resume) training; returns the last logged metrics. `monitors` run between
    steps when due (mdistill.main builds them from the config: mdistill.evaluate.knn.monitors);
    the reconstruction pictures (config.visualize_every) are added here."""
    preemption = PreemptionWatcher()  # first: a SIGTERM during set-up ends the run before its first step
    try:
        ensure_writable(workdir)
        with checkpoint.workdir_lock(workdir):  # one run per workdir
            return _train(config, workdir, mesh or sharding.make_mesh(), preemption, tuple(monitors))
    finally:
        preemption.close()


def check_planned_size(config) -> None:
    """A config that plans its epochs with a published dataset size (config.data.size > 0,
    the video configs) must read a dataset of that size, else its schedule would be another
    run's: refused before anything is written."""
    size = int(config.data.size)
    if size <= 0:
        return
    actual = len(data.build_source(config))
    if actual != size:
        raise ConfigError(f"config.data.size={size} (the published count the epochs are planned with) but "
                          f"config.data.path={config.data.path!r} holds {actual} examples: set "
                          f"--config.data.size=0 to plan with the data's own count, or use the published data")


def _train(config, workdir: str, mesh, preemption: PreemptionWatcher, monitors: tuple) -> dict:
    check_planned_size(config)
    trainer = Trainer(config, mesh)
    plan = trainer.plan
    check_best_metric(config, trainer, monitors)
    teacher_params = trainer.load_teacher()
    # the frozen teacher's digest (and path, step): saved with every checkpoint, checked on resume
    teacher = (checkpoint.teacher_record(config.teacher.checkpoint, teacher_params)
               if teacher_params is not None else None)
    mngr = checkpoint.manager(checkpoint.checkpoint_dir(workdir), config.keep_checkpoints, config.best_metric)
    state, data_state = resume_or_init(trainer, mngr, teacher)
    checkpoint.write_config(workdir, config)  # <workdir>/config.json: the resolved config, readable
    start = int(state.step)
    # grain workers start decoding now, while the step compiles
    batches = data.Pipeline.from_config(config, trainer.batch_sharding, start, plan.total_steps, data_state).start()
    writer = MetricsWriter(workdir)
    if config.visualize_every:  # samples spread over the data and its classes; clips are drawn as strips of frames
        monitors += (visualize.ReconstructionWriter(trainer, workdir, visualize.samples(config),
                                                    every=config.visualize_every, tensorboard=writer.tensorboard),)
    log(f"{config.method}: {count_params(state.params)} trainable params, {plan.total_steps} steps "
        f"({plan.steps_per_epoch}/epoch), global batch {config.batch_size} on {mesh.size} device(s)")
    meta = lambda step: {"step": step, "config": config.to_dict(), "data": batches.state(),  # noqa: E731
                         **({"teacher": teacher} if teacher else {})}
    result = loop.run(lambda s, images: trainer.step_fn(s, teacher_params, images), state, batches, mesh=mesh,
                      start=start, total=plan.total_steps, batch_size=config.batch_size, log_every=config.log_every,
                      writer=writer, monitors=monitors, preemption=preemption,
                      checkpoints=loop.Checkpoints(mngr, config.checkpoint_every, meta, ranked=True),
                      closers=(writer.close, batches.close))
    return result.last
