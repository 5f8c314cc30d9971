"""RandAugment on device, as timm's 'rand-m9-mstd0.5-inc1' that MAE fine-tunes with
(Cubuk et al. 2020; timm.data.auto_augment).

Per image, `num_layers` operations are drawn (with replacement) from the 15 below; each is
applied with probability 0.5 at a magnitude drawn from N(magnitude, magnitude_std), clipped
to [0, 10]. Geometric and colour-enhance operations take a random sign. Images are float
[H, W, C] in [0, 255], before normalisation; geometric operations sample bilinearly and
fill with `fill` (timm: the data mean). Under vmap a per-image choice computes every
pixel operation and selects one; the five geometric ones share a single warp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

# PIL's RGB -> L. A numpy constant: a jnp one would start JAX's backend on import, before the
# fine-tuning command could start the distributed runtime (which must come first).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _gray(img):
    return img if img.shape[-1] == 1 else (img @ LUMA)[..., None]


def _blend(degenerate, img, factor):
    """PIL's ImageEnhance: degenerate + factor * (img - degenerate), clipped."""
    return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 255.0)


def _affine(img, matrix, fill):
    """Output pixel (x, y) samples the input at matrix @ (x, y, 1), pixel centres at +0.5,
    as PIL's Image.transform(AFFINE) does, bilinearly; `fill` where that lies outside."""
    h, w, _ = img.shape
    ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
    sx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] - 0.5
    sy = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] - 0.5
    # mode 'constant' reads zeros outside; the weight that fell there goes to `fill`
    sample = lambda c: map_coordinates(c, [sy, sx], order=1, mode="constant", cval=0.0)  # noqa: E731
    inside = sample(jnp.ones((h, w)))[..., None]
    return jax.vmap(sample, in_axes=2, out_axes=2)(img) + (1.0 - inside) * fill


def _matrix(a, b, c, d, e, f):
    return jnp.array([[a, b, c], [d, e, f]], jnp.float32)


def _rotation(level, h, w):
    theta = jnp.deg2rad(-30.0 * level)  # positive: counter-clockwise, as PIL
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cx, cy = w / 2, h / 2  # about the centre, as PIL's Image.rotate
    return _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _equalize(img):
    """PIL's ImageOps.equalize, per channel."""

    def channel(x):
        x = jnp.clip(jnp.round(x), 0, 255).astype(jnp.int32)
        hist = jnp.zeros(256, jnp.int32).at[x.ravel()].add(1)
        last = hist[255 - jnp.argmax(hist[::-1] > 0)]  # count of the highest value present
        step = (x.size - last) // 255
        lut = jnp.minimum((step // 2 + jnp.cumsum(hist) - hist) // jnp.maximum(step, 1), 255)
        return jnp.where(step > 0, lut[x], x).astype(jnp.float32)

    return jax.vmap(channel, in_axes=2, out_axes=2)(img)


def _auto_contrast(img):
    lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
    scale = jnp.where(hi > lo, 255.0 / jnp.maximum(hi - lo, 1e-6), 1.0)
    return jnp.where(hi > lo, (img - lo) * scale, img)


def _sharpness(img, factor):
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13); borders stay."""
    h, w, _ = img.shape
    p = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
    smooth = sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4 * img
    smooth = jnp.round(smooth / 13.0)
    interior = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
    return _blend(jnp.where(interior, smooth, img), img, factor)


def _posterize(img, level):
    bits = 4 - jnp.floor(jnp.abs(level) * 4)  # 'increasing': fewer bits at higher magnitude
    q = 2.0 ** (8 - bits)
    return jnp.floor(jnp.round(img) / q) * q


# Pixel operations: (name, fn(img, signed level in [-1, 1])).
PIXEL_OPS = (
    ("auto_contrast", lambda x, m: _auto_contrast(x)),
    ("equalize", lambda x, m: _equalize(x)),
    ("invert", lambda x, m: 255.0 - x),
    ("posterize", _posterize),
    ("solarize", lambda x, m: jnp.where(x >= 256 - jnp.floor(jnp.abs(m) * 256), 255.0 - x, x)),
    ("solarize_add", lambda x, m: jnp.where(x < 128, jnp.minimum(x + jnp.floor(jnp.abs(m) * 110), 255.0), x)),
    ("color", lambda x, m: _blend(jnp.broadcast_to(_gray(x), x.shape), x, 1 + 0.9 * m)),
    ("contrast", lambda x, m: _blend(jnp.round(jnp.mean(_gray(x))), x, 1 + 0.9 * m)),
    ("brightness", lambda x, m: _blend(0.0, x, 1 + 0.9 * m)),
    ("sharpness", lambda x, m: _sharpness(x, 1 + 0.9 * m)),
)
# Geometric operations: (name, fn(signed level, height, width) -> affine matrix). They
# differ only in the matrix, so one warp serves them all.
GEOMETRIC_OPS = (
    ("rotate", _rotation),
    ("shear_x", lambda m, h, w: _matrix(1, 0.3 * m, 0, 0, 1, 0)),
    ("shear_y", lambda m, h, w: _matrix(1, 0, 0, 0.3 * m, 1, 0)),
    ("translate_x", lambda m, h, w: _matrix(1, 0, 0.45 * m * w, 0, 1, 0)),
    ("translate_y", lambda m, h, w: _matrix(1, 0, 0, 0, 1, 0.45 * m * h)),
)
OPS = tuple(name for name, _ in PIXEL_OPS + GEOMETRIC_OPS)  # timm's _RAND_INCREASING_TRANSFORMS


def _apply(index, img, level, fill):
    """Operation OPS[index] (a traced index)."""
    h, w, _ = img.shape
    pixel = jnp.stack([fn(img, level) for _, fn in PIXEL_OPS])  # under vmap a switch computes all anyway
    matrices = jnp.stack([fn(level, h, w) for _, fn in GEOMETRIC_OPS])
    geometric = index >= len(PIXEL_OPS)
    warped = _affine(img, matrices[jnp.maximum(index - len(PIXEL_OPS), 0)], fill)
    return jnp.where(geometric, warped, pixel[jnp.minimum(index, len(PIXEL_OPS) - 1)])


def apply_op(name: str, img, level, fill=None):
    """One operation by name on one image, at a signed level in [-1, 1] (magnitude / 10)."""
    level = jnp.asarray(level, jnp.float32)
    if name in dict(PIXEL_OPS):
        return dict(PIXEL_OPS)[name](img, level)
    fill = jnp.zeros(img.shape[-1]) if fill is None else jnp.asarray(fill, jnp.float32)
    return _affine(img, dict(GEOMETRIC_OPS)[name](level, *img.shape[:2]), fill)


def rand_augment(rng, images, num_layers: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 fill=(124.0, 116.0, 104.0), prob: float = 0.5):
    """RandAugment on a batch of float NHWC images in [0, 255]."""
    fill = jnp.broadcast_to(jnp.asarray(fill, jnp.float32), images.shape[-1:])

    def one(key, img):
        for k in jax.random.split(key, num_layers):
            k_op, k_apply, k_mag, k_sign = jax.random.split(k, 4)
            level = jnp.clip(magnitude + magnitude_std * jax.random.normal(k_mag), 0.0, 10.0) / 10.0
            level = jnp.where(jax.random.bernoulli(k_sign), -level, level)
            out = _apply(jax.random.randint(k_op, (), 0, len(OPS)), img, level, fill)
            img = jnp.where(jax.random.bernoulli(k_apply, prob), jnp.clip(out, 0.0, 255.0), img)
        return img

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images.astype(jnp.float32))
