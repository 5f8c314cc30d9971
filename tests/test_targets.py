"""The distillation target's options: the cosine loss and LayerNorm-normalised teacher
features (MaskDistill's), against direct numpy computations."""

import numpy as np
import pytest

from mdistill.config import apply_smoke, base_config, validation
from mdistill.objectives.common import feature_loss, normalize_targets


def features(seed, shape=(2, 5, 8)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3 + 1


def test_cosine_loss_is_one_minus_the_cosine_per_token():
    s, t = features(0), features(1)
    cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    np.testing.assert_allclose(feature_loss(s, t, "cosine", False), np.mean(1 - cos), rtol=1e-5)
    assert float(feature_loss(s, 2.5 * s, "cosine", False)) == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_layernorm_targets_are_standardised_per_token():
    t = features(2)
    want = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalize_targets(t, "layernorm"), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(normalize_targets(t, "none"), t)


def test_an_unknown_target_norm_is_refused():
    c = apply_smoke(base_config())
    c.method = "dmae"
    c.distill.target_norm = "batchnorm"
    with pytest.raises(validation.ConfigError, match=r"config.distill.target_norm='batchnorm' is invalid"):
        validation.validate(c)
