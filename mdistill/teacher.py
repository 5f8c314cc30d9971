"""The frozen teacher: an MAE-pretrained ViT encoder run only up to its deepest aligned
block, on the tokens it may see, under stop_gradient (or, for TinyMIM, up to the token
relations of one block's attention). Its parameters are an argument of
the train step, never part of the trained state, and carry no optimizer state."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mdistill.models.vit import Encoder, ViTSpec


class Teacher:
    def __init__(self, spec: ViTSpec, dtype: Any = jnp.float32):
        self.spec = spec
        self.dtype = dtype
        self.encoder = Encoder(spec, dtype=dtype)

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        """Randomly initialised parameters (smoke runs and tests only)."""
        return self.prepare(self.encoder.init(rng, images)["params"])

    def prepare(self, params: dict) -> dict:
        """Store the frozen weights in the compute dtype: a bf16 teacher holds half the memory."""
        return jax.tree.map(lambda p: p.astype(self.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                            params)

    def features(self, params: dict, images: jax.Array, ids_keep: jax.Array | None,
                 blocks: Sequence[int]) -> dict[int, jax.Array]:
        """{block: features [B, 1+K, width]} for the given 0-based blocks; blocks past the
        deepest one are never run."""
        params = jax.lax.stop_gradient(params)
        images = images.astype(self.dtype)
        _, feats = self.encoder.apply({"params": params}, images, ids_keep,
                                      return_blocks=tuple(blocks), stop_after=max(blocks))
        return {b: jax.lax.stop_gradient(f) for b, f in feats.items()}

    def relations(self, params: dict, images: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
        """TinyMIM's targets: the (q k^T, v v^T) logits [B, heads, 1+L, 1+L] of block
        `block`'s attention (0-based; its norm1 and qkv only) on every patch, float32."""
        params = jax.lax.stop_gradient(params)
        relations, _ = self.encoder.apply({"params": params}, images.astype(self.dtype), None, relations_at=block)
        return tuple(jax.lax.stop_gradient(r) for r in relations)

    def blocks_run(self, blocks: Sequence[int]) -> int:
        return max(blocks) + 1
