"""Small heads on top of encoder features: the projection to the teacher's width (DMAE,
AMD) and AMD's feature generator."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdistill.models.vit import Block, gather_tokens, posemb_sincos_1d, posemb_sincos_2d, xavier

PROJECTION_KINDS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """Maps student features to the teacher's width: one Dense ('linear'), or
    Dense -> GELU -> Dense ('mlp', hidden width = out_dim). AMD's is linear without bias."""

    out_dim: int
    kind: str = "linear"
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind not in PROJECTION_KINDS:
            raise ValueError(f"projection head kind {self.kind!r}: expected one of {PROJECTION_KINDS}")
        dense = lambda name: nn.Dense(self.out_dim, use_bias=self.use_bias, kernel_init=xavier,  # noqa: E731
                                      dtype=self.dtype, name=name)
        if self.kind == "mlp":
            x = nn.gelu(dense("fc1")(x), approximate=False)
        return dense("out")(x)


class Generator(nn.Module):
    """AMD's generation head: predicts the teacher's features at patches the student did not
    see, from the student's projected features.

    Runs at the teacher's width: the projected student tokens plus its own fixed sin-cos
    position embeddings, then one mask token per target patch (plus its position),
    through `depth` blocks. No final norm, since the targets are raw block outputs of the
    teacher, as in the official code.
    """

    width: int
    depth: int
    num_heads: int
    grid: int  # patches per side of the image
    dtype: Any = jnp.float32
    video_tokens: int = 0  # clips: the student's T*H*W tokens (no cls, VideoMAE's 1-D table)

    @nn.compact
    def __call__(self, visible: jax.Array, ids_visible: jax.Array, ids_target: jax.Array) -> jax.Array:
        """visible [B, 1+K, width]: projected student features, cls first, then the patches
        ids_visible [B, K] ([B, K, width] for clips); ids_target [B, M] -> predicted features
        [B, M, width]."""
        batch, num_targets = ids_target.shape
        if self.video_tokens:
            table = posemb_sincos_1d(self.width, self.video_tokens)
        else:
            table = posemb_sincos_2d(self.width, self.grid)
        pos = jnp.broadcast_to(jnp.asarray(table, visible.dtype), (batch,) + table.shape)
        # the release's trunc_normal_(std=.02) cut at +-1 std (a=-std, b=std)
        mask_token = self.param("mask_token", nn.initializers.truncated_normal(0.02, lower=-1.0, upper=1.0),
                                (1, 1, self.width))
        queries = mask_token.astype(visible.dtype) + gather_tokens(pos, ids_target)
        cls = 0 if self.video_tokens else 1
        # the cls token keeps no position embedding, as in the MAE decoder
        x = jnp.concatenate([visible[:, :cls], visible[:, cls:] + gather_tokens(pos, ids_visible), queries], axis=1)
        for i in range(self.depth):
            x = Block(self.num_heads, dtype=self.dtype, k_bias=not self.video_tokens, name=f"block_{i}")(x)
        return x[:, -num_targets:]
