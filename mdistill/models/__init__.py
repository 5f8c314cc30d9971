"""Flax models: ViT encoder, MAE decoder, heads."""

from mdistill.models.heads import Generator, ProjectionHead
from mdistill.models.mae import MAE, Decoder, patchify, unpatchify
from mdistill.models.vit import SIZES, Encoder, ViTSpec, posemb_sincos_2d

__all__ = ["MAE", "Decoder", "Encoder", "Generator", "ProjectionHead", "SIZES", "ViTSpec",
           "patchify", "posemb_sincos_2d", "unpatchify"]
