"""MAE: reconstruct the pixels of the hidden patches from the visible ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mdistill import inputs, masking
from mdistill.models.mae import MAE, patchify
from mdistill.objectives.base import Objective
from mdistill.objectives.common import normalize_images, reconstruction_loss

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MAEObjective(Objective):
    """Trainable parameters: {'mae': {'encoder', 'decoder'}}. No teacher. The student config
    (config.student, mask_ratio, norm_pix_loss) is shared by every method, so checked by
    mdistill.config.validation, and its FLOPs counted by benchmarks.flops."""

    name = "mae"
    reference_config = "mae_vitb"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.spec = inputs.student_spec(config)  # VideoMAE's layout for clips
        self.dtype = DTYPES[config.dtype]
        self.mae = MAE(self.spec, config.student.decoder_width, config.student.decoder_depth,
                       config.student.decoder_heads, channels=config.data.channels, dtype=self.dtype,
                       remat=config.remat)

    # Blocks of the student encoder whose outputs the loss needs (none for plain MAE).
    student_blocks: tuple[int, ...] = ()

    def sample_mask(self, rng: jax.Array, batch_size: int) -> masking.Mask:
        """The student's mask (sample_masks' .student)."""
        return self.sample_masks(rng, batch_size).student

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        mask = self.sample_mask(rng, images.shape[0])
        x = self.prepare_images(images)
        return {"mae": self.mae.init(rng, x, mask.ids_keep, mask.ids_restore)["params"]}

    def prepare_images(self, images: jax.Array) -> jax.Array:
        return normalize_images(images, self.config.data.mean, self.config.data.std)

    def student_forward(self, params, x, mask):
        """-> (pixel predictions, {student block: features}, reconstruction loss)."""
        pred, feats = self.mae.apply({"params": params["mae"]}, x.astype(self.dtype), mask.ids_keep,
                                     mask.ids_restore, return_blocks=self.student_blocks)
        tubelet = self.spec.layout.tubelet
        if tubelet:  # VideoMAE's target: pixels in [0, 1], each tubelet normalised per channel
            d = self.config.data
            pixels = x * jnp.asarray(d.std, jnp.float32) + jnp.asarray(d.mean, jnp.float32)
            target = patchify(pixels, self.spec.patch_size, tubelet)
            rec = reconstruction_loss(pred, target, mask.mask, self.config.norm_pix_loss,
                                      channels=self.config.data.channels)
        else:
            rec = reconstruction_loss(pred, patchify(x, self.spec.patch_size), mask.mask, self.config.norm_pix_loss)
        return pred, feats, rec

    def loss(self, params, teacher_params, images, rng):
        del teacher_params
        x = self.prepare_images(images)
        mask = self.sample_mask(rng, x.shape[0])
        _, _, rec = self.student_forward(params, x, mask)
        return rec, {"loss": rec, "rec_loss": rec}
