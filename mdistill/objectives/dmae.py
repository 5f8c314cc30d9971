"""DMAE (Bai et al., CVPR 2023): MAE reconstruction plus feature distillation.

The teacher runs on the student's visible patches only, up to its deepest aligned block.
At each (student block, teacher block) pair, the student's tokens (cls + visible) go
through a projection head to the teacher's width and are pulled towards the teacher's
tokens at the same positions.

The target is configurable (config.distill): DMAE's own is an intermediate block under L1
on L2-normalised features. Aligning the last blocks (`pairs=((S-1, T-1),)`) under smooth-L1
on LayerNorm-normalised teacher features (`loss='smooth_l1', normalize=False,
target_norm='layernorm'`) is the target of MaskDistill (Peng et al., 2022) and of Feature
Distillation (Wei et al., 2022), made for CLIP / DINO teachers; `loss='cosine'` compares
directions only, as CLIP-feature targets are commonly compared. Either way the loss covers
every token the teacher sees: cls (where the teacher has one) and the student's visible
patches.
"""

from __future__ import annotations

import ml_collections

from mdistill.config.errors import require, take
from mdistill.config.field import Field
from mdistill.models.heads import PROJECTION_KINDS
from mdistill.models.vit import ViTSpec
from mdistill.objectives.common import FEATURE_LOSSES, TARGET_NORMS, feature_loss, normalize_targets
from mdistill.objectives.distill import DistillObjective, head_name


class DMAEObjective(DistillObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...}}. Settings: config.distill."""

    name = "dmae"
    config_key = "distill"
    reference_config = "dmae_vitb"

    fields = tuple(Field(*f) for f in (
        ("pairs", ((8, 17),), "(student block, teacher block), 0-based"),
        ("head", "linear", "projection head: linear | mlp"),
        ("projection", (768, 1024), "(student width, teacher width), checked at start; () skips"),
        ("loss", "l1", "l1 | l2 | smooth_l1 | cosine"),
        ("normalize", True, "L2-normalise both features before the loss"),
        ("target_norm", "none", "none | layernorm: the teacher's features standardised per token first"),
        ("weight", 1.0, "weight of each pair's feature loss"),
        ("rec_weight", 1.0, "weight of the pixel reconstruction loss")))

    @classmethod
    def smoke(cls, config) -> None:
        config.distill.update(pairs=((1, 3),), projection=(64, 128))

    @classmethod
    def follow_teacher(cls, config, explicit) -> None:
        if config.distill.projection:  # () skips the check: nothing to follow
            student, teacher = ViTSpec.parse(config.student.variant), ViTSpec.parse(config.teacher.variant)
            take(config, "distill.projection", (student.width, teacher.width), "the student and teacher widths",
                 explicit)

    @classmethod
    def validate(cls, config) -> None:
        student, teacher = cls.validate_teacher(config)
        dist = config.distill
        cls.validate_pairs(config, "distill.pairs", dist.pairs, student, teacher)
        require(dist.head in PROJECTION_KINDS, "distill.head", dist.head, f"expected one of {PROJECTION_KINDS}")
        require(dist.loss in FEATURE_LOSSES, "distill.loss", dist.loss, f"expected one of {FEATURE_LOSSES}")
        require(dist.target_norm in TARGET_NORMS, "distill.target_norm", dist.target_norm,
                f"expected one of {TARGET_NORMS}")
        if dist.projection:
            require(tuple(dist.projection) == (student.width, teacher.width), "distill.projection",
                    dist.projection, f"must map the student width to the teacher width: ({student.width}, "
                    f"{teacher.width})")

    @classmethod
    def flop_terms(cls, config) -> dict[str, float]:
        """The teacher on the student's visible patches; one head per pair ('mlp': two layers)."""
        pairs = config.distill.pairs
        layers = 2 if config.distill.head == "mlp" else 1
        return {"teacher_forward": cls.teacher_flops(config, pairs, cls.visible_patches(config, config.mask_ratio)),
                "heads": cls.head_flops(config, pairs, layers)}

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config, config.distill.pairs, config.distill.head)

    def loss(self, params, teacher_params, images, rng):
        cfg = self.config.distill
        x = self.prepare_images(images)
        masks = self.sample_masks(rng, x.shape[0])  # the teacher sees the student's patches
        _, student_feats, rec = self.student_forward(params, x, masks.student)
        teacher_feats = self.teacher.features(teacher_params, x, masks.teacher_ids, self.teacher_blocks)
        metrics = {"rec_loss": rec}
        distill = 0.0
        for (s, t), projected in self.project(params, student_feats).items():
            target = normalize_targets(self.teacher_tokens(teacher_feats[t]), cfg.target_norm)
            d = feature_loss(self.student_tokens(projected), target, cfg.loss, cfg.normalize)
            metrics[f"distill/{head_name(s, t)}"] = d
            distill = distill + d
        total = cfg.rec_weight * rec + cfg.weight * distill
        metrics.update(loss=total, distill_loss=distill)
        return total, metrics
