"""Masked autoencoder: the ViT encoder on visible patches plus a light decoder that
predicts the pixels of every patch, laid out (row, col, channel) as in the official MAE."""

from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mdistill.models.vit import Encoder, ViTSpec, block_class, posemb_sincos_2d, xavier


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """NHWC images -> [B, L, p*p*C], patches row-major, pixels (row, col, channel)."""
    return einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
    """Inverse of patchify for square images."""
    grid = int(round(patches.shape[1] ** 0.5))
    return einops.rearrange(patches, "b (h w) (p q c) -> b (h p) (w q) c",
                            h=grid, w=grid, p=patch_size, q=patch_size, c=channels)


class Decoder(nn.Module):
    """MAE decoder: embed, mask tokens, position embeddings, blocks, norm, pixel head."""

    width: int
    depth: int
    num_heads: int
    patch_dim: int
    dtype: Any = jnp.float32
    remat: str = "none"  # see mdistill.models.vit.block_class

    @nn.compact
    def __call__(self, latent, ids_restore):
        """latent [B, 1+K, D_enc] (cls first, visible tokens in ids_keep order);
        ids_restore [B, L] -> predictions [B, L, patch_dim] in patch order."""
        x = nn.Dense(self.width, kernel_init=xavier, dtype=self.dtype, name="embed")(latent)
        batch, num_patches = ids_restore.shape
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width))
        masked = jnp.broadcast_to(mask_token.astype(x.dtype),
                                  (batch, num_patches + 1 - x.shape[1], self.width))
        tokens = jnp.concatenate([x[:, 1:], masked], axis=1)
        tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)
        grid = int(round(num_patches ** 0.5))
        tokens = tokens + jnp.asarray(posemb_sincos_2d(self.width, grid), x.dtype)
        x = jnp.concatenate([x[:, :1], tokens], axis=1)  # the cls position embedding is zero
        for i in range(self.depth):
            x = block_class(self.remat)(self.num_heads, dtype=self.dtype, name=f"block_{i}")(x, True)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        x = nn.Dense(self.patch_dim, kernel_init=xavier, dtype=self.dtype, name="pred")(x)
        return x[:, 1:]


class MAE(nn.Module):
    """Encoder + decoder. Parameters: {'encoder': ..., 'decoder': ...}."""

    spec: ViTSpec
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    channels: int = 3
    dtype: Any = jnp.float32
    remat: str = "none"  # rematerialise encoder and decoder blocks: see vit.block_class

    def setup(self):
        self.encoder = Encoder(self.spec, dtype=self.dtype, remat=self.remat)
        self.decoder = Decoder(self.decoder_width, self.decoder_depth, self.decoder_heads,
                               self.spec.patch_size ** 2 * self.channels, dtype=self.dtype,
                               remat=self.remat)

    def __call__(self, images, ids_keep, ids_restore, return_blocks=()):
        """-> (per-patch predictions [B, L, p*p*C], {block: encoder features})."""
        latent, features = self.encoder(images, ids_keep, return_blocks=return_blocks)
        return self.decoder(latent, ids_restore), features
