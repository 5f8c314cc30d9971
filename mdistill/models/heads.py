"""Small heads on top of encoder features."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mdistill.models.vit import xavier

PROJECTION_KINDS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """Maps student features to the teacher's width: one Dense ('linear'), or
    Dense -> GELU -> Dense ('mlp', hidden width = out_dim)."""

    out_dim: int
    kind: str = "linear"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind not in PROJECTION_KINDS:
            raise ValueError(f"projection head kind {self.kind!r}: expected one of {PROJECTION_KINDS}")
        if self.kind == "mlp":
            x = nn.Dense(self.out_dim, kernel_init=xavier, dtype=self.dtype, name="fc1")(x)
            x = nn.gelu(x, approximate=False)
        return nn.Dense(self.out_dim, kernel_init=xavier, dtype=self.dtype, name="out")(x)
