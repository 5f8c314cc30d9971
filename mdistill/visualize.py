"""Pictures of what a masked autoencoder sees and predicts.

reconstruction_grid: one row per image, columns original | masked (what the student sees)
| reconstruction | reconstruction with the visible patches pasted back, as in the MAE paper's
figures. For AMD a fifth column shows both masks: patches only the teacher sees are tinted
blue, patches nobody sees are dark.

With norm_pix_loss the model predicts each hidden patch standardised by its own mean and
variance; to draw it we put back the original patch's statistics, as the MAE demos do (so
the pictures show the predicted structure, not the predicted brightness).

ReconstructionWriter writes the grid to <workdir>/visualizations/recon_<step>.png and to
TensorBoard; the training loop calls it every config.visualize_every steps.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdistill.models.mae import patchify, unpatchify

HIDDEN_SHADE = 0.15  # brightness of hidden patches in the "masked" column (0 black, 1 original)
TEACHER_TINT = np.array([0.35, 0.55, 1.0])  # RGB multiplier for teacher-only patches (AMD)


def _masks(objective, rng, batch_size):
    """(student mask, [B, L] 1.0 where only the teacher sees a patch, or None)."""
    masks = objective.sample_masks(rng, batch_size)
    if not masks.diff_ids.shape[1]:  # the teacher, if any, sees the student's patches
        return masks.student, None
    teacher_only = jnp.zeros((batch_size, objective.num_patches)).at[  # AMD: nested student / teacher masks
        jnp.arange(batch_size)[:, None], masks.diff_ids].set(1.0)
    return masks.student, teacher_only


def predict(objective, params, images, rng):
    """Images (uint8 NHWC) -> dict of float arrays in [0, 1], NHWC: original, masked,
    reconstruction, pasted, and for AMD masks (student and teacher visibility)."""
    x = objective.prepare_images(images)
    mask, teacher_only = _masks(objective, rng, x.shape[0])
    pred, _, _ = objective.student_forward(params, x, mask)
    p, channels = objective.spec.patch_size, x.shape[-1]
    target = patchify(x, p)
    pred = pred.astype(jnp.float32)
    if objective.config.norm_pix_loss:
        mean, var = target.mean(-1, keepdims=True), target.var(-1, keepdims=True)
        pred = pred * jnp.sqrt(var + 1e-6) + mean
    hidden = mask.mask[..., None]
    mean = jnp.asarray(objective.config.data.mean, jnp.float32)
    std = jnp.asarray(objective.config.data.std, jnp.float32)

    def to_unit(patches):  # standardised patches -> [0, 1] image
        return jnp.clip(unpatchify(patches, p, channels) * std + mean, 0.0, 1.0)

    out = {"original": to_unit(target),
           "masked": to_unit(target) * unpatchify(jnp.broadcast_to(1.0 - hidden * (1 - HIDDEN_SHADE), target.shape),
                                                  p, channels),
           "reconstruction": to_unit(pred),
           "pasted": to_unit(target * (1.0 - hidden) + pred * hidden)}
    if teacher_only is not None:
        only = unpatchify(jnp.broadcast_to(teacher_only[..., None], target.shape), p, channels)
        shade = unpatchify(jnp.broadcast_to(hidden, target.shape), p, channels)
        rgb = _rgb(out["original"])
        tint = jnp.where(only[..., :1] > 0, jnp.asarray(TEACHER_TINT), 1.0)
        dark = jnp.where((shade[..., :1] > 0) & (only[..., :1] == 0), HIDDEN_SHADE, 1.0)
        out["masks"] = rgb * tint * dark
    return out


def _rgb(images):
    return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def assemble(parts: dict, scale: int = 1) -> np.ndarray:
    """predict()'s output -> uint8 [rows * H * scale, columns * W * scale, 3] picture."""
    columns = [np.asarray(_rgb(parts[k])) for k in ("original", "masked", "reconstruction", "pasted", "masks")
               if k in parts]
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in columns], axis=1)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return (grid * 255.0 + 0.5).astype(np.uint8)


def reconstruction_grid(objective, params, images, rng, scale: int = 1) -> np.ndarray:
    """The picture described in the module docstring, for uint8 NHWC `images`."""
    return assemble(jax.device_get(predict(objective, params, images, rng)), scale)


def save_png(path: str, picture: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(picture).save(path)


class ReconstructionWriter:
    """Every config.visualize_every steps: a reconstruction grid of a fixed set of images
    (the first batch's first `rows`) with a fixed mask rng, so pictures compare across steps."""

    def __init__(self, trainer, workdir: str, images: np.ndarray, rows: int = 8, tensorboard=None):
        self.objective = trainer.objective
        self.images = np.asarray(images[:rows])
        self.rng = jax.random.PRNGKey(trainer.config.seed + 7)
        self.dir = os.path.join(workdir, "visualizations")
        self.tensorboard = tensorboard
        # small pictures (Fashion-MNIST is 28 px) are enlarged to stay readable
        self.scale = max(1, 112 // self.images.shape[1])
        # every process runs it on the (possibly sharded) parameters; the result is replicated
        self._predict = jax.jit(lambda params, images: predict(self.objective, params, images, self.rng),
                                out_shardings=NamedSharding(trainer.mesh, PartitionSpec()))

    def __call__(self, step: int, params) -> str | None:
        parts = self._predict(params, self.images)
        if jax.process_index() != 0:
            return None
        picture = assemble(jax.device_get(parts), self.scale)
        path = os.path.join(self.dir, f"recon_{step:06d}.png")
        save_png(path, picture)
        if self.tensorboard is not None:
            self.tensorboard.add_image("reconstructions", picture, step, dataformats="HWC")
        return path
