"""End-to-end fine-tuning as in MAE (He et al., appendix A.1): the pre-trained encoder plus
a classifier on the global average of its patch tokens (fc_norm, then a linear head; or
the cls token after the final norm), layer-wise lr decay, drop path, RandAugment, random
erasing, mixup / cutmix with label smoothing, AdamW with warm-up and cosine decay.

The steps run in mdistill.loop, on the mesh of config.mesh with pre-training's partition
rules (config.mesh.fsdp > 1 splits the parameters and the optimizer state). Top-1 / top-5 on
the test split every `eval_every` steps and at the end (FinetuneEvaluation, a monitor of the
loop), in metrics.jsonl; the last checkpoint in <workdir>/checkpoints (rerunning the
command resumes from it; a SIGTERM saves and stops), the best by top-1 in <workdir>/best;
<workdir>/finetune.json and a table at the end.

The training images come through the pre-training input pipeline (data.Pipeline: grain
workers, per-host shards, batch `step` a pure function of (seed, step), its state in every
checkpoint, so a resumed run sees exactly the batches it would have seen), with the host
transform of config.data.augment: MAE's RandomResizedCrop (config.data.crop_scale, 0.08-1
in MAE's recipe, bicubic) + flip for 'mae'. The rest runs on device, per image, from the
step's rng: flip (config.finetune.flip), RandAugment (randaugment.py), then normalisation,
random erasing and mixup / cutmix (augment.py).

  python -m mdistill.evaluate.finetune --config=configs/finetune_fmnist.py \
      --config.pretrained=runs/demo/student_dmae --workdir=runs/demo/student_dmae/finetune
"""

from __future__ import annotations

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mdistill import data, inputs, loop, optim, resolve, sharding
from mdistill import workdir as paths
from mdistill.evaluate import augment
from mdistill.evaluate.common import (Split, count_classes, data_record, hold_workdir, labelled_source, load_encoder,
                                      ordered_batches, subset, to_host, topk_correct, validate_downstream, with_top5,
                                      write_results)
from mdistill.evaluate.randaugment import rand_augment
from mdistill.loop import TrainState
from mdistill.metrics import MetricsWriter, log
from mdistill.models.vit import Encoder, ViTSpec
from mdistill.objectives.common import normalize_images
from mdistill.objectives.mae import DTYPES
from mdistill.preemption import PreemptionWatcher
from mdistill.weights import checkpoint


def finetune_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """MAE's ViT-B fine-tuning recipe on top of base_config() (config.pretrained, num_classes,
    train_examples, test_examples, eval_every and config.finetune: mdistill/config/schema.py)."""
    c.batch_size = 1024
    c.num_epochs, c.warmup_epochs = 100.0, 5.0
    c.optim.update(blr=5e-4, lr=-1.0, min_lr=1e-6, b1=0.9, b2=0.999, weight_decay=0.05, grad_clip=0.0)
    c.eval.update(pool="avg", batch_size=256)  # avg: global pool + fc_norm (MAE); cls: cls token
    # on the host, in the input pipeline: RandomResizedCrop of 8-100% of the area (MAE's
    # fine-tuning; its pre-training uses 20-100%), bicubic, + flip
    c.data.update(augment="mae", crop_scale=(0.08, 1.0))
    c.log_every = 50
    c.checkpoint_every = 1000
    return c


class Classifier(nn.Module):
    """Encoder -> pooled feature -> linear head. Params {'encoder', 'fc_norm' (avg), 'head'}."""

    spec: ViTSpec
    num_classes: int
    pool: str = "avg"
    drop_path: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        enc = Encoder(self.spec, dtype=self.dtype, drop_path=self.drop_path, name="encoder")
        if self.pool == "avg":
            # MAE's global pool: mean of the last block's patch tokens, then a fresh fc_norm
            # (the encoder's final norm is not used, so its parameters are not created).
            tokens, _ = enc(images, stop_after=self.spec.depth - 1, deterministic=not train)
            patches = tokens[:, int(self.spec.layout.class_token):]  # a video ViT has no cls token
            x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="fc_norm")(patches.mean(axis=1))
        else:
            tokens, _ = enc(images, deterministic=not train)
            x = tokens[:, 0]
        head = nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(2e-5), name="head")
        return head(x).astype(jnp.float32)


