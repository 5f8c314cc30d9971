"""DMAE (Bai et al., CVPR 2023): MAE reconstruction plus feature distillation.

The teacher runs on the student's visible patches only, up to its deepest aligned block.
At each (student block, teacher block) pair, the student's tokens (cls + visible) go
through a projection head to the teacher's width and are pulled towards the teacher's
tokens at the same positions.
"""

from __future__ import annotations

import ml_collections

from mdistill.objectives.common import feature_loss
from mdistill.objectives.distill import DistillObjective, head_name


class DMAEObjective(DistillObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...}}."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config, config.distill.pairs, config.distill.head)

    def loss(self, params, teacher_params, images, rng):
        cfg = self.config.distill
        x = self.prepare_images(images)
        mask = self.sample_mask(rng, x.shape[0])
        _, student_feats, rec = self.student_forward(params, x, mask)
        teacher_feats = self.teacher.features(teacher_params, x, mask.ids_keep, self.teacher_blocks)
        metrics = {"rec_loss": rec}
        distill = 0.0
        for (s, t), projected in self.project(params, student_feats).items():
            d = feature_loss(projected, teacher_feats[t], cfg.loss, cfg.normalize)
            metrics[f"distill/{head_name(s, t)}"] = d
            distill = distill + d
        total = cfg.rec_weight * rec + cfg.weight * distill
        metrics.update(loss=total, distill_loss=distill)
        return total, metrics
