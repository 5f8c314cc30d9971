"""Pieces shared by the objectives: input normalisation, reconstruction and feature losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

FEATURE_LOSSES = ("l1", "l2", "smooth_l1", "cosine")
TARGET_NORMS = ("none", "layernorm")


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, norm_pix: bool,
                        channels: int | None = None) -> jax.Array:
    """MSE per patch, averaged over the hidden patches only (MAE).

    With norm_pix, each target patch is standardised by its own mean and variance (MAE's
    (x - mean) / sqrt(var + 1e-6)); with `channels` (clips), each channel of a tubelet by its
    own, as VideoMAE does: (x - mean) / (unbiased std + 1e-6), pixels laid out (..., channel).
    """
    target = target.astype(jnp.float32)
    if norm_pix and channels:
        per_channel = target.reshape(target.shape[:-1] + (-1, channels))
        mean = per_channel.mean(axis=-2, keepdims=True)
        std = jnp.sqrt(per_channel.var(axis=-2, keepdims=True, ddof=1))
        target = ((per_channel - mean) / (std + 1e-6)).reshape(target.shape)
    elif norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def normalize_targets(teacher: jax.Array, kind: str) -> jax.Array:
    """The teacher's features as a target: as they are ('none'), or standardised per token
    by a LayerNorm without affine parameters ('layernorm', MaskDistill's normalised targets)."""
    if kind == "none":
        return teacher
    if kind == "layernorm":
        t = teacher.astype(jnp.float32)
        mean, var = t.mean(axis=-1, keepdims=True), t.var(axis=-1, keepdims=True)
        return (t - mean) / jnp.sqrt(var + 1e-6)
    raise ValueError(f"target norm {kind!r}: expected one of {TARGET_NORMS}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, PyTorch's F.normalize. The norm is taken as
    sqrt(max(sum x^2, eps^2)), the same value, so that an all-zero vector has a gradient (0)."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
    return x / norm


def feature_loss(student: jax.Array, teacher: jax.Array, kind: str, normalize: bool) -> jax.Array:
    """Mean distance between feature maps of the same shape: elementwise (l1, l2, smooth_l1)
    or per token (cosine: 1 - cosine similarity, which needs no normalisation).

    With normalize, both are first L2-normalised along the feature axis as PyTorch's
    F.normalize does (the DMAE release): x / max(||x||, 1e-12).
    """
    student = student.astype(jnp.float32)
    teacher = teacher.astype(jnp.float32)
    if kind == "cosine":
        dot = jnp.sum(student * teacher, axis=-1)
        norms = jnp.linalg.norm(student, axis=-1) * jnp.linalg.norm(teacher, axis=-1)
        return jnp.mean(1.0 - dot / jnp.maximum(norms, 1e-6))
    if normalize:
        student, teacher = l2_normalize(student), l2_normalize(teacher)
    diff = student - teacher
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(diff ** 2)
    if kind == "smooth_l1":
        abs_diff = jnp.abs(diff)
        return jnp.mean(jnp.where(abs_diff < 1.0, 0.5 * diff ** 2, abs_diff - 0.5))
    raise ValueError(f"feature loss {kind!r}: expected one of {FEATURE_LOSSES}")
