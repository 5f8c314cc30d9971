"""What DMAE and AMD share: an MAE student, a frozen teacher, aligned (student block,
teacher block) pairs, and one projection head per pair to the teacher's width."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mdistill import inputs
from mdistill.config.errors import require, variant
from mdistill.models.flops import encoder_flops
from mdistill.models.heads import ProjectionHead
from mdistill.models.vit import Layout, ViTSpec
from mdistill.objectives.mae import DTYPES, MAEObjective
from mdistill.teacher import Teacher


def head_name(student_block: int, teacher_block: int) -> str:
    return f"proj_s{student_block}_t{teacher_block}"


class DistillObjective(MAEObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...}} (subclasses may add)."""

    uses_teacher = True

    # ---- the config ----------------------------------------------------------------------
    @classmethod
    def validate_teacher(cls, config) -> tuple[ViTSpec, ViTSpec]:
        """(student, teacher) specs; config.teacher must see the student's patches."""
        student = variant("student.variant", config.student.variant)
        teacher = variant("teacher.variant", config.teacher.variant)
        require(config.teacher.dtype in DTYPES, "teacher.dtype", config.teacher.dtype,
                f"expected one of {sorted(DTYPES)}")
        require(teacher.patch_size == student.patch_size, "teacher.variant", config.teacher.variant,
                f"the teacher must use the student's patch size {student.patch_size} (it sees the same patches)")
        return student, teacher

    @classmethod
    def validate_pairs(cls, config, field: str, pairs, student: ViTSpec, teacher: ViTSpec) -> None:
        require(len(pairs) >= 1, field, pairs, "need at least one (student block, teacher block)")
        for s, t in pairs:
            require(-student.depth <= s < student.depth, field, pairs,
                    f"student block {s} is outside 0..{student.depth - 1} ({config.student.variant}, 0-based; "
                    "negative counts from the last)")
            require(-teacher.depth <= t < teacher.depth, field, pairs,
                    f"teacher block {t} is outside 0..{teacher.depth - 1} ({config.teacher.variant}, 0-based; "
                    "negative counts from the last)")

    @classmethod
    def visible_patches(cls, config, mask_ratio: float) -> int:
        return inputs.visible_tokens(config, mask_ratio)

    @classmethod
    def teacher_flops(cls, config, pairs, teacher_visible: int) -> float:
        """The teacher's partial forward per sample: (cls +) its visible tokens, blocks 0..the
        deepest aligned one, no final norm."""
        spec = inputs.spec_of(config, config.teacher.variant)
        deepest = max(t % spec.depth for _, t in pairs)
        return encoder_flops(spec, config.data.channels, teacher_visible, blocks=1 + deepest)

    @classmethod
    def head_flops(cls, config, pairs, layers: int = 1) -> float:
        """One projection per pair on (cls +) the student's visible tokens (`layers` deep)."""
        student, teacher = inputs.student_spec(config), ViTSpec.parse(config.teacher.variant)
        tokens = int(student.layout.class_token) + cls.visible_patches(config, config.mask_ratio)
        first = 2.0 * tokens * student.width * teacher.width
        return len(pairs) * (first + (layers - 1) * 2.0 * tokens * teacher.width ** 2)

    def __init__(self, config: ml_collections.ConfigDict, pairs, head_kind: str = "linear",
                 head_bias: bool = True):
        super().__init__(config)
        # block indices as given, negative ones counted from the last block (-1: the last)
        depths = (self.spec.depth, ViTSpec.parse(config.teacher.variant).depth)
        self.pairs = tuple((int(s) % depths[0], int(t) % depths[1]) for s, t in pairs)
        self.student_blocks = tuple(sorted({s for s, _ in self.pairs}))
        self.teacher_blocks = tuple(sorted({t for _, t in self.pairs}))
        self.teacher = Teacher(inputs.spec_of(config, config.teacher.variant), DTYPES[config.teacher.dtype])
        self.head = ProjectionHead(self.teacher.spec.width, head_kind, use_bias=head_bias, dtype=self.dtype)

    def use_teacher_layout(self, layout: Layout) -> None:
        """A teacher of another ViT layout than MAE's (timm's DeiT, DINO, CLIP, VideoMAE, ...):
        the one its checkpoint has. Its size stays config.teacher.variant's. It must cut the
        input into the student's tokens."""
        if layout.tubelet != self.spec.layout.tubelet:
            what = lambda t: f"{t}-frame tubelets (clips)" if t else "2-D patches (images)"  # noqa: E731
            raise ValueError(f"config.teacher.checkpoint: the teacher embeds {what(layout.tubelet)}, the student "
                             f"{what(self.spec.layout.tubelet)} (config.num_frames, config.tubelet_size): they must "
                             "see the same tokens")
        self.teacher = Teacher(dataclasses.replace(self.teacher.spec, layout=layout), self.teacher.dtype)

    @property
    def teacher_cls(self) -> int:
        """1 if the teacher's tokens start with a cls token, else 0."""
        return int(self.teacher.spec.layout.class_token)

    @property
    def student_cls(self) -> int:
        return int(self.spec.layout.class_token)

    def student_tokens(self, projected: jax.Array) -> jax.Array:
        """The student's tokens [B, (1+)K, D] that have a teacher counterpart: a cls token
        only where both have one."""
        return projected[:, 1:] if self.student_cls and not self.teacher_cls else projected

    def teacher_tokens(self, features: jax.Array) -> jax.Array:
        """The teacher's tokens that have a student counterpart (see student_tokens)."""
        return features[:, 1:] if self.teacher_cls and not self.student_cls else features

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        params = super().init(rng, images)
        feature = jnp.zeros((1, 1, self.spec.width), self.dtype)
        rngs = jax.random.split(rng, len(self.pairs))
        params["heads"] = {head_name(s, t): self.head.init(r, feature)["params"]
                           for (s, t), r in zip(self.pairs, rngs)}
        return params

    def project(self, params, student_feats: dict) -> dict:
        """{(s, t): student features of block s through pair (s, t)'s projection head}."""
        return {(s, t): self.head.apply({"params": params["heads"][head_name(s, t)]}, student_feats[s])
                for s, t in self.pairs}
