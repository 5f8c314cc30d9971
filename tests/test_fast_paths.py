"""The step's fast paths compute what the plain formulation does: attention layout, GELU
through erf, embedding only the visible patches, rematerialisation, bf16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill.config import apply_smoke, base_config, validation
from mdistill.models import MAE, ViTSpec
from mdistill.models.vit import PatchEmbed, gelu, multi_head_attention
from mdistill.objectives import build_objective


def test_attention_matches_jax_dot_product_attention():
    qkv = jax.random.normal(jax.random.PRNGKey(0), (2, 17, 3 * 4 * 8))
    q, k, v = jnp.split(qkv, 3, axis=-1)
    heads = lambda t: t.reshape(2, 17, 4, 8)  # noqa: E731
    expected = jax.nn.dot_product_attention(heads(q), heads(k), heads(v)).reshape(2, 17, 32)
    np.testing.assert_allclose(multi_head_attention(qkv, 4), expected, atol=2e-6)


@pytest.mark.slow
def test_attention_gradients_match_jax_dot_product_attention():
    # Large logits check that the max shift keeps exp finite; the row max has no gradient
    # in mdistill's formulation, and the gradients must still be softmax's.
    qkv = 6.0 * jax.random.normal(jax.random.PRNGKey(2), (2, 13, 3 * 4 * 8))
    cotangent = jax.random.normal(jax.random.PRNGKey(3), (2, 13, 32))

    def reference(qkv):
        q, k, v = (t.reshape(2, 13, 4, 8) for t in jnp.split(qkv, 3, axis=-1))
        return jax.nn.dot_product_attention(q, k, v).reshape(2, 13, 32)

    loss = lambda f: lambda qkv: jnp.vdot(f(qkv), cotangent)  # noqa: E731
    expected = jax.grad(loss(reference))(qkv)
    got = jax.grad(loss(lambda qkv: multi_head_attention(qkv, 4)))(qkv)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-5 * float(jnp.abs(expected).max()))


def test_gelu_is_the_exact_one():
    x = jnp.linspace(-8, 8, 10001)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)


def test_embedding_the_visible_patches_equals_gathering_all():
    embed = PatchEmbed(4, 16)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    ids = jnp.array([[3, 0, 15, 7], [1, 2, 9, 4]])
    params = embed.init(jax.random.PRNGKey(1), images)
    full = jax.jit(embed.apply)(params, images)
    np.testing.assert_allclose(jax.jit(embed.apply)(params, images, ids), jnp.take_along_axis(full, ids[:, :, None], 1),
                               atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
@pytest.mark.slow
def test_remat_changes_nothing_but_memory(remat):
    spec = ViTSpec.parse("mu/4")
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    ids_keep = jnp.tile(jnp.arange(4), (2, 1))
    ids_restore = jnp.tile(jnp.arange(16), (2, 1))
    plain, rematted = MAE(spec, 32, 1, 4), MAE(spec, 32, 1, 4, remat=remat)
    params = jax.jit(plain.init)(jax.random.PRNGKey(1), images, ids_keep, ids_restore)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(rematted.init, jax.random.PRNGKey(1), images, ids_keep, ids_restore))

    def loss(model, p):
        pred, feats = model.apply(p, images, ids_keep, ids_restore, return_blocks=(1,))
        return jnp.mean(pred ** 2) + jnp.mean(feats[1] ** 2)

    g_plain = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
    g_remat = jax.jit(jax.grad(lambda p: loss(rematted, p)))(params)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_parameters():
    config = apply_smoke(base_config())
    config.method, config.dtype, config.teacher.dtype = "dmae", "bfloat16", "bfloat16"
    objective = build_objective(config)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)), jnp.uint8)
    params = jax.jit(objective.init)(jax.random.PRNGKey(0), images)
    teacher = jax.jit(objective.teacher.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(teacher)} == {jnp.dtype(jnp.bfloat16)}
    (loss, _), grads = jax.jit(jax.value_and_grad(objective.loss, has_aux=True))(params, teacher, images,
                                                                                 jax.random.PRNGKey(2))
    assert np.isfinite(float(loss))
    assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_unknown_remat_is_a_config_error():
    config = apply_smoke(base_config())
    config.remat = "everything"
    with pytest.raises(validation.ConfigError, match="config.remat='everything'"):
        validation.validate(config, 1)
