"""Which patches each model sees. Pure functions of a PRNG key with static shapes: the
number of visible patches depends only on the config, so masking never recompiles."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mask(NamedTuple):
    ids_keep: jax.Array     # [B, K] visible patch indices, in the order the encoder sees them
    ids_restore: jax.Array  # [B, L] position of each patch in the shuffled order
    mask: jax.Array         # [B, L] 1.0 where the patch is hidden, 0.0 where visible


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample, rounded down as the official MAE does."""
    return int(num_patches * (1.0 - mask_ratio))


def random_masking(rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float) -> Mask:
    """Per-sample uniform random masking (MAE): shuffle patches by random noise and keep the
    first K of the shuffled order."""
    keep = num_visible(num_patches, mask_ratio)
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}")
    noise = jax.random.uniform(rng, (batch_size, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    hidden_in_shuffled_order = (jnp.arange(num_patches) >= keep).astype(jnp.float32)
    mask = jnp.take_along_axis(
        jnp.broadcast_to(hidden_in_shuffled_order, (batch_size, num_patches)), ids_restore, axis=1)
    return Mask(ids_shuffle[:, :keep], ids_restore, mask)
