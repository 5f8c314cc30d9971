"""Which patches each model sees. Pure functions of a PRNG key with static shapes: the
number of visible patches depends only on the config, so masking never recompiles.

Every objective draws its masks through sample(), which reads config.masking.kind: a kind
is one function in ORDERS, rng -> a per-sample order of the patches, of which the student
sees the first K_s and the teacher (AMD) the first K_t, so every kind gives the same exact
visible count for every image, and AMD's teacher always sees a superset of the student's
patches. An order lists the patches from the most to the least visible: a structured kind
puts its hidden structure (blocks, noise peaks) at the end.

  random         MAE (He et al., 2022): a uniform shuffle.
  block          BEiT (Bao et al., 2022) blockwise masking: rectangles of random area
                 (block_min_patches..block_max_patches) and aspect (block_aspect..1/block_aspect,
                 log-uniform) are dropped on the grid one after another; the patches the
                 earliest ones cover are hidden first. block_square=s > 0 instead hides whole
                 s x s squares of patches in random order (SimMIM, Xie et al., 2022: 32 px
                 mask units on 16 px patches is s=2).
  colored_noise  ColorMAE (Hinojosa et al., 2024): white noise on the patch grid filtered in
                 the frequency domain -- red (low-pass), blue (high-pass), green (band-pass),
                 purple (band-stop) -- and thresholded at the exact ratio: the patches with
                 the highest filtered values are hidden. noise_sigma (in patches) sets the
                 Gaussian filters' scale: low-pass G(sigma), band-pass G(sigma) - G(2 sigma).

Clips (a video layout, `frames` > 1 token steps in time) are masked in tubes, as VideoMAE's
and AMD's `t_consist` masks: the kind draws an order of the patches of one frame, and every
frame repeats it, so each tube of patches is visible on all frames or on none. The counts
follow those releases: int(mask_ratio * S) patches of a frame's S are hidden, the rest seen
(images follow MAE: int(L * (1 - mask_ratio)) seen), e.g. 20 of 196 seen at 0.9, not 19.

A third kind of the field, DMJD's disjoint views (several masks of one image whose visible
sets do not overlap), is not here: it only makes sense for a loss that uses more than one
view per image, and no objective in mdistill does."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Mask(NamedTuple):
    ids_keep: jax.Array     # [B, K] visible patch indices, in the order the encoder sees them
    ids_restore: jax.Array  # [B, L] position of each patch in the shuffled order
    mask: jax.Array         # [B, L] 1.0 where the patch is hidden, 0.0 where visible


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample, rounded down as the official MAE does."""
    return int(num_patches * (1.0 - mask_ratio))


def num_visible_per_frame(per_frame: int, mask_ratio: float) -> int:
    """Visible patches of a frame in a tube mask: VideoMAE's and AMD's masking generators
    round the number of *hidden* patches down."""
    return per_frame - int(mask_ratio * per_frame)