def layer_id(path, depth: int) -> int:
    """MAE's layer ids: patch embed and cls token 0, block i -> i + 1, the rest depth + 1."""
    keys = [getattr(k, "key", str(k)) for k in path]
    block = next((k for k in keys if k.startswith("block_")), None)
    if block is not None:
        return int(block.split("_")[1]) + 1
    if keys[0] == "encoder" and keys[1] in ("patch_embed", "cls_token"):
        return 0
    return depth + 1


def layer_decay_multipliers(params, depth: int, decay: float):
    """lr multiplier per parameter: decay ** (depth + 1 - layer id)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: decay ** (depth + 1 - layer_id(p, depth)), params)


class FineTuner:
    """The classifier, its optimizer and the compiled train and eval steps for one config on
    one mesh: the state (TrainState) is placed by the partition rules of mdistill.sharding,
    the batches split over the whole mesh."""

    def __init__(self, config, mesh, explicit: frozenset = frozenset()):
        # the model and data of config.pretrained's run, the class count of the data (mdistill.resolve)
        resolve.pretrained_run(config, explicit)
        # A split without labels fails here, before anything compiles; labels are read per batch.
        train = labelled_source(config, config.eval.train_split)
        resolve.num_classes(config, count_classes(train), f"split {config.eval.train_split!r} of "
                            f"{config.data.source} data", explicit)
        validate_downstream(config, mesh.size)
        self.config, self.mesh = config, mesh
        self.spec = inputs.student_spec(config)  # a video ViT for clips
        ft = config.finetune
        self.video = inputs.is_video(config)
        if self.video and (ft.randaug_layers > 0 or config.eval.pool != "avg"):
            raise ValueError("fine-tuning on clips: RandAugment is for images and a video ViT has no cls token; "
                             "set --config.finetune.randaug_layers=0 --config.eval.pool=avg")
        self.topk = (1, 5) if with_top5(config.num_classes) else (1,)
        self.model = Classifier(self.spec, config.num_classes, config.eval.pool, ft.drop_path, DTYPES[config.dtype])
        self.replicated, self.batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        self.train_split = Split(train, subset(len(train), config.train_examples))
        records = data.records_per_step(config)  # the batch counts clips: num_sample of each video read
        if len(self.train_split) < records:
            raise ValueError(f"{len(self.train_split)} train examples, fewer than the {records} a step reads "
                             f"(config.batch_size={config.batch_size})")
        test = labelled_source(config, config.eval.test_split)
        self.test_split = Split(test, subset(len(test), config.test_examples))
        self.plan = loop.plan_steps(config, len(self.train_split), records)
        self.per_epoch, self.total_steps = self.plan.steps_per_epoch, self.plan.total_steps
        self.lr = optim.schedule(config.optim, config.batch_size, self.total_steps, self.plan.warmup_steps)
        self.rng = jax.random.PRNGKey(config.seed)
        self.abstract_params = jax.eval_shape(self._init, self.rng)
        self.tx = self._optimizer(self.abstract_params)
        self.state_sharding = sharding.tree_shardings(mesh, jax.eval_shape(self._init_state, self.rng))
        rep, batch = self.replicated, self.batch_sharding
        self.step_fn = jax.jit(self._train_step, in_shardings=(self.state_sharding, batch, batch),
                               out_shardings=(self.state_sharding, rep), donate_argnums=(0,))
        self.eval_fn = jax.jit(self._eval_counts, in_shardings=(self.state_sharding.params, batch, batch),
                               out_shardings=rep)

    def batches(self, start: int = 0, state: dict | None = None) -> data.Pipeline:
        """(images, labels) of training step `start` on, as pre-training reads its batches
        (config.data's workers, host transform and prefetch); `state` from a checkpoint."""
        return data.Pipeline.from_config(self.config, self.batch_sharding, start, self.total_steps, state,
                                         source=self.train_split.as_source(), labels=True)

    def _init(self, rng):
        c = self.config
        return self.model.init(rng, jnp.zeros((1, *inputs.sample_shape(c))))["params"]

    def _init_state(self, rng):
        params = self._init(rng)
        return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    def init_params(self):
        """A fresh head on the pre-trained encoder (checked against the config first), placed
        by the partition rules."""
        c = self.config
        if c.pretrained:
            enc, _ = load_encoder(c.pretrained, self.mesh, c.student.variant, c.image_size, c.data.channels)
        else:
            log("WARNING: config.pretrained is empty: fine-tuning from random initialisation (smoke only)")
        params = jax.jit(self._init, out_shardings=self.state_sharding.params)(self.rng)
        if c.pretrained:  # with global pooling the pre-trained final norm is dropped (fc_norm replaces it)
            encoder = {k: enc[k] for k in params["encoder"]}
            # load_encoder placed it by these same partition rules: nothing moves here
            params = dict(params, encoder=jax.device_put(encoder, self.state_sharding.params["encoder"]))
        return params

    def init_state(self) -> TrainState:
        """Step 0: init_params and the optimizer state of those parameters."""
        params = self.init_params()
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
        return TrainState(jax.device_put(jnp.zeros((), jnp.int32), self.state_sharding.step), params, opt_state)

    def abstract_state(self) -> TrainState:
        """The state's shapes, placed as the step takes them (what a checkpoint restores into)."""
        shapes = jax.eval_shape(self._init_state, self.rng)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            self.state_sharding)

    def _optimizer(self, params):
        c = self.config
        mults = layer_decay_multipliers(params, self.spec.depth, c.finetune.layer_decay)
        parts = [optax.clip_by_global_norm(c.optim.grad_clip)] if c.optim.grad_clip > 0 else []
        parts += [optax.adamw(self.lr, b1=c.optim.b1, b2=c.optim.b2, weight_decay=c.optim.weight_decay,
                              mask=optim.decay_mask),
                  # layer decay: a per-parameter lr scale; applied after AdamW it scales the
                  # decoupled weight decay too, as PyTorch's per-group lr does.
                  optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, mults))]
        return optax.chain(*parts)

    def _train_step(self, state: TrainState, images, labels):
        c, ft = self.config, self.config.finetune
        params, opt_state, step = state.params, state.opt_state, state.step
        k_flip, k_ra, k_erase, k_mix, k_drop = jax.random.split(jax.random.fold_in(self.rng, step), 5)
        x = images.astype(jnp.float32)  # [0, 255]
        if ft.flip:
            x = augment.random_flip(k_flip, x)
        if ft.randaug_layers > 0:
            fill = tuple(round(255 * m) for m in c.data.mean)
            x = rand_augment(k_ra, x, ft.randaug_layers, ft.randaug_magnitude, ft.randaug_std, fill)
        x = augment.random_erasing(k_erase, normalize_images(x, c.data.mean, c.data.std), ft.reprob)
        x, targets = augment.mixup_cutmix(k_mix, x, labels, c.num_classes, ft.mixup, ft.cutmix, ft.smoothing,
                                          ft.mixup_switch_prob)

        def loss_fn(p):
            logits = self.model.apply({"params": p}, x.astype(DTYPES[c.dtype]), train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        # labels outside [0, num_classes) would be silently wrong targets: counted, checked by the loop
        bad = jnp.sum((labels < 0) | (labels >= c.num_classes))
        params = optax.apply_updates(params, updates)
        # whether every updated parameter is finite: one reduction, checked by the loop before every save
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        metrics = {"loss": loss, "lr": self.lr(step), "grad_norm": optax.tree.norm(grads), "bad_labels": bad,
                   "finite_params": finite}
        return TrainState(step + 1, params, opt_state), metrics

    def _eval_counts(self, params, images, labels):
        x = normalize_images(images, self.config.data.mean, self.config.data.std)
        if x.ndim == 6:  # [B, views, T, H, W, C]: the views' softmax averaged, as VideoMAE's multi-view test
            batch, views = x.shape[:2]
            logits = self.model.apply({"params": params}, x.reshape(batch * views, *x.shape[2:]).astype(
                DTYPES[self.config.dtype]))
            logits = jnp.log(jax.nn.softmax(logits).reshape(batch, views, -1).mean(axis=1))
        else:
            logits = self.model.apply({"params": params}, x.astype(DTYPES[self.config.dtype]))
        return jnp.stack([topk_correct(logits, labels, k) for k in self.topk])

    def test_transform(self):
        """Decoded videos (files, a TFDS Video feature): every test video as
        data.test_num_segment x data.test_num_crop views, SSv2's segment starts and middles when
        training samples segments (data.temporal); synthetic clips are arrays, tested whole."""
        c = self.config
        if not self.video or not data.gives_clips(c):
            return None
        from mdistill.data.transforms import MultiViewClipTransform

        temporal = "segments" if c.data.temporal == "segments" else "dense"
        return MultiViewClipTransform(c.image_size, inputs.num_frames(c), c.data.channels, c.data.sampling_rate,
                                      c.data.test_num_segment, c.data.test_num_crop, temporal=temporal)

    def evaluate(self, params) -> dict:
        """Top-1 / top-5 in percent over the test split."""
        with ordered_batches(self.config, self.test_split, self.config.eval.batch_size, self.batch_sharding,
                             self.test_transform()) as b:
            counts = sum(self.eval_fn(params, images, labels) for images, labels in b)
        return {f"top{k}": v for k, v in zip(self.topk, (100.0 * to_host(counts) / len(self.test_split)).tolist())}


class FinetuneEvaluation:
    """Fine-tuning's monitor (mdistill.loop.Monitor): top-1 / top-5 on the test split every
    config.eval_every steps and at the last; a better top-1 than the best so far saves the
    state to the `best` manager (<workdir>/best). It takes the whole state (params and
    optimizer state, as every checkpoint holds them)."""

    def __init__(self, ft: FineTuner, best_mngr, best: dict):
        self.ft, self.mngr, self.best, self.last = ft, best_mngr, best, {}

    def metric_names(self) -> set[str]:
        return {f"top{k}" for k in self.ft.topk}

    def due(self, step: int, is_last: bool = False, saving: bool = False) -> bool:
        return step % self.ft.config.eval_every == 0 or is_last

    def maybe_run(self, step: int, state: TrainState, is_last: bool = False, saving: bool = False) -> dict:
        if not self.due(step, is_last, saving):
            return {}
        self.last = self.run(state.params)
        if self.last["top1"] > self.best["top1"]:
            self.best = dict(self.last, step=step)
            checkpoint.save(self.mngr, step, state.params, state.opt_state,
                            {"step": step, "config": self.ft.config.to_dict(), **self.last})
        return self.last

    def run(self, params) -> dict:
        return self.ft.evaluate(params)


def log_line(step: int, total: int, m: dict, eta: float) -> str:
    """Fine-tuning's console line: every logged metric, then the throughput."""
    values = " | ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("step", "images_per_sec"))
    return f"step {step}/{total} | {values} | {m['images_per_sec']:.0f} img/s"


def run(config, workdir: str, mesh=None, explicit: frozenset = frozenset()) -> dict:
    """Fine-tune (or resume) and return the results written to <workdir>/finetune.json ({}
    when a SIGTERM stopped it: rerunning resumes). `mesh`: default config.mesh's over all
    devices. `explicit`: the fields set on the command line (see mdistill.resolve). The
    workdir is checked writable and held for this run alone (the workdir lock, as
    pre-training)."""
    preemption = PreemptionWatcher()
    try:
        with hold_workdir(workdir, "checkpoints", "best"):
            return _run(config, workdir, mesh or sharding.make_mesh(shape=config.mesh.to_dict()), explicit,
                        preemption)
    finally:
        preemption.close()


def _run(config, workdir: str, mesh, explicit, preemption: PreemptionWatcher) -> dict:
    ft = FineTuner(config, mesh, explicit)
    last_mngr = checkpoint.manager(checkpoint.checkpoint_dir(workdir), keep=1)
    best_mngr = checkpoint.manager(paths.join(paths.resolve(workdir), "best"), keep=1)
    abstract = ft.abstract_state()
    restored = loop.restore(last_mngr, abstract.params, abstract.opt_state, config.to_dict(), "finetune: ")
    if restored is None:
        state = ft.init_state()
        initial, best, data_state = ft.evaluate(state.params), {"top1": -1.0, "step": 0}, None
    else:
        params, opt_state, meta = restored
        state = TrainState(jax.device_put(jnp.asarray(meta["step"], jnp.int32), ft.state_sharding.step), params,
                           opt_state)
        initial, best, data_state = meta["initial"], meta["best"], meta.get("data")
    start = int(state.step)
    checkpoint.write_config(workdir, config)  # <workdir>/config.json, once the config is known to fit the run
    batches = ft.batches(start, data_state).start()
    writer = MetricsWriter(workdir)
    log(f"finetune: {ft.total_steps} steps ({ft.per_epoch}/epoch), batch {config.batch_size}, peak lr "
        f"{optim.peak_learning_rate(config.optim, config.batch_size):.3g}; before: top1 {initial['top1']:.2f}")
    evaluation = FinetuneEvaluation(ft, best_mngr, best)
    meta = lambda step: {"step": step, "config": config.to_dict(), "initial": initial,  # noqa: E731
                         "best": evaluation.best, "data": batches.state()}

    def check_labels(records):  # labels outside [0, num_classes) would be silently wrong targets
        bad = sum(int(r["bad_labels"]) for r in records)
        if bad:
            raise ValueError(f"{bad} training labels outside [0, config.num_classes={config.num_classes}) "
                             f"by step {records[-1]['step']}")

    t0 = time.time()
    result = loop.run(lambda s, batch: ft.step_fn(s, *batch), state, batches, mesh=mesh, start=start,
                      total=ft.total_steps, batch_size=config.batch_size, log_every=config.log_every,
                      writer=writer, monitors=(evaluation,), monitor_input=lambda s: s,
                      checkpoints=loop.Checkpoints(last_mngr, config.checkpoint_every, meta),
                      preemption=preemption, what="finetune: ", line=log_line, check=check_labels,
                      unlogged=("bad_labels",), mean_dtype=np.float64,  # means of floats, as it always logged
                      closers=(batches.close, writer.close, lambda: checkpoint.wait(best_mngr)))
    if result.stopped:
        return {}
    evals = evaluation.last or ft.evaluate(result.state.params)  # none: a finished run, resumed
    best = evaluation.best
    results = {"top1": evals["top1"], **({"top5": evals["top5"]} if "top5" in evals else {}),
               "best_top1": best["top1"], "best_step": best["step"],
               "initial_top1": initial["top1"], "steps": ft.total_steps, "train_seconds": round(time.time() - t0, 1),
               "variant": config.student.variant, "pool": config.eval.pool, "num_classes": config.num_classes,
               "pretrained": config.pretrained or "(scratch)",
               "data": data_record(config, {"train": ft.train_split, "test": ft.test_split})}
    write_results(workdir, "finetune", results)
    return results


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from mdistill import distributed

    try:  # several processes: on a detected cluster (Cloud TPU pods, SLURM) or as told, as pre-training
        distributed.maybe_initialize(*_DISTRIBUTED())
    except RuntimeError as e:  # a cluster whose processes or devices do not add up
        sys.exit(f"error: {e}")
    try:
        from mdistill.resolve import explicit_fields

        run(_CONFIG.value, _WORKDIR.value, explicit=explicit_fields(config_flags.get_override_values(_FLAGS["config"])))
    # ConfigError and DataError are ValueErrors; OSError: an unreadable file, a full disk
    except (ValueError, OSError, KeyError, checkpoint.CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # before any large allocation; see mdistill/hugepages.py
    from absl import app, flags
    from ml_collections import config_flags

    _FLAGS = flags.FLAGS
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (path[:arg]).")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, finetune.json and metrics go.", required=True)
    flags.mark_flag_as_required("config")
    from mdistill import cli

    _DISTRIBUTED = cli.define_distributed_flags()
    app.run(main, flags_parser=cli.parse_flags)  # a config file or field that fails: one error line
