"""Downstream evaluation: k-NN, linear probe, fine-tuning pieces, on tiny models."""

import jax
import numpy as np
import pytest

from mdistill import sharding
from mdistill.config_base import apply_smoke, base_config
from mdistill.evaluate import common
from mdistill.evaluate.knn import KNNMonitor, knn_accuracy


def clusters(n, num_classes=10, dim=32, seed=0, noise=0.3):
    """Features around one random centre per class: separable by construction."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels.astype(np.int32)


def test_knn_separable_is_accurate_and_shuffled_is_chance():
    train_x, train_y = clusters(2000, seed=0)
    test_x, test_y = clusters(500, seed=0)  # same centres (seed), fresh noise below
    test_x = test_x + 0.3 * np.random.default_rng(1).normal(size=test_x.shape).astype(np.float32)
    good = knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07)
    assert good["knn_top1"] > 95.0 and good["knn_top5"] >= good["knn_top1"]
    shuffled = np.random.default_rng(2).permutation(train_y)
    chance = knn_accuracy(train_x, shuffled, test_x, test_y, k=20, temperature=0.07)
    assert abs(chance["knn_top1"] - 10.0) < 6.0


def test_knn_ignores_padding_rows():
    train_x, train_y = clusters(200, num_classes=4, seed=3)
    padded_x = np.concatenate([train_x, 100 * np.ones((50, 32), np.float32)])  # close to everything
    padded_y = np.concatenate([train_y, -np.ones(50, np.int32)])
    a = knn_accuracy(train_x, train_y, train_x[:64], train_y[:64], k=5, chunk=32)
    b = knn_accuracy(padded_x, padded_y, train_x[:64], train_y[:64], k=5, chunk=32)
    assert a == b


def smoke_config():
    c = apply_smoke(base_config())
    c.eval.update(knn_every=5, knn_train_examples=64, knn_test_examples=32, batch_size=16, knn_k=5)
    return c


def test_knn_monitor_runs_on_schedule_on_8_devices():
    c = smoke_config()
    monitor = KNNMonitor(c, sharding.make_mesh())
    from mdistill.objectives import build_objective

    params = build_objective(c).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))
    assert monitor.maybe_run(3, params) == {}
    m = monitor.maybe_run(5, params)
    assert set(m) == {"knn_top1", "knn_top5", "knn_seconds"} and 0.0 <= m["knn_top1"] <= 100.0


def test_unlabelled_source_is_a_clear_error(monkeypatch):
    class NoLabels:
        def __len__(self):
            return 10

        def images(self, idx):
            return np.zeros((len(idx), 28, 28, 1), np.uint8)

    c = smoke_config()
    c.data.source = "tfds"
    monkeypatch.setattr(common.data, "build_source", lambda config, split: NoLabels())
    with pytest.raises(ValueError, match="has no labels"):
        KNNMonitor(c, sharding.make_mesh())
