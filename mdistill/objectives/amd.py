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

The generators' mask tokens follow the release by default: it keeps them in a plain Python
list, never registered as parameters, so they stay at their initialisation (truncated normal,
std 0.02, cut at +-0.02) and are never trained. Here they are frozen likewise (no gradient,
no update) but kept in the checkpoint, so that a resumed run continues with the same ones
(the release draws new ones). `amd.train_mask_tokens=True` trains them as parameters instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mdistill import inputs
from mdistill.config.errors import require
from mdistill.config.field import Field
from mdistill.models.flops import block_flops
from mdistill.models.heads import Generator
from mdistill.models.vit import ViTSpec
from mdistill.objectives.common import FEATURE_LOSSES, feature_loss
from mdistill.objectives.distill import DistillObjective, head_name


def generator_name(student_block: int, teacher_block: int) -> str:
    return f"gen_s{student_block}_t{teacher_block}"


class AMDObjective(DistillObjective):
    """Trainable parameters: {'mae': ..., 'heads': {head_name: ...},
    'generators': {generator_name: ...}}. Settings: config.amd; config.mask_ratio is the
    student's ratio."""

    name = "amd"
    config_key = "amd"
    reference_config = "amd_vitb"

    fields = tuple(Field(*f) for f in (
        ("teacher_mask_ratio", 0.75,
         "the teacher's mask ratio (config.mask_ratio stays the student's), lower: the teacher sees a superset"),
        ("pairs", ((5, 11), (11, 23)), "(student block, teacher block), 0-based: B/16 <-> L/16"),
        ("generator_depth", 2, "blocks of each pair's generator (teacher width)"),
        ("generator_heads", 16, "teacher width / 64, as in the official code"),
        ("loss", "l2", "l1 | l2 | smooth_l1, for both alignments"),
        ("normalize", False, "L2-normalise features before the loss (the paper does not)"),
        ("dir_weight", 1.0, "direct alignment (teacher features at the student's tokens)"),
        ("gen_weight", 1.0, "generation alignment (at the tokens only the teacher sees)"),
        ("rec_weight", 1.0, "pixel reconstruction"),
        ("train_mask_tokens", False,
         "train the generators' mask tokens; False (the release): frozen at their init, checkpointed")))

    @classmethod
    def smoke(cls, config) -> None:
        # middle and last blocks of each, as AMD pairs them: mu has 4 blocks, xs 6 (128 wide);
        # the teacher's counted from its last, so that any smoke teacher fits (-4, -1: 2, 5 of xs)
        config.amd.update(pairs=((1, -4), (3, -1)), generator_heads=2)

    @classmethod
    def validate(cls, config) -> None:
        student, teacher = cls.validate_teacher(config)
        amd = config.amd
        ratio = amd.teacher_mask_ratio
        require(0.0 <= ratio < config.mask_ratio, "amd.teacher_mask_ratio", ratio,
                f"must be in [0, config.mask_ratio={config.mask_ratio}): the teacher sees more than the student")
        num_patches = (config.image_size // student.patch_size) ** 2
        keep_s, keep_t = cls.visible_patches(config, config.mask_ratio), cls.visible_patches(config, ratio)
        require(keep_t > keep_s, "amd.teacher_mask_ratio", ratio,
                f"leaves the teacher {keep_t} visible of {num_patches} patches, no more than the student's "
                f"{keep_s}; lower it so at least one patch is the teacher's alone")
        cls.validate_pairs(config, "amd.pairs", amd.pairs, student, teacher)
        require(amd.generator_depth >= 1, "amd.generator_depth", amd.generator_depth, "must be >= 1")
        require(amd.generator_heads >= 1 and teacher.width % amd.generator_heads == 0, "amd.generator_heads",
                amd.generator_heads, f"must divide the teacher width {teacher.width} (the generator runs at it)")
        require(amd.loss in FEATURE_LOSSES, "amd.loss", amd.loss, f"expected one of {FEATURE_LOSSES}")
        for name in ("dir_weight", "gen_weight", "rec_weight"):
            require(amd[name] >= 0, f"amd.{name}", amd[name], "must be >= 0")

    @classmethod
    def flop_terms(cls, config) -> dict[str, float]:
        """The teacher on its larger visible set; bias-free linear heads; each pair's
        generator at the teacher's width on cls + the teacher's visible tokens."""
        amd, teacher = config.amd, ViTSpec.parse(config.teacher.variant)
        t_visible = cls.visible_patches(config, amd.teacher_mask_ratio)
        cls_token = int(inputs.student_spec(config).layout.class_token)
        generators = len(amd.pairs) * amd.generator_depth * block_flops(cls_token + t_visible, teacher.width)
        return {"teacher_forward": cls.teacher_flops(config, amd.pairs, t_visible),
                "heads": cls.head_flops(config, amd.pairs) + generators}

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.amd
        super().__init__(config, cfg.pairs, head_kind="linear", head_bias=False)
        self.teacher_mask_ratio = cfg.teacher_mask_ratio
        self.generator = Generator(self.teacher.spec.width, cfg.generator_depth, cfg.generator_heads,
                                   grid=config.image_size // self.spec.patch_size, dtype=self.dtype,
                                   video_tokens=self.num_patches if self.spec.layout.tubelet else 0)

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        params = super().init(rng, images)
        # parameter shapes do not depend on the token counts: one visible and one target patch
        visible = jnp.zeros((1, self.student_cls + 1, self.teacher.spec.width), self.dtype)
        ids = jnp.zeros((1, 1), jnp.int32)
        rngs = jax.random.split(jax.random.fold_in(rng, 1), len(self.pairs))
        params["generators"] = {generator_name(s, t): self.generator.init(r, visible, ids, ids)["params"]
                                for (s, t), r in zip(self.pairs, rngs)}
        return params

    def frozen(self):
        """The generators' mask tokens, unless amd.train_mask_tokens."""
        if self.config.amd.train_mask_tokens:
            return None
        return lambda params: jax.tree_util.tree_map_with_path(
            lambda path, _: path[0].key == "generators" and path[-1].key == "mask_token", params)

    def generator_params(self, params: dict, s: int, t: int) -> dict:
        """Pair (s, t)'s generator, its mask token under stop_gradient unless amd.train_mask_tokens."""
        gen = params["generators"][generator_name(s, t)]
        if self.config.amd.train_mask_tokens:
            return gen
        return {**gen, "mask_token": jax.lax.stop_gradient(gen["mask_token"])}

    def loss(self, params, teacher_params, images, rng):
        cfg = self.config.amd
        x = self.prepare_images(images)
        masks = self.sample_masks(rng, x.shape[0])
        _, student_feats, rec = self.student_forward(params, x, masks.student)
        teacher_feats = self.teacher.features(teacher_params, x, masks.teacher_ids, self.teacher_blocks)
        seen = self.teacher_cls + masks.student.ids_keep.shape[1]  # teacher tokens the student has: (cls +) K_s
        metrics = {"rec_loss": rec}
        direct = generation = 0.0
        for (s, t), projected in self.project(params, student_feats).items():
            target = teacher_feats[t]
            d = feature_loss(self.student_tokens(projected), self.teacher_tokens(target[:, :seen]), cfg.loss,
                             cfg.normalize)
            generated = self.generator.apply({"params": self.generator_params(params, s, t)},
                                             projected, masks.student.ids_keep, masks.diff_ids)
            g = feature_loss(generated, target[:, seen:], cfg.loss, cfg.normalize)
            metrics[f"dir/{head_name(s, t)}"], metrics[f"gen/{generator_name(s, t)}"] = d, g
            direct, generation = direct + d, generation + g
        direct, generation = direct / len(self.pairs), generation / len(self.pairs)
        total = cfg.rec_weight * rec + cfg.dir_weight * direct + cfg.gen_weight * generation
        metrics.update(loss=total, dir_loss=direct, gen_loss=generation)
        return total, metrics
