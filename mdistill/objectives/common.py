"""Pieces shared by the objectives: input normalisation, reconstruction and feature losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

FEATURE_LOSSES = ("l1", "l2", "smooth_l1")


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 NHWC -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, norm_pix: bool) -> jax.Array:
    """MSE per patch, averaged over the hidden patches only (MAE).

    With norm_pix, each target patch is standardised by its own mean and variance.
    """
    target = target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def feature_loss(student: jax.Array, teacher: jax.Array, kind: str, normalize: bool) -> jax.Array:
    """Mean elementwise distance between feature maps of the same shape.

    With normalize, both are first L2-normalised along the feature axis.
    """
    student = student.astype(jnp.float32)
    teacher = teacher.astype(jnp.float32)
    if normalize:
        student = student / (jnp.linalg.norm(student, axis=-1, keepdims=True) + 1e-6)
        teacher = teacher / (jnp.linalg.norm(teacher, axis=-1, keepdims=True) + 1e-6)
    diff = student - teacher
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(diff ** 2)
    if kind == "smooth_l1":
        abs_diff = jnp.abs(diff)
        return jnp.mean(jnp.where(abs_diff < 1.0, 0.5 * diff ** 2, abs_diff - 0.5))
    raise ValueError(f"feature loss {kind!r}: expected one of {FEATURE_LOSSES}")
