"""k-NN classification on frozen features: a cheap signal of representation quality.

Features of a labelled train split (the memory bank) and of a test split are L2-normalised;
each test image takes its k nearest train features by cosine similarity, and each neighbour
votes for its label with weight exp(cosine / T) (k=20, T=0.07, as in DINO). Reports top-1
and top-5 accuracy in percent.

Standalone, on a pre-training checkpoint (an mdistill run, one step of it, or a converted
release). Model and data come from the run's saved config (a converted release
gets its architecture and base_config()'s ImageNet data); --config.<field> overrides any
field, e.g. the data or the k-NN settings in config.eval:

  python -m mdistill.evaluate.knn --checkpoint=runs/demo/student_dmae --workdir=runs/demo/student_dmae/knn \
      --config.eval.knn_train_examples=-1 --config.eval.knn_test_examples=-1

writes <workdir>/knn.json and prints it as a table; --baselines adds raw pixels and a
randomly initialised encoder of the same architecture, evaluated the same way. During pre-training, KNNMonitor runs
it every config.eval.knn_every steps on the live student encoder: mdistill.main builds it
(monitors()) and hands it to mdistill.train.train, whose loop (mdistill.loop) calls its maybe_run.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdistill.evaluate.common import (BASELINES, FeatureExtractor, baseline_params, check_model_fits_data,
                                      count_classes, data_record, encoder_params, hold_workdir, load_split,
                                      run_config, to_host, with_top5, write_results)
from mdistill.metrics import log
from mdistill.weights.checkpoint import CheckpointError


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
    train_labels, test_labels = to_host(train_labels), to_host(test_labels)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    if k > int(np.sum(train_labels >= 0)):
        raise ValueError(f"k={k} exceeds the {int(np.sum(train_labels >= 0))} labelled train examples")
    m = len(test_labels)
    test_feats = jnp.pad(jnp.asarray(test_feats), ((0, -m % chunk), (0, 0)))
    scores = to_host(knn_votes(jnp.asarray(train_feats), jnp.asarray(train_labels), test_feats,
                               k, temperature, num_classes, chunk))[:m]
    valid = test_labels >= 0
    out = {"knn_top1": accuracy(scores[valid], test_labels[valid], 1)}
    if with_top5(num_classes):
        out["knn_top5"] = accuracy(scores[valid], test_labels[valid], 5)
    return out


class KNNMonitor:
    """k-NN accuracy of the student encoder during pre-training, every config.eval.knn_every
    steps and at the end (also at every checkpoint when config.best_metric is a k-NN
    metric, so that each checkpoint is ranked by its own accuracy).

    The labels (knn_train_examples + knn_test_examples) are read at construction, so a
    dataset without labels fails before training starts; images are read at each run."""

    def __init__(self, config, mesh):
        self.config, self.every = config, int(config.eval.knn_every)
        self.for_checkpoints = "knn" in config.best_metric
        if self.for_checkpoints and not self.every:
            raise ValueError(f"config.best_metric={config.best_metric!r} needs the k-NN monitor: "
                             "set config.eval.knn_every > 0")
        if not self.every:
            return
        ev = config.eval
        self.train_split = load_split(config, ev.train_split, ev.knn_train_examples)
        self.test_split = load_split(config, ev.test_split, ev.knn_test_examples)
        self.extractor = FeatureExtractor(config, mesh)
        self.num_classes = max(count_classes(self.train_split.source, self.train_split.labels),
                               int(self.test_split.labels.max()) + 1)

    def metric_names(self) -> set[str]:
        """What it logs when it runs (top-5 only with more than 5 classes)."""
        if not self.every:
            return set()
        return {"knn_top1", "knn_seconds"} | ({"knn_top5"} if with_top5(self.num_classes) else set())

    def due(self, step: int, is_last: bool = False, saving: bool = False) -> bool:
        """Every knn_every steps, at the end, and at every save when checkpoints are ranked by it."""
        return bool(self.every) and (step % self.every == 0 or is_last or (saving and self.for_checkpoints))

    def __call__(self, step: int, params) -> dict:
        """{'knn_top1', 'knn_top5', 'knn_seconds'} of the encoder in `params` at `step`, logged."""
        out = self.run(params)
        top5 = f" | top5 {out['knn_top5']:.2f}" if "knn_top5" in out else ""
        log(f"step {step} | k-NN top1 {out['knn_top1']:.2f}{top5} | {out['knn_seconds']:.0f}s")
        return out

    def maybe_run(self, step: int, params, is_last: bool = False, saving: bool = False) -> dict:
        """The k-NN metrics when due at this step, else {}."""
        if not self.due(step, is_last, saving):
            return {}
        jax.block_until_ready(params)  # the steps in flight finish first: knn_seconds is k-NN time only
        return self(step, params)

    def run(self, params) -> dict:
        """k-NN accuracy of the encoder in `params` (a training state's, or an encoder's own)."""
        return self.run_encoder(encoder_params(params))

    def run_encoder(self, enc) -> dict:
        """k-NN accuracy of encoder parameters `enc` (None: the raw-pixel baseline)."""
        t0 = time.time()
        train_f, train_y = self.extractor.extract(enc, self.train_split)
        test_f, test_y = self.extractor.extract(enc, self.test_split)
        ev = self.config.eval
        out = knn_accuracy(train_f, train_y, test_f, test_y, ev.knn_k, ev.knn_temperature, self.num_classes,
                           chunk=self.extractor.batch_size)
        return dict(out, knn_seconds=time.time() - t0)


def monitors(config, mesh) -> list:
    """The monitors a pre-training config asks for, for mdistill.train.train: the k-NN
    monitor when config.eval.knn_every > 0."""
    return [KNNMonitor(config, mesh)] if config.eval.knn_every else []


def evaluate_checkpoint(path: str, workdir: str, overrides: dict | None = None, mesh=None,
                        baselines: bool = False) -> dict:
    """k-NN of the encoder in checkpoint `path` on its run's labelled splits; `overrides`
    {'eval.knn_k': 10, ...} replace fields of that config. With `baselines`, also raw pixels
    and a random encoder of the same architecture, under 'baselines'. Writes <workdir>/knn.json
    (checked writable first, and held for this run alone: the workdir lock, as pre-training)."""
    with hold_workdir(workdir):
        return _evaluate_checkpoint(path, workdir, overrides, mesh, baselines)


def _evaluate_checkpoint(path: str, workdir: str, overrides: dict | None, mesh, baselines: bool) -> dict:
    from mdistill import sharding
    from mdistill.weights import loader
    from mdistill.config import validation

    mesh = mesh or sharding.make_mesh()
    loaded = loader.load(path, placement=mesh, decoder=False)  # by the partition rules
    params, config = loaded.encoder, run_config(loaded.meta)
    for field, value in (overrides or {}).items():
        *parents, leaf = field.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    config.eval.knn_every = max(int(config.eval.knn_every), 1)  # the monitor's switch: on here
    config.best_metric = ""
    validation.validate_eval(config, mesh.size)
    # a video ViT on images (or the reverse) would fail deep in the encoder: refused here, named
    check_model_fits_data(config, f"checkpoint {path}", loaded.arch.spec.layout.tubelet)
    monitor = KNNMonitor(config, mesh)
    results = monitor.run({"encoder": params})
    ev = config.eval
    results.update(checkpoint=path, variant=config.student.variant, pool=ev.pool,
                   k=ev.knn_k, temperature=ev.knn_temperature, train_examples=len(monitor.train_split),
                   test_examples=len(monitor.test_split),
                   data=data_record(config, {"train": monitor.train_split, "test": monitor.test_split},
                                    monitor.num_classes))
    if baselines:
        results["baselines"] = {name: monitor.run_encoder(baseline_params(name, config, mesh)) for name in BASELINES}
    write_results(workdir, "knn", results)
    return results


def main(argv):
    del argv
    from absl import logging
    from ml_collections import config_flags

    logging.set_verbosity(logging.WARNING)
    from mdistill import distributed

    try:  # several processes: on a detected cluster (Cloud TPU pods, SLURM) or as told, as pre-training
        distributed.maybe_initialize(*_DISTRIBUTED())
    except RuntimeError as e:  # a cluster whose processes or devices do not add up
        sys.exit(f"error: {e}")
    # Only the fields given on the command line replace the run's own settings.
    overrides = config_flags.get_override_values(_FLAGS["config"])
    try:
        evaluate_checkpoint(_CHECKPOINT.value or _WORKDIR.value, _WORKDIR.value, overrides,
                            baselines=_BASELINES.value)
    # ConfigError and DataError are ValueErrors; OSError: an unreadable file, a full disk
    except (ValueError, OSError, KeyError, CheckpointError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from mdistill import hugepages

    hugepages.ensure()  # before any large allocation; see mdistill/hugepages.py
    from absl import app, flags
    from ml_collections import config_flags

    from mdistill.config import base_config

    _FLAGS = flags.FLAGS
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where knn.json goes; also the checkpoint to evaluate "
                                   "when --checkpoint is not given.", required=True)
    _CHECKPOINT = flags.DEFINE_string("checkpoint", "", "The checkpoint to evaluate: a workdir, its "
                                      "checkpoints/ folder, one step folder, or a converted release.")
    _BASELINES = flags.DEFINE_bool("baselines", False, "Also k-NN on raw pixels and on a randomly initialised "
                                   "encoder of the checkpoint's architecture, printed beside it.")
    _CONFIG = config_flags.DEFINE_config_dict("config", base_config(), "Overrides of the run's saved config.")
    from mdistill import cli

    _DISTRIBUTED = cli.define_distributed_flags()
    app.run(main, flags_parser=cli.parse_flags)  # a config file or field that fails: one error line
