"""DMAE (Bai et al., CVPR 2023): MAE reconstruction plus feature distillation.

The teacher runs on the student's visible patches only, up to its deepest aligned block.
At each (student block, teacher block) pair, the student's tokens (cls + visible) go
through a projection head to the teacher's width and are pulled towards the teacher's
tokens at the same positions.
"""

from __future__ import annotations

import jax
import ml_collections

from mdistill.models.heads import ProjectionHead
from mdistill.models.vit import ViTSpec
from mdistill.objectives.common import feature_loss
from mdistill.objectives.mae import DTYPES, MAEObjective
from mdistill.teacher import Teacher


def head_name(student_block: int, teacher_block: int) -> str:
    return f"proj_s{student_block}_t{teacher_block}"


class DMAEObjective(MAEObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...}}."""

    uses_teacher = True

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.pairs = tuple((int(s), int(t)) for s, t in config.distill.pairs)
        self.student_blocks = tuple(sorted({s for s, _ in self.pairs}))
        self.teacher_blocks = tuple(sorted({t for _, t in self.pairs}))
        self.teacher = Teacher(ViTSpec.parse(config.teacher.variant), DTYPES[config.teacher.dtype])
        self.head = ProjectionHead(self.teacher.spec.width, config.distill.head, dtype=self.dtype)

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        params = super().init(rng, images)
        feature = jax.numpy.zeros((1, 1, self.spec.width), self.dtype)
        rngs = jax.random.split(rng, len(self.pairs))
        params["heads"] = {head_name(s, t): self.head.init(r, feature)["params"]
                           for (s, t), r in zip(self.pairs, rngs)}
        return params

    def loss(self, params, teacher_params, images, rng):
        cfg = self.config.distill
        x = self.prepare_images(images)
        mask = self.sample_mask(rng, x.shape[0])
        _, student_feats, rec = self.student_forward(params, x, mask)
        teacher_feats = self.teacher.features(teacher_params, x, mask.ids_keep, self.teacher_blocks)
        metrics = {"rec_loss": rec}
        distill = 0.0
        for s, t in self.pairs:
            name = head_name(s, t)
            projected = self.head.apply({"params": params["heads"][name]}, student_feats[s])
            d = feature_loss(projected, teacher_feats[t], cfg.loss, cfg.normalize)
            metrics[f"distill/{name}"] = d
            distill = distill + d
        total = cfg.rec_weight * rec + cfg.weight * distill
        metrics.update(loss=total, distill_loss=distill)
        return total, metrics
