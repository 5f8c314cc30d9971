"""Linear probing as in MAE: a frozen encoder, then BatchNorm without affine parameters and
a linear classifier, trained with LARS (momentum 0.9, no weight decay), lr = blr * batch /
256 with warm-up and cosine decay, cross-entropy without label smoothing.

The encoder is frozen. By default (config.data.augment='none') its features are computed
once (sharded over the mesh) and the head trains on them; that makes each step a tiny
matmul and the Fashion-MNIST probe runs in a minute or two on a CPU, but the head never sees
an augmented image. MAE's probe trains on RandomResizedCrop + flip: with
config.data.augment='mae' (crop of data.crop_scale of the area, + flip; 'flip': centre crop
+ flip) each training step reads its batch through the input pipeline with that transform
and runs the frozen encoder on it inside the step, so every epoch costs a forward pass over
the training images. Test features are computed once, without augmentation, either way.

  python -m mdistill.evaluate.linprobe --config=configs/linprobe_fmnist.py \
      --config.pretrained=runs/demo/student_dmae --workdir=runs/demo/student_dmae/linprobe

writes <workdir>/linprobe.json and metrics.jsonl. --config.knn=True adds k-NN accuracy on
the same examples from the same forward pass (demo.sh uses it: the features of 70k images
are the bulk of both evaluations' time). --config.baselines=True evaluates raw pixels and a
random encoder of the same architecture the same way and prints them beside the encoder.

On clips (a video ViT, config.num_frames > 1; video files, TFDS Video, synthetic) the feature is
the mean of its tokens after the final norm (a video ViT has no cls token: a config file's
pool 'cls' becomes 'avg'), each clip sampled as for evaluation (VideoMAE's test window,
centre crop), computed once; data.augment must be 'none' there (see for_clips).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mdistill import data, inputs, loop, optim, resolve, sharding
from mdistill.data import transforms
from mdistill.evaluate.common import (BASELINES, POOLS, FeatureExtractor, baseline_params, check_labels, count_classes,
                                      data_record, hold_workdir, load_encoder, load_split, random_encoder, to_host,
                                      topk_correct, validate_downstream, with_top5, write_results)
from mdistill.evaluate.knn import knn_accuracy
from mdistill.metrics import MetricsWriter, log
from mdistill.config import ConfigError, get, take
from mdistill.weights import checkpoint


def linprobe_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """MAE's ViT-B linear-probe recipe on top of base_config() (config.pretrained, num_classes,
    train_examples, test_examples, knn, baselines, eval.knn_pool: mdistill/config/schema.py).
    With config.knn, k-NN (eval.knn_k, knn_temperature) on the same examples and forward pass,
    pooled by eval.knn_pool, into linprobe.json as knn_*; with config.baselines, raw pixels and a
    random encoder of config.student.variant (seed RANDOM_ENCODER_SEED) alike, under 'baselines'."""
    c.batch_size = 16384
    c.num_epochs, c.warmup_epochs = 90.0, 10.0
    c.optim.update(blr=0.1, lr=-1.0, weight_decay=0.0, min_lr=0.0)
    c.eval.update(pool="cls", batch_size=256)  # MAE probes the cls token (after the final norm)
    c.log_every = 100
    # The training images' host transform: 'none' computes their features once (centre
    # crop); 'mae' (RandomResizedCrop of data.crop_scale + flip, MAE's probe) or 'flip'
    # read augmented batches and run the frozen encoder in every step.
    c.data.augment = "none"
    return c


@flax.struct.dataclass
class ProbeState:
    """What the probe trains: the head's parameters, its BatchNorm statistics, LARS's state."""

    params: Any
    batch_stats: Any
    opt_state: Any


class ProbeHead(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        # BatchNorm without affine (PyTorch momentum 0.1 = Flax 0.9), as MAE's linprobe does.
        x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False, epsilon=1e-6,
                         momentum=0.9)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.01))(x)


def frozen_encoder(config, mesh):
    """Pretrained encoder params (checked against config.student.variant) or a random one,
    placed by the partition rules of mdistill.sharding (split over 'fsdp' as pre-training's)."""
    if config.pretrained:
        return load_encoder(config.pretrained, mesh, config.student.variant, config.image_size,
                            config.data.channels)[0]
    log("WARNING: config.pretrained is empty: evaluating a randomly initialised encoder (smoke only)")
    return random_encoder(config.student.variant, config.image_size, config.data.channels, mesh, config.seed,
                          config=config)  # a video ViT for clips


def run(config, workdir: str, mesh=None, explicit: frozenset = frozenset()) -> dict:
    """Probe (and with config.knn, k-NN) the encoder of config.pretrained, and with
    config.baselines the raw pixels and a random encoder too (under 'baselines' in the
    results). The model and data are config.pretrained's run's, num_classes the data's
    (mdistill.resolve; `explicit`: the fields set on the command line). `mesh`: default
    config.mesh's over all devices. Writes <workdir>/linprobe.json; metrics.jsonl logs the
    encoder's probe. The workdir is checked writable and held for this run alone (the
    workdir lock, as pre-training)."""
    with hold_workdir(workdir):
        return _run(config, workdir, mesh or sharding.make_mesh(shape=config.mesh.to_dict()), explicit)


def _run(config, workdir: str, mesh, explicit) -> dict:
    resolve.pretrained_run(config, explicit)
    # Labels are read and checked before anything compiles.
    train_split = load_split(config, config.eval.train_split, config.train_examples, eager=False)
    test_split = load_split(config, config.eval.test_split, config.test_examples, eager=False)
    resolve.num_classes(config, count_classes(train_split.source, train_split.labels),
                        f"split {config.eval.train_split!r} of {config.data.source} data", explicit)
    validate_downstream(config, mesh.size)  # a video ViT on images, or the reverse, refused first
    if inputs.is_video(config):
        for_clips(config, explicit)
    if config.knn and config.eval.knn_pool not in POOLS:
        raise ConfigError(f"config.eval.knn_pool={config.eval.knn_pool!r} is invalid: expected one of {POOLS}")
    for split, name in ((train_split, config.eval.train_split), (test_split, config.eval.test_split)):
        check_labels(split.labels, config.num_classes, name)
    extractor = FeatureExtractor(config, mesh)
    checkpoint.write_config(workdir, config)  # <workdir>/config.json: the resolved config
    results = evaluate_encoder(config, mesh, extractor, frozen_encoder(config, mesh), train_split, test_split,
                               MetricsWriter(workdir))
    results["pretrained"] = config.pretrained or "(random)"
    results["data"] = data_record(config, {"train": train_split, "test": test_split})
    if config.baselines:
        results["baselines"] = {}
        for name in BASELINES:
            log(f"linprobe: baseline '{name}'")
            results["baselines"][name] = evaluate_encoder(config, mesh, extractor, baseline_params(name, config, mesh),
                                                          train_split, test_split)
    write_results(workdir, "linprobe", results)
    return results


def for_clips(config, explicit=frozenset()) -> None:
    """A video ViT (config.num_frames > 1) has no cls token: a config file's pool 'cls' becomes
    'avg', the mean of the tokens, as k-NN's (logged; 'cls' on the command line is refused).
    Clip features are computed once, each clip as the evaluation samples it (the centre crop
    of one window): an augmenting data.augment is refused, since 'mae' and 'flip' are image
    transforms and re-encoding every training clip in each step would cost a video forward
    pass per clip per epoch."""
    fields = ("eval.pool", "eval.knn_pool") if config.knn else ("eval.pool",)
    for field in (f for f in fields if get(config, f) == "cls"):  # other values: checked as for images
        if take(config, field, "avg", f"a video ViT (config.num_frames={inputs.num_frames(config)}, no cls token)",
                explicit):
            log(f"linprobe: config.{field} 'cls' -> 'avg': a video ViT has no cls token; its tokens are averaged")
    if config.data.augment != "none":
        raise ConfigError(f"config.data.augment={config.data.augment!r}: the linear probe on clips trains on features "
                          "computed once from the evaluation sampling (augment is for images): set "
                          "--config.data.augment=none")


def evaluate_encoder(config, mesh, extractor, encoder, train_split, test_split, writer=None) -> dict:
    """Features of both splits from one forward pass, then k-NN (config.knn) and the probe.
    With an augmenting config.data.augment the probe instead trains on features computed in
    each step (see train_probe); train features are then extracted only for k-NN."""
    augmented = config.data.augment != "none"
    with_train = config.knn or not augmented  # the augmented probe encodes its own training batches
    t0 = time.time()
    train_f = None
    if with_train:
        train_f, train_y = extractor.extract(encoder, train_split, all_pools=config.knn)
    test_f, test_y = extractor.extract(encoder, test_split, all_pools=config.knn)
    if config.knn:  # every pooling of one forward pass: the probe's and k-NN's
        train_all, test_all = train_f, test_f
        train_f, test_f = train_all[extractor.pool], test_all[extractor.pool]
    what = "clips" if inputs.is_video(config) else "images"
    log(f"linprobe: features of {f'{len(train_split)} train and ' if with_train else ''}{len(test_split)} test "
        f"{what} ({test_f.shape[-1]}-d, pool {extractor.pool}) in {time.time() - t0:.0f}s")
    knn = {}
    if config.knn:
        ev = config.eval
        knn = knn_accuracy(train_all[ev.knn_pool], train_y, test_all[ev.knn_pool], test_y, ev.knn_k,
                           ev.knn_temperature, config.num_classes, chunk=extractor.batch_size)
        knn.update(knn_pool=ev.knn_pool, knn_k=ev.knn_k)
        del train_all, test_all
        log(f"linprobe: k-NN (k={ev.knn_k}, pool {ev.knn_pool}) top1 {knn['knn_top1']:.2f}")
    if augmented:
        probe = train_probe(config, mesh, None, train_split.labels, test_f, test_y, writer,
                            images=(extractor, encoder, train_split))
        probe["augment"] = config.data.augment
    else:
        probe = train_probe(config, mesh, train_f, train_split.labels, test_f, test_y, writer)
    return {**probe, "pool": extractor.pool, "train_examples": len(train_split), "test_examples": len(test_split),
            **knn}


def probe_batches(config, split, batch_sharding, total_steps: int) -> data.Pipeline:
    """(images, labels) of the probe's training steps 0 .. total_steps - 1 through the input
    pipeline, with config.data's training transform (augment, crop_scale). Step s holds the
    examples the precomputed-feature path takes at step s: the same per-epoch permutation."""
    return data.Pipeline.from_config(config, batch_sharding, 0, total_steps, source=split.as_source(),
                                     transform=transforms.from_config(config, train=True), labels=True)


class ProbeEvaluation:
    """The probe's monitor (mdistill.loop.Monitor): top-1 / top-5 of the head on the test
    features at every logged step (config.log_every and the last)."""

    def __init__(self, evaluate, test_f, test_y, every: int, topk: tuple[int, ...]):
        self.evaluate, self.test_f, self.test_y, self.every, self.topk = evaluate, test_f, test_y, every, topk

    def metric_names(self) -> set[str]:
        return {f"top{k}" for k in self.topk}

    def due(self, step: int, is_last: bool = False, saving: bool = False) -> bool:
        return step % self.every == 0 or is_last

    def maybe_run(self, step: int, state: ProbeState, is_last: bool = False, saving: bool = False) -> dict:
        if not self.due(step, is_last, saving):
            return {}
        return self.run(state)

    def run(self, state: ProbeState) -> dict:
        metrics = self.evaluate(state.params, state.batch_stats, self.test_f, self.test_y)
        return {k: float(to_host(v)) for k, v in metrics.items()}


def log_line(step: int, total: int, m: dict, eta: float) -> str:
    top5 = f" | top5 {m['top5']:.2f}" if "top5" in m else ""
    return f"step {step}/{total} | loss {m['loss']:.4f} | top1 {m['top1']:.2f}{top5}"


def train_probe(config, mesh, train_f, train_labels, test_f, test_y, writer=None, images=None) -> dict:
    """The probe head trained on precomputed features train_f, in mdistill.loop; top-1/top-5
    on the test features. With images=(extractor, encoder params, train split), train_f is
    not used: each step reads its batch through probe_batches (augmented as
    config.data.augment says) and computes the features with the frozen encoder inside the
    step. Nothing is checkpointed: a probe is rerun whole."""
    n, b = len(train_labels), config.batch_size
    if n < b:
        raise ValueError(f"{n} train examples, fewer than config.batch_size={b}")
    plan = loop.plan_steps(config, n, b)
    per_epoch, total = plan.steps_per_epoch, plan.total_steps
    lr = optim.schedule(config.optim, b, total, plan.warmup_steps)
    kernels = lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "kernel", p)  # noqa: E731
    # MAE's LARS leaves biases (1-d parameters) out of weight decay and the trust ratio.
    tx = optax.lars(lr, weight_decay=config.optim.weight_decay, weight_decay_mask=kernels,
                    trust_ratio_mask=kernels, momentum=0.9)
    head = ProbeHead(config.num_classes)
    rep, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    width = test_f.shape[-1]
    variables = head.init(jax.random.PRNGKey(config.seed), jnp.zeros((2, width)), train=False)
    state = ProbeState(variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    state_sharding = sharding.tree_shardings(mesh, state)  # pre-training's partition rules
    state = jax.device_put(state, state_sharding)

    def update(state, x, y):
        def loss_fn(p):
            logits, new = head.apply({"params": p, "batch_stats": state.batch_stats}, x, train=True,
                                     mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return ProbeState(optax.apply_updates(state.params, updates), stats, opt_state), {"loss": loss}

    if images is None:
        train_y = jax.device_put(train_labels, rep)

        # Features enter as arguments, not closures: jit would embed closed-over arrays as constants.
        @jax.jit(in_shardings=(state_sharding, batch_sharding, rep, batch_sharding),
                 out_shardings=(state_sharding, rep))
        def step(state, feats, labels, idx):
            return update(state, feats[idx], labels[idx])

        def steps():  # the rows of step s: a per-epoch permutation
            for s in range(total):
                epoch, offset = divmod(s, per_epoch)
                idx = np.random.default_rng((config.seed, epoch)).permutation(n)[offset * b:(offset + 1) * b]
                yield train_f, train_y, jax.device_put(idx, batch_sharding)

        batches, closers = steps(), ()
    else:
        extractor, encoder, split = images
        pipeline = probe_batches(config, split, batch_sharding, total)

        # the frozen encoder (None: the pixel baseline) is an argument, as the features above
        @jax.jit(out_shardings=(state_sharding, rep))
        def step(state, encoder, pixels, labels):
            x = jax.lax.stop_gradient(extractor.pooled(encoder, pixels)[extractor.pool])
            return update(state, x, labels)

        batches, closers = ((encoder, *next(pipeline)) for _ in range(total)), (pipeline.close,)

    ks = (1, 5) if with_top5(config.num_classes) else (1,)

    @jax.jit
    def evaluate(params, stats, feats, test_y):
        logits = head.apply({"params": params, "batch_stats": stats}, feats, train=False)
        count = jnp.sum(test_y >= 0)
        return {f"top{k}": 100.0 * topk_correct(logits, test_y, k) / count for k in ks}

    log(f"linprobe: {total} steps ({per_epoch}/epoch), batch {b}, "
        f"peak lr {optim.peak_learning_rate(config.optim, b):.3g}"
        + (f", training images augmented ({config.data.augment}) and encoded in each step" if images else ""))
    t0 = time.time()
    # the logged lr is the last step's, the epoch where it ends
    extra = lambda done: {"lr": float(lr(done - 1)), "epoch": done / per_epoch}  # noqa: E731
    result = loop.run(lambda state, batch: step(state, *batch), state, batches, mesh=mesh, start=0, total=total,
                      batch_size=b, log_every=config.log_every, writer=writer,
                      monitors=(ProbeEvaluation(evaluate, test_f, test_y, config.log_every, ks),),
                      monitor_input=lambda s: s, what="linprobe: ", line=log_line, extra=extra,
                      closers=closers + ((writer.close,) if writer else ()))
    metrics = result.last
    return {"top1": metrics["top1"], **({"top5": metrics["top5"]} if "top5" in metrics else {}),
            "train_loss": metrics["loss"],
            "epochs": float(config.num_epochs), "steps": total, "train_seconds": round(time.time() - t0, 1)}


def main(argv):
    del argv
    from absl import logging

    from mdistill.weights.checkpoint import CheckpointError

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
    except (ValueError, OSError, KeyError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # before any large allocation; see mdistill/hugepages.py
    from absl import app, flags
    from ml_collections import config_flags

    _FLAGS = flags.FLAGS
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Linear-probe config file (path[:arg]).")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where linprobe.json and metrics go.", required=True)
    flags.mark_flag_as_required("config")
    from mdistill import cli

    _DISTRIBUTED = cli.define_distributed_flags()
    app.run(main, flags_parser=cli.parse_flags)  # a config file or field that fails: one error line
