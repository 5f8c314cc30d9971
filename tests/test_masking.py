import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill import masking


@pytest.mark.parametrize("num_patches,ratio,expected",
                         [(196, 0.75, 49), (196, 0.95, 9), (196, 0.98, 3), (49, 0.75, 12)])
def test_visible_count_is_exact(num_patches, ratio, expected):
    m = masking.random_masking(jax.random.PRNGKey(0), 5, num_patches, ratio)
    assert m.ids_keep.shape == (5, expected)
    np.testing.assert_array_equal(m.mask.sum(axis=1), num_patches - expected)
    # the visible indices are exactly the unmasked patches, without repeats
    for b in range(5):
        keep = np.asarray(m.ids_keep[b])
        assert len(set(keep.tolist())) == expected
        np.testing.assert_array_equal(np.asarray(m.mask[b])[keep], 0.0)


def test_restore_order_inverts_the_shuffle():
    m = masking.random_masking(jax.random.PRNGKey(1), 4, 64, 0.75)
    tokens = jnp.broadcast_to(jnp.arange(64), (4, 64))
    visible = jnp.take_along_axis(tokens, m.ids_keep, axis=1)
    # put visible tokens first, fill the rest with -1 (mask tokens), unshuffle with ids_restore
    filled = jnp.concatenate([visible, -jnp.ones((4, 64 - 16), tokens.dtype)], axis=1)
    restored = jnp.take_along_axis(filled, m.ids_restore, axis=1)
    np.testing.assert_array_equal(restored, jnp.where(m.mask == 0, tokens, -1))


def test_deterministic_per_key_and_different_across_keys():
    a = masking.random_masking(jax.random.PRNGKey(3), 8, 196, 0.75)
    b = masking.random_masking(jax.random.PRNGKey(3), 8, 196, 0.75)
    c = masking.random_masking(jax.random.PRNGKey(4), 8, 196, 0.75)
    np.testing.assert_array_equal(a.ids_keep, b.ids_keep)
    assert not np.array_equal(a.mask, c.mask)
    # samples of one batch get different masks
    assert not np.array_equal(a.mask[0], a.mask[1])


def test_every_patch_masked_with_the_expected_frequency():
    m = masking.random_masking(jax.random.PRNGKey(5), 20000, 16, 0.75)
    freq = np.asarray(m.mask).mean(axis=0)
    # binomial std over 20000 samples is ~0.003
    np.testing.assert_allclose(freq, 0.75, atol=0.015)


def test_no_visible_patch_is_an_error():
    with pytest.raises(ValueError, match="no visible patch"):
        masking.random_masking(jax.random.PRNGKey(0), 1, 16, 0.99)
