"""Vision Transformer encoder as in MAE: patch embedding, cls token, fixed 2-D sin-cos
position embeddings, pre-norm blocks.

The encoder can run on a subset of patches (only the visible tokens enter the blocks),
return the outputs of chosen blocks, and stop after a given block: blocks past it are
never called, so they cost nothing (DMAE's teacher runs only its first blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# name -> (width, depth, heads). Ti/S/B/L/H are the standard ViT sizes; mu and xs are
# small models for tests and the Fashion-MNIST runs.
SIZES = {
    "mu": (64, 4, 4),
    "xs": (128, 6, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """Architecture of a ViT, parsed from a variant name such as 'B/16'."""

    width: int
    depth: int
    num_heads: int
    patch_size: int

    @classmethod
    def parse(cls, variant: str) -> "ViTSpec":
        name, sep, patch = variant.partition("/")
        if name not in SIZES or not sep or not patch.isdigit():
            raise ValueError(
                f"model variant {variant!r}: expected '<size>/<patch>' with size one of "
                f"{sorted(SIZES)} and an integer patch size, e.g. 'B/16'"
            )
        width, depth, heads = SIZES[name]
        return cls(width, depth, heads, int(patch))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim] embedding: sin of the first dim/2 frequencies, then cos."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def posemb_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """[grid*grid, dim] fixed position embedding in row-major patch order.

    Matches the official MAE layout: the first half of the channels encodes the patch's
    column, the second half its row, so converted checkpoints line up exactly.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
    """x[b, ids[b, k]] for tokens x [B, L, D] and indices [B, K]."""
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)


dense = nn.Dense
xavier = nn.initializers.xavier_uniform()


class Attention(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        # One fused qkv projection, laid out like the PyTorch releases' qkv Linear.
        qkv = dense(3 * width, kernel_init=xavier, dtype=self.dtype, name="qkv")(x)
        q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b t h d", three=3, h=self.num_heads)
        out = jax.nn.dot_product_attention(q, k, v)
        out = einops.rearrange(out, "b t h d -> b t (h d)")
        return dense(width, kernel_init=xavier, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = dense(self.hidden, kernel_init=xavier, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return dense(width, kernel_init=xavier, dtype=self.dtype, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, MLP ratio 4, qkv bias)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)  # noqa: E731
        x = x + Attention(self.num_heads, self.dtype, name="attn")(norm("norm1")(x))
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + Mlp(hidden, self.dtype, name="mlp")(norm("norm2")(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, L, width] (a strided conv, as in ViT)."""

    patch_size: int
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", kernel_init=xavier,
                    dtype=self.dtype, name="proj")(images)
        return einops.rearrange(x, "b h w d -> b (h w) d")


class Encoder(nn.Module):
    """ViT encoder on NHWC images.

    __call__(images, ids_keep, return_blocks, stop_after) -> (tokens, {block: features})
      ids_keep: [B, K] indices of the patches that enter the blocks (None: all), in the
        order given; the cls token is prepended.
      return_blocks: 0-based blocks whose outputs to return ([B, 1+K, width], cls first).
      stop_after: last block to run (0-based). None runs all blocks and the final norm;
        otherwise the returned tokens are that block's raw output.
    """

    spec: ViTSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, ids_keep=None, return_blocks: Sequence[int] = (), stop_after=None):
        spec = self.spec
        x = PatchEmbed(spec.patch_size, spec.width, self.dtype, name="patch_embed")(images)
        grid = images.shape[1] // spec.patch_size
        x = x + jnp.asarray(posemb_sincos_2d(spec.width, grid), x.dtype)
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, spec.width))
        cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, spec.width))
        x = jnp.concatenate([cls, x], axis=1)

        last = spec.depth - 1 if stop_after is None else stop_after
        if not 0 <= last < spec.depth:
            raise ValueError(f"stop_after={stop_after} outside 0..{spec.depth - 1}")
        features = {}
        for i in range(last + 1):
            x = Block(spec.num_heads, dtype=self.dtype, name=f"block_{i}")(x)
            if i in return_blocks:
                features[i] = x
        missing = set(return_blocks) - set(features)
        if missing:
            raise ValueError(f"return_blocks {sorted(missing)} lie past stop_after={last}")
        if stop_after is None:
            x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        return x, features
