"""Fine-tuning augmentations on device, per batch, from a step's rng: random horizontal
flip, mixup / cutmix with label smoothing (timm's Mixup, mode 'batch') and random erasing
(timm's RandomErasing, mode 'pixel', one box per image). Images are float NHWC; random
erasing expects them normalised (its noise is standard normal). RandAugment is in
randaugment.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float):
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def random_flip(rng, images):
    """Horizontal flip of [B, (T,) H, W, C] per sample (all frames of a clip alike)."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],) + (1,) * (images.ndim - 1))
    return jnp.where(flip, images[..., ::-1, :], images)


def _box_mask(rng, height: int, width: int, area_fraction):
    """[H, W] boolean mask of a box of about area_fraction * H * W, centre uniform, clipped
    to the image (timm's rand_bbox)."""
    cut_h = (height * jnp.sqrt(area_fraction)).astype(jnp.int32)
    cut_w = (width * jnp.sqrt(area_fraction)).astype(jnp.int32)
    cy = jax.random.randint(rng, (), 0, height)
    cx = jax.random.randint(jax.random.fold_in(rng, 1), (), 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    return ((rows >= cy - cut_h // 2) & (rows < cy + cut_h // 2 + cut_h % 2) &
            (cols >= cx - cut_w // 2) & (cols < cx + cut_w // 2 + cut_w % 2))


def mixup_cutmix(rng, images, labels, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
                 smoothing: float, switch_prob: float = 0.5):
    """-> (mixed images, soft targets [B, num_classes] whose rows sum to 1).

    One lambda per batch; each image mixes with the batch's reversal. With both alphas > 0,
    cutmix is chosen with probability switch_prob; cutmix's lambda is corrected to the
    pasted box's actual area, so the targets match the pixels."""
    targets = smooth_one_hot(labels, num_classes, smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 4)
    use_cutmix = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | jax.random.bernoulli(k_switch, switch_prob))
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
    h, w = images.shape[-3:-1]  # clips [B, T, H, W, C]: one box through all frames
    box = _box_mask(k_box, h, w, 1.0 - lam_cut)
    flipped = images[::-1]
    mixed_cut = jnp.where(box[:, :, None], flipped, images)
    mixed_up = lam_mix * images + (1.0 - lam_mix) * flipped
    lam = jnp.where(use_cutmix, 1.0 - box.mean(), lam_mix)
    images = jnp.where(use_cutmix, mixed_cut, mixed_up)
    return images, lam * targets + (1.0 - lam) * targets[::-1]


def random_erasing(rng, images, prob: float, min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3):
    """With probability prob per image, replace a random box (area fraction in [min_area,
    max_area], log-uniform aspect in [min_aspect, 1/min_aspect]) by standard-normal noise.
    One attempt per image, the box clipped to the image (timm retries up to 10 times). A
    clip [T, H, W, C] has one box through all its frames (VideoMAE's cube erasing)."""
    if prob <= 0:
        return images
    b, h, w = images.shape[0], *images.shape[-3:-1]

    def erase(key, img):
        k_p, k_area, k_ar, k_y, k_x, k_noise = jax.random.split(key, 6)
        area = jax.random.uniform(k_area, (), minval=min_area, maxval=max_area) * h * w
        aspect = jnp.exp(jax.random.uniform(k_ar, (), minval=jnp.log(min_aspect), maxval=-jnp.log(min_aspect)))
        eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
        ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
        top = jax.random.randint(k_y, (), 0, h - eh + 1)
        left = jax.random.randint(k_x, (), 0, w - ew + 1)
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
        box = box & jax.random.bernoulli(k_p, prob)
        return jnp.where(box[:, :, None], jax.random.normal(k_noise, img.shape, img.dtype), img)

    return jax.vmap(erase)(jax.random.split(rng, b), images)
