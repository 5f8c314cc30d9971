import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill.models import MAE, Encoder, ViTSpec, patchify, posemb_sincos_2d, unpatchify

# Encoder parameters without classifier head and fixed position embedding. Adding those
# back gives timm's published totals (5.7M, 22.1M, 86.6M, 304.3M, 632.0M).
STANDARD = {
    ("Ti/16", 224): 5_486_592,
    ("S/16", 224): 21_590_016,
    ("B/16", 224): 85_647_360,
    ("L/16", 224): 303_099_904,
    ("H/14", 224): 630_435_840,
}


@pytest.mark.parametrize("variant,size", sorted(STANDARD))
def test_standard_sizes_abstractly(variant, size):
    spec = ViTSpec.parse(variant)
    enc = Encoder(spec)
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((2, 49), jnp.int32)
    variables = jax.eval_shape(lambda x, i: enc.init(jax.random.PRNGKey(0), x, i), images, ids)
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
    assert n == STANDARD[(variant, size)]
    out, feats = jax.eval_shape(lambda v, x, i: enc.apply(v, x, i, return_blocks=(0, spec.depth - 1)),
                                variables, images, ids)
    assert out.shape == (2, 50, spec.width)
    assert set(feats) == {0, spec.depth - 1}


def test_mae_output_shape_and_decoder_size():
    spec = ViTSpec.parse("B/16")
    mae = MAE(spec)  # decoder 512 x 8 as in MAE
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    ids_keep = jax.ShapeDtypeStruct((2, 49), jnp.int32)
    ids_restore = jax.ShapeDtypeStruct((2, 196), jnp.int32)
    variables = jax.eval_shape(lambda *a: mae.init(jax.random.PRNGKey(0), *a), images, ids_keep, ids_restore)
    pred, _ = jax.eval_shape(mae.apply, variables, images, ids_keep, ids_restore)
    assert pred.shape == (2, 196, 16 * 16 * 3)
    n_dec = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]["decoder"]))
    # embed 768->512, mask token, 8 blocks of width 512, norm, pixel head 512->768
    assert n_dec == 512 * 768 + 512 + 512 + 8 * 3_152_384 + 2 * 512 + 512 * 768 + 768


def _official_style_posemb(dim, grid):
    """Written out independently, following the MAE release's get_2d_sincos_pos_embed."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.meshgrid(gw, gh)  # w first, as the release does
    g = np.stack(g, axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def test_posemb_matches_the_official_layout():
    np.testing.assert_allclose(posemb_sincos_2d(64, 7), _official_style_posemb(64, 7), atol=1e-6)


def test_patchify_is_row_col_channel_and_inverts():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; its pixels run row by row, channels innermost
    np.testing.assert_array_equal(p[0, 1], x[0, 0:4, 4:8, :].reshape(-1))
    np.testing.assert_array_equal(unpatchify(p, 4, 3), x)


@pytest.fixture(scope="module")
def tiny_encoder():
    spec = ViTSpec.parse("mu/4")
    enc = Encoder(spec)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    params = enc.init(jax.random.PRNGKey(1), images)
    return spec, enc, params, images


def test_visible_subset_is_equivariant_to_the_order_given(tiny_encoder):
    spec, enc, params, images = tiny_encoder
    full, _ = enc.apply(params, images)
    ids = jnp.asarray([[5, 0, 9, 3], [15, 2, 7, 11]], jnp.int32)
    sub, _ = enc.apply(params, images, ids)
    # the subset result differs from the full one (fewer tokens attend) ...
    assert sub.shape == (2, 5, spec.width)
    assert not np.allclose(sub[:, 1:], jnp.take_along_axis(full[:, 1:], ids[:, :, None], axis=1), atol=1e-3)
    # ... and permuting the visible indices permutes the tokens, nothing else
    perm = jnp.asarray([2, 0, 3, 1])
    sub_perm, _ = enc.apply(params, images, ids[:, perm])
    np.testing.assert_allclose(sub_perm[:, 1:], sub[:, 1:][:, perm], atol=1e-5)
    np.testing.assert_allclose(sub_perm[:, 0], sub[:, 0], atol=1e-5)


def test_stop_after_returns_the_same_features_as_the_full_run(tiny_encoder):
    spec, enc, params, images = tiny_encoder
    _, full = enc.apply(params, images, return_blocks=tuple(range(spec.depth)))
    out, part = enc.apply(params, images, return_blocks=(1,), stop_after=1)
    np.testing.assert_allclose(part[1], full[1], atol=1e-6)
    np.testing.assert_allclose(out, full[1], atol=1e-6)  # raw block output: no final norm


def test_unknown_variant_names_the_allowed_sizes():
    with pytest.raises(ValueError, match="size one of"):
        ViTSpec.parse("Q/16")
