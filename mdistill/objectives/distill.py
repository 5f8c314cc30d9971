"""What DMAE and AMD share: an MAE student, a frozen teacher, aligned (student block,
teacher block) pairs, and one projection head per pair to the teacher's width."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mdistill.models.heads import ProjectionHead
from mdistill.models.vit import ViTSpec
from mdistill.objectives.mae import DTYPES, MAEObjective
from mdistill.teacher import Teacher


def head_name(student_block: int, teacher_block: int) -> str:
    return f"proj_s{student_block}_t{teacher_block}"


class DistillObjective(MAEObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...}} (subclasses may add)."""

    uses_teacher = True

    def __init__(self, config: ml_collections.ConfigDict, pairs, head_kind: str = "linear",
                 head_bias: bool = True):
        super().__init__(config)
        self.pairs = tuple((int(s), int(t)) for s, t in pairs)
        self.student_blocks = tuple(sorted({s for s, _ in self.pairs}))
        self.teacher_blocks = tuple(sorted({t for _, t in self.pairs}))
        self.teacher = Teacher(ViTSpec.parse(config.teacher.variant), DTYPES[config.teacher.dtype])
        self.head = ProjectionHead(self.teacher.spec.width, head_kind, use_bias=head_bias, dtype=self.dtype)

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
