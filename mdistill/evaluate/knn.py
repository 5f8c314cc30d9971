"""k-NN classification on frozen features: a cheap signal of representation quality.

Features of a labelled train split (the memory bank) and of a test split are L2-normalised;
each test image takes its k nearest train features by cosine similarity, and each neighbour
votes for its label with weight exp(cosine / T) (k=20, T=0.07, as DINO and common
practice). Reports top-1 and top-5 accuracy in percent.

Standalone, on the latest checkpoint of a run (model and data come from the run's saved
config; --config.<field> overrides any field of it, e.g. the k-NN settings in config.eval):

  python -m mdistill.evaluate.knn --workdir=runs/demo/teacher --config.eval.knn_train_examples=-1

writes <workdir>/knn.json. During pre-training, KNNMonitor runs it every
config.eval.knn_every steps on the live parameters.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdistill.evaluate.common import FeatureExtractor, encoder_params, load_encoder, load_split, write_results


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "chunk"))
def knn_votes(train_feats, train_labels, test_feats, k: int, temperature: float, num_classes: int, chunk: int):
    """Class scores [M, num_classes] for test_feats [M, D] (M a multiple of chunk).

    train_labels < 0 mark padding rows, which never count as neighbours."""
    normalize = lambda f: f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + 1e-12)  # noqa: E731
    train = normalize(train_feats.astype(jnp.float32))

    def one_chunk(queries):
        sim = normalize(queries.astype(jnp.float32)) @ train.T  # [chunk, N] cosine similarities
        sim = jnp.where(train_labels[None, :] >= 0, sim, -jnp.inf)
        top, idx = jax.lax.top_k(sim, k)
        weights = jnp.exp(top / temperature)  # cosine <= 1, so at most e^(1/T): no overflow at T=0.07
        return jnp.einsum("mk,mkc->mc", weights, jax.nn.one_hot(train_labels[idx], num_classes))

    # Chunks bound the [chunk, N] similarity matrix: a full split would not fit in memory.
    queries = test_feats.reshape(-1, chunk, test_feats.shape[-1])
    return jax.lax.map(one_chunk, queries).reshape(-1, num_classes)


def accuracy(scores: np.ndarray, labels: np.ndarray, top: int) -> float:
    best = np.argsort(-scores, axis=1)[:, :top]
    return float(100.0 * np.mean(np.any(best == labels[:, None], axis=1)))


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=20, temperature=0.07,
                 num_classes: int | None = None, chunk: int = 256) -> dict:
    """Top-1 (and top-5 with >= 5 classes) k-NN accuracy in percent.

    train_labels and test_labels may contain -1 for padding rows; those are ignored."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    if k > int(np.sum(train_labels >= 0)):
        raise ValueError(f"k={k} exceeds the {int(np.sum(train_labels >= 0))} labelled train examples")
    m = len(test_labels)
    pad = -m % chunk
    test_feats = jnp.pad(jnp.asarray(test_feats), ((0, pad), (0, 0)))
    scores = np.asarray(jax.device_get(knn_votes(jnp.asarray(train_feats), jnp.asarray(train_labels), test_feats,
                                                 k, temperature, num_classes, chunk)))[:m]
    valid = test_labels >= 0
    out = {"knn_top1": accuracy(scores[valid], test_labels[valid], 1)}
    if num_classes >= 5:
        out["knn_top5"] = accuracy(scores[valid], test_labels[valid], 5)
    return out


class KNNMonitor:
    """k-NN accuracy of the student encoder every config.eval.knn_every steps of pre-training.

    The labelled images (knn_train_examples + knn_test_examples) are read once, at
    construction, so a dataset without labels fails before training starts."""

    def __init__(self, config, mesh):
        self.config, self.every = config, int(config.eval.knn_every)
        if not self.every:
            return
        ev = config.eval
        self.train_images, self.train_labels = load_split(config, ev.train_split, ev.knn_train_examples)
        self.test_images, self.test_labels = load_split(config, ev.test_split, ev.knn_test_examples)
        self.extractor = FeatureExtractor(config, mesh)
        self.num_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1

    def maybe_run(self, step: int, params) -> dict:
        """Metrics {'knn_top1', 'knn_top5', 'knn_seconds'} at steps divisible by knn_every, else {}."""
        if not self.every or step % self.every:
            return {}
        return self.run(params)

    def run(self, params) -> dict:
        t0 = time.time()
        enc = encoder_params(params)
        train_f, train_ok = self.extractor.extract(enc, self.train_images)
        test_f, test_ok = self.extractor.extract(enc, self.test_images)
        pad = lambda y, ok: np.where(ok, np.resize(y, len(ok)), -1)  # noqa: E731 (-1: padding row)
        ev = self.config.eval
        out = knn_accuracy(train_f, pad(self.train_labels, train_ok), test_f, pad(self.test_labels, test_ok),
                           ev.knn_k, ev.knn_temperature, self.num_classes, chunk=self.extractor.batch_size)
        return dict(out, knn_seconds=time.time() - t0)


def main(argv):
    del argv
    from absl import logging
    from ml_collections import config_flags

    from mdistill import sharding, validation

    logging.set_verbosity(logging.WARNING)
    mesh = sharding.make_mesh()
    path = _CHECKPOINT.value or _WORKDIR.value
    params, config = load_encoder(path, mesh)
    # Only the fields given on the command line replace the run's own settings.
    for field, value in config_flags.get_override_values(_FLAGS["config"]).items():
        node = config
        *parents, leaf = field.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    config.eval.knn_every = max(int(config.eval.knn_every), 1)  # the monitor's switch: on here
    try:
        validation.validate_eval(config)
    except validation.ConfigError as e:
        sys.exit(f"error: {e}")
    monitor = KNNMonitor(config, mesh)
    results = monitor.run({"encoder": params})
    ev = config.eval
    results.update(checkpoint=path, k=ev.knn_k, temperature=ev.knn_temperature, pool=ev.pool,
                   train_examples=len(monitor.train_labels), test_examples=len(monitor.test_labels))
    write_results(_WORKDIR.value, "knn", results)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from mdistill.config_base import base_config

    _FLAGS = flags.FLAGS
    _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: its latest checkpoint is evaluated, "
                                   "knn.json is written there.", required=True)
    _CHECKPOINT = flags.DEFINE_string("checkpoint", "", "Evaluate this checkpoint instead (workdir, "
                                      "checkpoints/ folder or step folder).")
    _CONFIG = config_flags.DEFINE_config_dict("config", base_config(), "Overrides of the run's saved config.")
    app.run(main)
