"""Linear probing as in MAE: a frozen encoder, then BatchNorm without affine parameters and
a linear classifier, trained with LARS (momentum 0.9, no weight decay), lr = blr * batch /
256 with warm-up and cosine decay, cross-entropy without label smoothing.

The encoder is frozen, so its features are computed once (sharded over the mesh) and the
head trains on them; that makes each step a tiny matmul and the Fashion-MNIST probe runs
in a minute or two on a CPU. It also means no data augmentation: MAE's probe sees
RandomResizedCrop + flip on ImageNet, so expect numbers slightly off the paper's there.

  python -m mdistill.evaluate.linprobe --config=configs/linprobe_fmnist.py \
      --config.pretrained=runs/demo/dmae --workdir=runs/demo/linprobe

writes <workdir>/linprobe.json and metrics.jsonl. --config.knn=True adds k-NN accuracy on
the same examples from the same forward pass (demo.sh uses it: the features of 70k images
are the bulk of both evaluations' time). --config.baselines=True evaluates raw pixels and a
random encoder of the same architecture the same way and prints them beside the encoder.
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

from mdistill import optim, sharding
from mdistill.evaluate.common import (BASELINES, POOLS, FeatureExtractor, baseline_params, load_encoder, load_split,
                                      random_encoder, to_host, topk_correct, validate_downstream, write_results)
from mdistill.evaluate.knn import knn_accuracy
from mdistill.metrics import MetricsWriter, log
from mdistill.validation import ConfigError


def linprobe_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """MAE's ViT-B linear-probe recipe on top of base_config()."""
    c.pretrained = ""          # mdistill workdir / checkpoint; empty = random encoder (smoke only)
    c.num_classes = 1000
    c.batch_size = 16384
    c.num_epochs, c.warmup_epochs = 90.0, 10.0
    c.optim.update(blr=0.1, lr=-1.0, weight_decay=0.0, min_lr=0.0)
    c.eval.update(pool="cls", batch_size=256)  # MAE probes the cls token (after the final norm)
    c.train_examples = -1      # -1: the whole train split
    c.test_examples = -1
    c.log_every = 100
    # Also k-NN (config.eval.knn_k, knn_temperature) on the same examples, from the same
    # forward pass, pooled by knn_pool; the results go into linprobe.json as knn_*.
    c.knn = False
    c.eval.knn_pool = "avg"  # as the k-NN monitor and mdistill.evaluate.knn pool by default
    # Also evaluate the baselines (raw pixels; a random encoder of config.student.variant,
    # seed RANDOM_ENCODER_SEED) the same way; they go into linprobe.json under 'baselines'.
    c.baselines = False
    return c


class ProbeHead(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        # BatchNorm without affine (PyTorch momentum 0.1 = Flax 0.9), as MAE's linprobe does.
        x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False, epsilon=1e-6,
                         momentum=0.9)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.01))(x)


def frozen_encoder(config, mesh):
    """Pretrained encoder params (checked against config.student.variant) or a random one."""
    if config.pretrained:
        params, _ = load_encoder(config.pretrained, mesh, config.student.variant, config.image_size,
                                 config.data.channels)
        return params
    log("WARNING: config.pretrained is empty: evaluating a randomly initialised encoder (smoke only)")
    return random_encoder(config.student.variant, config.image_size, config.data.channels, mesh, config.seed)


def run(config, workdir: str, mesh=None) -> dict:
    """Probe (and with config.knn, k-NN) the encoder of config.pretrained, and with
    config.baselines the raw pixels and a random encoder too (under 'baselines' in the
    results). Writes <workdir>/linprobe.json; metrics.jsonl logs the encoder's probe."""
    mesh = mesh or sharding.make_mesh()
    validate_downstream(config, mesh.size)
    if config.knn and config.eval.knn_pool not in POOLS:
        raise ConfigError(f"config.eval.knn_pool={config.eval.knn_pool!r} is invalid: expected one of {POOLS}")
    # Labels are checked before anything compiles.
    train_split = load_split(config, config.eval.train_split, config.train_examples, config.num_classes)
    test_split = load_split(config, config.eval.test_split, config.test_examples, config.num_classes)
    extractor = FeatureExtractor(config, mesh)
    results = evaluate_encoder(config, mesh, extractor, frozen_encoder(config, mesh), train_split, test_split,
                               MetricsWriter(workdir))
    results["pretrained"] = config.pretrained or "(random)"
    if config.baselines:
        results["baselines"] = {}
        for name in BASELINES:
            log(f"linprobe: baseline '{name}'")
            results["baselines"][name] = evaluate_encoder(config, mesh, extractor, baseline_params(name, config, mesh),
                                                          train_split, test_split)
    write_results(workdir, "linprobe", results)
    return results


