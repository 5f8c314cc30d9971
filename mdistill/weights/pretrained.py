"""A pretrained ViT / MAE ready to run: `mdistill.load_pretrained(path)`.

    model = mdistill.load_pretrained("mae_visualize_vit_large.pth")  # or an Orbax checkpoint
    feats = model.encode(images, ids_keep, layers=(11, 23))          # {block: [B, 1+K, D]}
    pred = model.reconstruct(images, ids_keep)                       # [B, L, p*p*C]

Images are NHWC floats normalised as the official code expects (ImageNet mean and std for
the releases); ids_keep [B, K] are the visible patches (row-major indices), which the
encoder keeps in the order given, as the official one does; None means every patch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mdistill.models.mae import MAE
from mdistill.models.vit import Encoder, ViTSpec
from mdistill.weights import loader
from mdistill.weights.state_dict import Architecture


def ids_restore_for(ids_keep: jax.Array, num_patches: int) -> jax.Array:
    """The decoder's unshuffle for visible patches `ids_keep`: the shuffled order is those
    patches, then the hidden ones (ascending; they all become the same mask token)."""
    visible = jnp.zeros((ids_keep.shape[0], num_patches), jnp.int32)
    visible = jax.vmap(lambda v, i: v.at[i].set(1))(visible, ids_keep)
    hidden = jnp.argsort(visible, axis=1, stable=True)[:, :num_patches - ids_keep.shape[1]]
    return jnp.argsort(jnp.concatenate([ids_keep, hidden], axis=1), axis=1).astype(jnp.int32)


@dataclasses.dataclass
class Pretrained:
    """Flax module(s) and parameters {'encoder', 'decoder'?} of one pretrained model."""

    arch: Architecture
    params: dict

    def __post_init__(self):
        self.params = jax.device_put(self.params)  # once, not at every call
        self.encoder = Encoder(self.arch.spec)
        self.mae = MAE(self.arch.spec, *self.arch.decoder, channels=self.arch.channels) if self.arch.decoder else None
        self._encode = jax.jit(self._encode_impl, static_argnums=(3,))
        self._reconstruct = jax.jit(self._reconstruct_impl)

    @property
    def spec(self) -> ViTSpec:
        return self.arch.spec

    def encode(self, images, ids_keep=None, layers: Sequence[int] | None = None) -> dict[int, jax.Array]:
        """{block: output of that 0-based block [B, 1+K, width]} (cls first); layers=None
        returns every block. Blocks past the deepest one asked for are not run."""
        layers = tuple(range(self.spec.depth)) if layers is None else tuple(sorted(set(layers)))
        return self._encode(self.params["encoder"], jnp.asarray(images, jnp.float32), _ids(ids_keep), layers)

    def features(self, images, ids_keep=None) -> jax.Array:
        """The encoder's output after its final LayerNorm [B, 1+K, width], as forward_encoder."""
        return self._encode(self.params["encoder"], jnp.asarray(images, jnp.float32), _ids(ids_keep), None)

    def reconstruct(self, images, ids_keep=None) -> jax.Array:
        """Decoder predictions for every patch [B, L, p*p*C], pixels (row, col, channel)."""
        if self.mae is None:
            raise ValueError("this checkpoint has no decoder (the MAE pre-training releases hold the encoder "
                             "only; mae_visualize_vit_*.pth hold both)")
        images = jnp.asarray(images, jnp.float32)
        if ids_keep is None:
            ids_keep = jnp.tile(jnp.arange((images.shape[1] // self.spec.patch_size) ** 2), (images.shape[0], 1))
        return self._reconstruct(self.params, images, _ids(ids_keep))

    def _encode_impl(self, params, images, ids_keep, layers):
        if layers is None:
            return self.encoder.apply({"params": params}, images, ids_keep)[0]
        if not layers:
            return {}
        _, feats = self.encoder.apply({"params": params}, images, ids_keep, return_blocks=layers,
                                      stop_after=max(layers))
        return feats

    def _reconstruct_impl(self, params, images, ids_keep):
        num_patches = (images.shape[1] // self.spec.patch_size) ** 2
        pred, _ = self.mae.apply({"params": params}, images, ids_keep, ids_restore_for(ids_keep, num_patches))
        return pred


def _ids(ids_keep):
    return None if ids_keep is None else jnp.asarray(ids_keep, jnp.int32)


def load_pretrained(path: str, variant: str | None = None, decoder_heads: int | None = None) -> Pretrained:
    """A .pth / .bin / .safetensors file (official MAE or timm names), a directory written by
    `python -m mdistill.weights.convert`, or an mdistill workdir / checkpoint (its MAE). `variant`
    (e.g. 'L/16') checks the architecture and sets the head count, which no tensor stores."""
    loaded = loader.load(path, variant, decoder_heads=decoder_heads)
    return Pretrained(loaded.arch, dict(loaded.params))
