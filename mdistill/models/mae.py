"""Masked autoencoder: the ViT encoder on visible patches plus a light decoder that
predicts the pixels of every patch, laid out (row, col, channel) as in the official MAE;
for clips (a video layout) VideoMAE's: tubelet pixels (frame, row, col, channel), no cls
token, a 1-D sin-cos table, a bias-free encoder-to-decoder projection, q / v biases."""

from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mdistill.models.vit import Encoder, ViTSpec, block_class, posemb_sincos_1d, posemb_sincos_2d, xavier


def patchify(images: jax.Array, patch_size: int, tubelet: int = 0) -> jax.Array:
    """NHWC images -> [B, L, p*p*C], patches row-major, pixels (row, col, channel); with a
    tubelet, NTHWC clips -> [B, L, t*p*p*C], tokens time-major, pixels (frame, row, col,
    channel) as VideoMAE's targets."""
    if tubelet:
        return einops.rearrange(images, "b (n u) (h p) (w q) c -> b (n h w) (u p q c)", u=tubelet, p=patch_size,
                                q=patch_size)
    return einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
    """Inverse of patchify for square images."""
    grid = int(round(patches.shape[1] ** 0.5))
    return einops.rearrange(patches, "b (h w) (p q c) -> b (h p) (w q) c",
                            h=grid, w=grid, p=patch_size, q=patch_size, c=channels)


class Decoder(nn.Module):
    """MAE decoder: embed, mask tokens, position embeddings, blocks, norm, pixel head. With
    `video`, VideoMAE's: no cls slot, a bias-free embed, a 1-D table, q / v biases. (VideoMAE
    predicts only the hidden tokens, from visible then mask tokens; attention does not see
    order, so its outputs there are these.)"""

    width: int
    depth: int
    num_heads: int
    patch_dim: int
    dtype: Any = jnp.float32
    remat: str = "none"  # see mdistill.models.vit.block_class
    video: bool = False

    @nn.compact
    def __call__(self, latent, ids_restore):
        """latent [B, 1+K, D_enc] (cls first, visible tokens in ids_keep order; [B, K, D_enc]
        for video); ids_restore [B, L] -> predictions [B, L, patch_dim] in patch order."""
        embedded = nn.Dense(self.width, kernel_init=xavier, use_bias=not self.video, dtype=self.dtype,
                            name="embed")(latent)
        batch, num_patches = ids_restore.shape
        cls = 0 if self.video else 1
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width))
        masked = jnp.broadcast_to(mask_token.astype(embedded.dtype),
                                  (batch, num_patches + cls - embedded.shape[1], self.width))
        tokens = jnp.concatenate([embedded[:, cls:], masked], axis=1)
        tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)
        if self.video:
            pos = posemb_sincos_1d(self.width, num_patches)
        else:
            pos = posemb_sincos_2d(self.width, int(round(num_patches ** 0.5)))
        x = tokens + jnp.asarray(pos, embedded.dtype)
        if cls:  # the cls position embedding is zero
            x = jnp.concatenate([embedded[:, :1], x], axis=1)
        for i in range(self.depth):
            x = block_class(self.remat)(self.num_heads, dtype=self.dtype, k_bias=not self.video,
                                        name=f"block_{i}")(x, True)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        x = nn.Dense(self.patch_dim, kernel_init=xavier, dtype=self.dtype, name="pred")(x)
        return x[:, cls:]


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
        tubelet = self.spec.layout.tubelet
        self.decoder = Decoder(self.decoder_width, self.decoder_depth, self.decoder_heads,
                               max(tubelet, 1) * self.spec.patch_size ** 2 * self.channels, dtype=self.dtype,
                               remat=self.remat, video=bool(tubelet))

    def __call__(self, images, ids_keep, ids_restore, return_blocks=()):
        """-> (per-patch predictions [B, L, (t*)p*p*C], {block: encoder features})."""
        latent, features = self.encoder(images, ids_keep, return_blocks=return_blocks)
        return self.decoder(latent, ids_restore), features