def visible_tokens(num_tokens: int, mask_ratio: float, frames: int = 1) -> int:
    """Visible tokens of a sample of `num_tokens`: MAE's count for images (frames 1), the
    tube count on every one of `frames` token steps for clips."""
    if frames > 1:
        return frames * num_visible_per_frame(num_tokens // frames, mask_ratio)
    return num_visible(num_tokens, mask_ratio)


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
    keep = num_visible_per_frame(patches_per_frame, mask_ratio)
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
    keep_s, keep_t = _nested_counts(patches_per_frame, mask_ratio, teacher_mask_ratio, num_visible_per_frame)
    spatial = _shuffle(rng, batch_size, patches_per_frame)
    order = _tube_order(spatial, frames, (keep_s, keep_t))
    return _asymmetric_from_order(order, frames * keep_s, frames * keep_t)


Masks = AsymmetricMask  # what sample() returns, for every objective


def random_order(rng: jax.Array, batch_size: int, num_patches: int, **_) -> jax.Array:
    """MAE's masking: a uniformly random permutation of the patches per sample."""
    return _shuffle(rng, batch_size, num_patches)


def block_order(rng: jax.Array, batch_size: int, num_patches: int, *, block_min_patches: int,
                block_max_patches: int, block_aspect: float, block_square: int, **_) -> jax.Array:
    """BEiT's blockwise masking as an order (SimMIM's squares with block_square > 0).

    A fixed number of rectangles is drawn per sample (enough to cover the grid many times
    over); each patch is keyed by the first rectangle covering it, and patches covered
    earlier come later in the order, so hiding a suffix hides whole early rectangles plus
    the centre of the next one. Patches no rectangle covers come first, in random order."""
    g = grid_side(num_patches)
    if block_square:
        return _square_order(rng, batch_size, g, block_square)
    max_area = max(1, min(block_max_patches, num_patches))
    min_area = max(1, min(block_min_patches, max_area))
    n = 4 * -(-num_patches // min_area)  # rectangles per sample (static)
    k_area, k_aspect, k_top, k_left, k_tie = jax.random.split(rng, 5)
    area = jax.random.uniform(k_area, (batch_size, n), minval=min_area, maxval=max_area)
    log_ratio = jax.random.uniform(k_aspect, (batch_size, n), minval=jnp.log(block_aspect),
                                   maxval=-jnp.log(block_aspect))
    h = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_ratio))), 1, g)
    w = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_ratio))), 1, g)
    top = jnp.floor(jax.random.uniform(k_top, (batch_size, n)) * (g - h + 1))
    left = jnp.floor(jax.random.uniform(k_left, (batch_size, n)) * (g - w + 1))
    rows = jnp.arange(g, dtype=jnp.float32)[:, None] * jnp.ones((1, g))  # [g, g] row of each patch
    cols = rows.T
    r, c = rows.reshape(-1), cols.reshape(-1)  # [L]
    inside = ((r >= top[..., None]) & (r < (top + h)[..., None])
              & (c >= left[..., None]) & (c < (left + w)[..., None]))  # [B, n, L]
    covered = inside.any(axis=1)
    first = jnp.where(covered, jnp.argmax(inside, axis=1), n)  # [B, L]
    # within a rectangle, its centre is hidden first: a partly hidden one is a compact blob
    centre_r = jnp.take_along_axis(top + (h - 1) / 2, jnp.minimum(first, n - 1), axis=1)
    centre_c = jnp.take_along_axis(left + (w - 1) / 2, jnp.minimum(first, n - 1), axis=1)
    dist = jnp.sqrt((r - centre_r) ** 2 + (c - centre_c) ** 2) / (jnp.sqrt(2.0) * g)  # in [0, 1)
    tie = jax.random.uniform(k_tie, (batch_size, num_patches))
    key = -first.astype(jnp.float32) + jnp.where(covered, 0.9 * (1.0 - dist) + 0.05 * tie, 0.9 * tie)
    return jnp.argsort(key, axis=1).astype(jnp.int32)


