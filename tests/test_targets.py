"""The distillation target's options: the cosine loss and LayerNorm-normalised teacher
features (MaskDistill's), against direct numpy computations; DMAE's L2 normalisation against
PyTorch's F.normalize, which the DMAE release uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill.config import apply_smoke, base_config, validation
from mdistill.objectives.common import feature_loss, l2_normalize, normalize_targets


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


def test_l2_normalisation_is_x_over_the_norm_clamped_at_1e_12():
    x = features(3, (4, 16))
    x[1] *= 1e-14  # a norm below the clamp: divided by 1e-12, not by itself
    x[2] = 0.0
    norm = np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(l2_normalize(jnp.asarray(x)), x / norm, rtol=1e-6, atol=1e-7)
    assert np.isfinite(np.asarray(jax.grad(lambda v: l2_normalize(v).sum())(jnp.asarray(x)))).all()
    s, t = features(4), features(5)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(feature_loss(s, t, "l1", True), np.abs(unit(s) - unit(t)).mean(), rtol=1e-5)


def test_dmaes_normalisation_is_f_normalize():
    torch = pytest.importorskip("torch")
    x = features(6, (6, 32))
    x[1] *= 1e-14
    x[2] = 0.0
    want = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1).numpy()
    np.testing.assert_allclose(l2_normalize(jnp.asarray(x)), want, rtol=1e-6, atol=1e-7)
