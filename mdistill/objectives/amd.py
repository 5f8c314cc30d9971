"""AMD (Zhao et al., CVPR 2024): asymmetric masked distillation.

The teacher sees more than the student: its mask ratio is lower and its visible patches
contain the student's. It runs once, on the student's visible patches followed by the
"difference" patches (seen by the teacher only), up to its deepest aligned block. At each
(student block, teacher block) pair, the student's features (cls + visible) go through a
bias-free linear projection to the teacher's width, and
  - direct alignment pulls them towards the teacher's features at the same tokens;
  - generation alignment feeds them, with mask tokens at the difference patches, to a small
    transformer generator that predicts the teacher's features there.
Each alignment is averaged over the pairs, as in the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mdistill import masking
from mdistill.models.heads import Generator
from mdistill.objectives.common import feature_loss
from mdistill.objectives.distill import DistillObjective, head_name


def generator_name(student_block: int, teacher_block: int) -> str:
    return f"gen_s{student_block}_t{teacher_block}"


class AMDObjective(DistillObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...},
    'generators': {generator_name: ...}}. config.mask_ratio is the student's ratio."""

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.amd
        super().__init__(config, cfg.pairs, head_kind="linear", head_bias=False)
        self.generator = Generator(self.teacher.spec.width, cfg.generator_depth, cfg.generator_heads,
                                   grid=config.image_size // self.spec.patch_size, dtype=self.dtype)

    def sample_masks(self, rng: jax.Array, batch_size: int) -> masking.AsymmetricMask:
        return masking.asymmetric_masking(rng, batch_size, self.num_patches, self.config.mask_ratio,
                                          self.config.amd.teacher_mask_ratio)

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        params = super().init(rng, images)
        # parameter shapes do not depend on the token counts: one visible and one target patch
        visible = jnp.zeros((1, 2, self.teacher.spec.width), self.dtype)
        ids = jnp.zeros((1, 1), jnp.int32)
        rngs = jax.random.split(jax.random.fold_in(rng, 1), len(self.pairs))
        params["generators"] = {generator_name(s, t): self.generator.init(r, visible, ids, ids)["params"]
                                for (s, t), r in zip(self.pairs, rngs)}
        return params

    def loss(self, params, teacher_params, images, rng):
        cfg = self.config.amd
        x = self.prepare_images(images)
        masks = self.sample_masks(rng, x.shape[0])
        _, student_feats, rec = self.student_forward(params, x, masks.student)
        teacher_feats = self.teacher.features(teacher_params, x, masks.teacher_ids, self.teacher_blocks)
        seen = 1 + masks.student.ids_keep.shape[1]  # teacher tokens the student also has: cls + K_s
        metrics = {"rec_loss": rec}
        direct = generation = 0.0
        for (s, t), projected in self.project(params, student_feats).items():
            target = teacher_feats[t]
            d = feature_loss(projected, target[:, :seen], cfg.loss, cfg.normalize)
            generated = self.generator.apply({"params": params["generators"][generator_name(s, t)]},
                                             projected, masks.student.ids_keep, masks.diff_ids)
            g = feature_loss(generated, target[:, seen:], cfg.loss, cfg.normalize)
            metrics[f"dir/{head_name(s, t)}"], metrics[f"gen/{generator_name(s, t)}"] = d, g
            direct, generation = direct + d, generation + g
        direct, generation = direct / len(self.pairs), generation / len(self.pairs)
        total = cfg.rec_weight * rec + cfg.dir_weight * direct + cfg.gen_weight * generation
        metrics.update(loss=total, dir_loss=direct, gen_loss=generation)
        return total, metrics