def _square_order(rng: jax.Array, batch_size: int, g: int, side: int) -> jax.Array:
    """SimMIM: the grid cut into side x side squares (the last row and column of squares may
    be cut short), the squares in random order, the patches of one square in random order."""
    cells = -(-g // side)
    k_rank, k_tie = jax.random.split(rng)
    rank = jnp.argsort(jax.random.uniform(k_rank, (batch_size, cells * cells)), axis=1).astype(jnp.float32)
    cell_of = ((jnp.arange(g) // side)[:, None] * cells + (jnp.arange(g) // side)[None, :]).reshape(-1)
    key = rank[:, cell_of] + 0.9 * jax.random.uniform(k_tie, (batch_size, g * g))
    return jnp.argsort(key, axis=1).astype(jnp.int32)


NOISE_COLORS = ("red", "blue", "green", "purple")


def noise_response(g: int, color: str, sigma: float) -> jax.Array:
    """[g, g] real frequency response of a colour's filter on a g x g grid: Gaussian low-pass
    G(s) = exp(-2 pi^2 s^2 |f|^2) (f in cycles per patch); red G(sigma), blue 1 - G(sigma),
    green G(sigma) - G(2 sigma), purple 1 - green."""
    f = jnp.fft.fftfreq(g)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    low = lambda s: jnp.exp(-2.0 * jnp.pi ** 2 * s ** 2 * f2)  # noqa: E731
    band = low(sigma) - low(2.0 * sigma)
    responses = {"red": low(sigma), "blue": 1.0 - low(sigma), "green": band, "purple": 1.0 - band}
    if color not in responses:
        raise ValueError(f"noise colour {color!r}: expected one of {NOISE_COLORS}")
    return responses[color]


def noise_varies(g: int, color: str, sigma: float) -> bool:
    """Whether noise filtered by noise_response(g, color, sigma) still varies over the g x g
    grid: some frequency other than the constant (DC) one passes with a gain of at least one
    float32 step (eps) of the DC gain -- else every filtered value rounds to the constant
    part and every sample and step gets the same mask -- and not below float32's smallest
    normal number (where products flush to zero)."""
    h = np.abs(np.asarray(noise_response(g, color, sigma), np.float32)).reshape(-1)
    if h.size < 2:
        return False
    f32 = np.finfo(np.float32)
    peak = float(h[1:].max())  # h[0]: the DC gain (fftfreq puts frequency 0 first)
    return np.isfinite(peak) and peak >= max(float(f32.eps) * float(h[0]), float(f32.tiny))


def noise_sigma_range(g: int, color: str) -> tuple[float, float] | None:
    """(low, high): the noise_sigma values for which noise_varies holds on a g x g grid, found
    by bisection (in log sigma) on the filter itself; low 0 and high inf where it holds at
    the extremes. None where no sigma does."""
    probe = lambda s: noise_varies(g, color, s)  # noqa: E731
    smallest, largest = 1e-30, 1e30
    start = next((10.0 ** k for k in range(-8, 9) if probe(10.0 ** k)), None)
    if start is None:
        return None

    def edge(fail: float, ok: float) -> float:
        for _ in range(80):  # geometric bisection: the boundary to ~1e-12 relative
            mid = math.sqrt(fail * ok)
            if probe(mid):
                ok = mid
            else:
                fail = mid
        return ok
    low = 0.0 if probe(smallest) else edge(smallest, start)
    high = math.inf if probe(largest) else edge(largest, start)
    return low, high


def colored_noise_order(rng: jax.Array, batch_size: int, num_patches: int, *, noise_color: str,
                        noise_sigma: float, **_) -> jax.Array:
    """ColorMAE's masking as an order: white Gaussian noise on the patch grid, filtered by
    noise_response (circular convolution through the FFT), patches in increasing order of
    the filtered value, so the highest values are hidden first."""
    g = grid_side(num_patches)
    noise = jax.random.normal(rng, (batch_size, g, g))
    filtered = jnp.fft.ifft2(jnp.fft.fft2(noise) * noise_response(g, noise_color, noise_sigma)).real
    return jnp.argsort(filtered.reshape(batch_size, num_patches), axis=1).astype(jnp.int32)


def grid_side(num_patches: int) -> int:
    g = int(round(num_patches ** 0.5))
    if g * g != num_patches:
        raise ValueError(f"{num_patches} patches are not a square grid: structured masks need one")
    return g


# config.masking.kind -> (rng, batch_size, num_patches, **options) -> [B, L] int32 per-sample
# order of the patches; each model sees a prefix of it (so a teacher's superset holds by
# construction). The options are config.masking's other fields (their defaults and meanings:
# mdistill/config/schema.py).
ORDERS = {"random": random_order, "block": block_order, "colored_noise": colored_noise_order}


def kind_of(config) -> str:
    """config.masking.kind."""
    return config.masking.kind


def options_of(config) -> dict:
    """config.masking's options: its fields but the kind."""
    return {k: v for k, v in config.masking.items() if k != "kind"}


def sample(kind: str, rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float,
           teacher_mask_ratio: float | None = None, options: dict | None = None, frames: int = 1) -> Masks:
    """The masks of one batch: the student keeps num_visible(mask_ratio) patches of the
    order ORDERS[kind] draws (with `options`); with teacher_mask_ratio the teacher keeps a
    longer prefix of the same order, else exactly the student's patches. With frames > 1
    (clips of `frames` token steps, num_patches tokens in all) the order is of one frame's
    patches, and the masks are its tubes (module docstring)."""
    if kind not in ORDERS:
        raise ValueError(f"masking kind {kind!r}: expected one of {sorted(ORDERS)}")
    per_frame = num_patches // frames
    order = ORDERS[kind](rng, batch_size, per_frame, **(options or {}))
    count = num_visible_per_frame if frames > 1 else num_visible
    if teacher_mask_ratio is None:
        keep = count(per_frame, mask_ratio)
        if keep < 1:
            raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {per_frame}")
        if frames > 1:
            order, keep = _tube_order(order, frames, (keep,)), frames * keep
        mask = _mask_from_order(order, keep)
        return Masks(mask, mask.ids_keep)
    keep_s, keep_t = _nested_counts(per_frame, mask_ratio, teacher_mask_ratio, count)
    if frames > 1:
        order, keep_s, keep_t = _tube_order(order, frames, (keep_s, keep_t)), frames * keep_s, frames * keep_t
    return _asymmetric_from_order(order, keep_s, keep_t)


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


def _nested_counts(num_patches: int, mask_ratio: float, teacher_mask_ratio: float,
                   count=num_visible) -> tuple[int, int]:
    keep_s = count(num_patches, mask_ratio)
    keep_t = count(num_patches, teacher_mask_ratio)
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
