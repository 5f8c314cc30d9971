"""Optimizer and learning-rate schedule as in MAE: AdamW, linear warm-up then cosine,
lr = blr * global_batch / 256, no weight decay on biases, norms and special tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


LAYOUTS = ("tree", "flat")
MU_DTYPES = ("float32", "bfloat16")


def build_optimizer(optim_config, lr_schedule, frozen=None) -> optax.GradientTransformation:
    """optax's adamw, as chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate),
    after global-norm clipping where set. config.optim.layout='flat' runs scale_by_adam on
    all parameters raveled into one vector (optax.flatten): one update kernel instead of
    one per parameter (on accelerators, where each launch costs), the same arithmetic per
    element (tests/test_optim.py: the same parameters). Its state holds the two moments as
    one vector each, so a run restores only with the update it was started with.
    config.optim.mu_dtype='bfloat16' keeps the first moment in bfloat16 (big_vision's
    option; half its memory and traffic), which changes the update by its rounding.
    `frozen`: None, or a function of the params tree giving True where a parameter must stay
    as it is (Objective.frozen): its update is zero, weight decay included."""
    layout = optim_config.layout
    if layout not in LAYOUTS:
        raise ValueError(f"config.optim.layout={layout!r}: expected one of {LAYOUTS}")
    if optim_config.mu_dtype not in MU_DTYPES:
        raise ValueError(f"config.optim.mu_dtype={optim_config.mu_dtype!r}: expected one of {MU_DTYPES}")
    mu_dtype = None if optim_config.mu_dtype == "float32" else jnp.dtype(optim_config.mu_dtype)
    adam = optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=1e-8, mu_dtype=mu_dtype)
    parts = []
    if optim_config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
    if layout == "tree":  # optax.adamw itself: the state layout of every earlier checkpoint
        parts.append(optax.adamw(lr_schedule, b1=optim_config.b1, b2=optim_config.b2,
                                 weight_decay=optim_config.weight_decay, mask=decay_mask, mu_dtype=mu_dtype))
    else:
        parts += [optax.flatten(adam), optax.add_decayed_weights(optim_config.weight_decay, decay_mask),
                  optax.scale_by_learning_rate(lr_schedule)]
    if frozen is not None:
        parts.append(optax.masked(optax.set_to_zero(), frozen))
    return optax.chain(*parts)
