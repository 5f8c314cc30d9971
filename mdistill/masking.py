"""Which patches each model sees. Pure functions of a PRNG key with static shapes: the
number of visible patches depends only on the config, so masking never recompiles.

Every objective draws its masks through sample(), which reads config.masking.kind: a kind
is one function in ORDERS, rng -> a per-sample order of the patches, of which the student
sees the first K_s and the teacher (AMD) the first K_t. 'random' is MAE's uniform shuffle;
the next mask is one more such function."""

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
    return _mask_from_order(_shuffle(rng, batch_size, num_patches), keep)


def tube_masking(rng: jax.Array, batch_size: int, frames: int, patches_per_frame: int,
                 mask_ratio: float) -> Mask:
    """Video masking consistent across frames (VideoMAE's tubes): one spatial mask per
    sample, the same on every frame of a [T, H*W] token grid (token t*H*W + s)."""
    keep = num_visible(patches_per_frame, mask_ratio)
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {patches_per_frame}")
    spatial = _shuffle(rng, batch_size, patches_per_frame)
    return _mask_from_order(_tube_order(spatial, frames, (keep,)), frames * keep)


class AsymmetricMask(NamedTuple):
    """What each model sees. AMD's nested masks: the teacher sees every patch the student
    sees, and more; for MAE and DMAE the teacher's patches are the student's (no difference)."""

    student: Mask             # the student's mask (ids_keep: [B, K_s])
    teacher_ids: jax.Array    # [B, K_t]: student.ids_keep, then the K_t - K_s difference patches

    @property
    def diff_ids(self) -> jax.Array:
        """[B, K_t - K_s] patches the teacher sees and the student does not."""
        return self.teacher_ids[:, self.student.ids_keep.shape[1]:]


def asymmetric_masking(rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float,
                       teacher_mask_ratio: float) -> AsymmetricMask:
    """Nested random masks (AMD): one shuffle per sample; the student keeps its first K_s
    patches, the teacher the first K_t > K_s of the same shuffle, so nesting holds by
    construction and both counts are static."""
    keep_s, keep_t = _nested_counts(num_patches, mask_ratio, teacher_mask_ratio)
    return _asymmetric_from_order(_shuffle(rng, batch_size, num_patches), keep_s, keep_t)


def asymmetric_tube_masking(rng: jax.Array, batch_size: int, frames: int, patches_per_frame: int,
                            mask_ratio: float, teacher_mask_ratio: float) -> AsymmetricMask:
    """Nested masks for video, consistent across frames: the counts are per frame, and every
    frame repeats the same spatial student, difference and hidden sets (AMD's video masks)."""
    keep_s, keep_t = _nested_counts(patches_per_frame, mask_ratio, teacher_mask_ratio)
    spatial = _shuffle(rng, batch_size, patches_per_frame)
    order = _tube_order(spatial, frames, (keep_s, keep_t))
    return _asymmetric_from_order(order, frames * keep_s, frames * keep_t)


Masks = AsymmetricMask  # what sample() returns, for every objective


def random_order(rng: jax.Array, batch_size: int, num_patches: int) -> jax.Array:
    """MAE's masking: a uniformly random permutation of the patches per sample."""
    return _shuffle(rng, batch_size, num_patches)


# config.masking.kind -> (rng, batch_size, num_patches) -> [B, L] int32 per-sample order of
# the patches; each model sees a prefix of it (so a teacher's superset holds by construction)
ORDERS = {"random": random_order}


def kind_of(config) -> str:
    """config.masking.kind ('random' for configs saved before it existed)."""
    masking = config.get("masking") if hasattr(config, "get") else None
    return masking.get("kind", "random") if masking is not None else "random"


def sample(kind: str, rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float,
           teacher_mask_ratio: float | None = None) -> Masks:
    """The masks of one batch: the student keeps num_visible(mask_ratio) patches of the
    order ORDERS[kind] draws; with teacher_mask_ratio the teacher keeps a longer prefix of
    the same order, else exactly the student's patches."""
    if kind not in ORDERS:
        raise ValueError(f"masking kind {kind!r}: expected one of {sorted(ORDERS)}")
    if teacher_mask_ratio is None:
        keep = num_visible(num_patches, mask_ratio)
        if keep < 1:
            raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}")
        mask = _mask_from_order(ORDERS[kind](rng, batch_size, num_patches), keep)
        return Masks(mask, mask.ids_keep)
    keep_s, keep_t = _nested_counts(num_patches, mask_ratio, teacher_mask_ratio)
    return _asymmetric_from_order(ORDERS[kind](rng, batch_size, num_patches), keep_s, keep_t)


def _shuffle(rng: jax.Array, batch_size: int, num_patches: int) -> jax.Array:
    """[B, L] a uniformly random permutation of the patches per sample."""
    noise = jax.random.uniform(rng, (batch_size, num_patches))
    return jnp.argsort(noise, axis=1).astype(jnp.int32)


def _mask_from_order(ids_shuffle: jax.Array, keep: int) -> Mask:
    """The Mask that keeps the first `keep` patches of a per-sample order [B, L]."""
    batch_size, num_patches = ids_shuffle.shape
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    hidden_in_shuffled_order = (jnp.arange(num_patches) >= keep).astype(jnp.float32)
    mask = jnp.take_along_axis(
        jnp.broadcast_to(hidden_in_shuffled_order, (batch_size, num_patches)), ids_restore, axis=1)
    return Mask(ids_shuffle[:, :keep], ids_restore, mask)


def _asymmetric_from_order(ids_shuffle: jax.Array, keep_s: int, keep_t: int) -> AsymmetricMask:
    return AsymmetricMask(_mask_from_order(ids_shuffle, keep_s), ids_shuffle[:, :keep_t])


def _nested_counts(num_patches: int, mask_ratio: float, teacher_mask_ratio: float) -> tuple[int, int]:
    keep_s = num_visible(num_patches, mask_ratio)
    keep_t = num_visible(num_patches, teacher_mask_ratio)
    if not 1 <= keep_s < keep_t:
        raise ValueError(f"mask ratios student={mask_ratio}, teacher={teacher_mask_ratio} give "
                         f"{keep_s} and {keep_t} visible of {num_patches} patches: need 1 <= student < teacher")
    return keep_s, keep_t


def _tube_order(spatial: jax.Array, frames: int, cuts: tuple[int, ...]) -> jax.Array:
    """A per-sample order of all frames*S tokens from a spatial order [B, S]: the spatial
    order is cut at `cuts` into segments, and each segment is taken on every frame
    (frame-major) before the next, so a prefix ending at a cut covers whole tubes."""
    batch_size, per_frame = spatial.shape
    offsets = (jnp.arange(frames, dtype=spatial.dtype) * per_frame)[None, :, None]
    bounds = (0, *cuts, per_frame)
    parts = [(offsets + spatial[:, None, a:b]).reshape(batch_size, -1) for a, b in zip(bounds, bounds[1:])]
    return jnp.concatenate(parts, axis=1)
