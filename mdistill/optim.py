"""Optimizer and learning-rate schedule as in MAE: AdamW, linear warm-up then cosine,
lr = blr * global_batch / 256, no weight decay on biases, norms and special tokens."""

from __future__ import annotations

import jax
import optax


def peak_learning_rate(optim_config, global_batch_size: int) -> float:
    if optim_config.lr > 0:
        return float(optim_config.lr)
    return optim_config.blr * global_batch_size / 256


def schedule(optim_config, global_batch_size: int, total_steps: int, warmup_steps: int):
    peak = peak_learning_rate(optim_config, global_batch_size)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=optim_config.min_lr)


def decay_mask(params):
    """Weight decay on matrices and conv kernels only: every leaf named 'kernel'."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def build_optimizer(optim_config, lr_schedule, frozen=None) -> optax.GradientTransformation:
    """`frozen`: None, or a function of the params tree giving True where a parameter must stay
    as it is (Objective.frozen): its update is zero, weight decay included."""
    parts = []
    if optim_config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
    parts.append(optax.adamw(lr_schedule, b1=optim_config.b1, b2=optim_config.b2,
                             weight_decay=optim_config.weight_decay, mask=decay_mask))
    if frozen is not None:
        parts.append(optax.masked(optax.set_to_zero(), frozen))
    return optax.chain(*parts)