def evaluate_encoder(config, mesh, extractor, encoder, train_split, test_split, writer=None) -> dict:
    """Features of both splits from one forward pass, then k-NN (config.knn) and the probe."""
    t0 = time.time()
    if config.knn:
        train_all, train_y = extractor.extract(encoder, train_split, all_pools=True)
        test_all, test_y = extractor.extract(encoder, test_split, all_pools=True)
        train_f, test_f = train_all[extractor.pool], test_all[extractor.pool]
    else:
        train_f, _ = extractor.extract(encoder, train_split)
        test_f, test_y = extractor.extract(encoder, test_split)
    log(f"linprobe: features of {len(train_split)} train and {len(test_split)} test images "
        f"({train_f.shape[-1]}-d, pool {extractor.pool}) in {time.time() - t0:.0f}s")
    knn = {}
    if config.knn:
        ev = config.eval
        knn = knn_accuracy(train_all[ev.knn_pool], train_y, test_all[ev.knn_pool], test_y, ev.knn_k,
                           ev.knn_temperature, config.num_classes, chunk=extractor.batch_size)
        knn.update(knn_pool=ev.knn_pool, knn_k=ev.knn_k)
        del train_all, test_all
        log(f"linprobe: k-NN (k={ev.knn_k}, pool {ev.knn_pool}) top1 {knn['knn_top1']:.2f}")
    probe = train_probe(config, mesh, train_f, train_split.labels, test_f, test_y, writer)
    return {**probe, "pool": extractor.pool, "train_examples": len(train_split), "test_examples": len(test_split),
            **knn}


def train_probe(config, mesh, train_f, train_labels, test_f, test_y, writer=None) -> dict:
    """The probe head trained on precomputed features; top-1/top-5 on the test features."""
    n, b = len(train_labels), config.batch_size
    if n < b:
        raise ValueError(f"{n} train examples, fewer than config.batch_size={b}")
    per_epoch = n // b
    total = round(config.num_epochs * per_epoch)
    lr = optim.schedule(config.optim, b, total, round(config.warmup_epochs * per_epoch))
    kernels = lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "kernel", p)  # noqa: E731
    # MAE's LARS leaves biases (1-d parameters) out of weight decay and the trust ratio.
    tx = optax.lars(lr, weight_decay=config.optim.weight_decay, weight_decay_mask=kernels,
                    trust_ratio_mask=kernels, momentum=0.9)
    head = ProbeHead(config.num_classes)
    variables = head.init(jax.random.PRNGKey(config.seed), jnp.zeros((2, train_f.shape[-1])), train=False)
    rep, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    params, stats = variables["params"], variables["batch_stats"]
    params, stats, opt_state = jax.device_put((params, stats, tx.init(params)), rep)
    train_y = jax.device_put(train_labels, rep)

    # Features enter as arguments, not closures: jit would embed closed-over arrays as constants.
    @jax.jit(in_shardings=(rep, rep, rep, batch_sharding, rep, batch_sharding), out_shardings=rep)
    def step(params, stats, opt_state, feats, labels, idx):
        x, y = feats[idx], labels[idx]

        def loss_fn(p):
            logits, new = head.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    @jax.jit
    def evaluate(params, stats, feats, test_y):
        logits = head.apply({"params": params, "batch_stats": stats}, feats, train=False)
        count = jnp.sum(test_y >= 0)
        return {f"top{k}": 100.0 * topk_correct(logits, test_y, k) / count for k in (1, 5)}

    log(f"linprobe: {total} steps ({per_epoch}/epoch), batch {b}, "
        f"peak lr {optim.peak_learning_rate(config.optim, b):.3g}")
    losses, metrics, t0 = [], {}, time.time()
    for s in range(total):
        epoch, offset = divmod(s, per_epoch)
        idx = np.random.default_rng((config.seed, epoch)).permutation(n)[offset * b:(offset + 1) * b]
        params, stats, opt_state, loss = step(params, stats, opt_state, train_f, train_y,
                                              jax.device_put(idx, batch_sharding))
        losses.append(loss)
        if (s + 1) % config.log_every == 0 or s + 1 == total:
            metrics = {k: float(to_host(v)) for k, v in evaluate(params, stats, test_f, test_y).items()}
            metrics.update(loss=float(np.mean([to_host(x) for x in losses])), lr=float(lr(s)),
                           epoch=(s + 1) / per_epoch)
            if writer:
                writer.write(s + 1, metrics)
            log(f"step {s + 1}/{total} | loss {metrics['loss']:.4f} | top1 {metrics['top1']:.2f} | "
                f"top5 {metrics['top5']:.2f}")
            losses = []
    if writer:
        writer.close()
    return {"top1": metrics["top1"], "top5": metrics["top5"], "train_loss": metrics["loss"],
            "epochs": float(config.num_epochs), "steps": total, "train_seconds": round(time.time() - t0, 1)}


def main(argv):
    del argv
    from absl import logging

    from mdistill.checkpoint import CheckpointError

    logging.set_verbosity(logging.WARNING)
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, KeyError, CheckpointError) as e:  # ConfigError is a ValueError
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # before any large allocation; see mdistill/hugepages.py
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Linear-probe config file (path[:arg]).")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where linprobe.json and metrics go.", required=True)
    flags.mark_flag_as_required("config")
    app.run(main)
