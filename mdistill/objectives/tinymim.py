"""TinyMIM (Ren et al., CVPR 2023): distilling an MIM-pretrained ViT's token relations.

As the release (OliverRensu/TinyMIM) computes it:
  - the student sees the whole image (no mask, no decoder), colour-jittered (ColorJitter
    brightness, contrast, saturation, each applied in a random order per image); the teacher
    sees the same crop without jitter. The jitter runs here, on device, from the step's rng:
    the input pipeline stays the one of every method;
  - the targets are per-head token relations of one block's attention, cls included:
    softmax(q k^T s) and softmax(v v^T s), s the block's own head_dim^-0.5, read on the block's
    norm1 output (nothing after the block's qkv runs). The teacher's block is
    `tinymim.teacher_block` (the 18th of ViT-L's 24: 0-based 17); the student's is its last
    block, whose head count is the teacher's (16 for a ViT-B student of a ViT-L), the other
    blocks keeping theirs;
  - the loss is KL(teacher || student) summed over the keys and averaged over images, heads
    and queries, for q k^T and v v^T, added unweighted;
  - the student's blocks but the last drop their residual branches at one rate
    (`tinymim.drop_path`, 0.1).
The parameters the relations never reach (the last block's output projection, norm2 and MLP,
the final norm) are frozen at their initialisation: they get no gradient, and the release's
PyTorch AdamW skips a parameter without one (no weight decay either). The student is saved
as an MAE encoder ({'mae': {'encoder'}}, no decoder): it fine-tunes, exports and serves as
the teacher of the next TinyMIM run (sequential distillation: ViT-L -> ViT-B -> ViT-S / T)
as any pre-trained encoder does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mdistill import inputs
from mdistill.config.errors import require, variant
from mdistill.config.field import Field
from mdistill.models.flops import attention_flops, block_flops, patch_embed_flops
from mdistill.models.vit import Encoder, Layout, ViTSpec
from mdistill.objectives.base import Objective
from mdistill.objectives.common import normalize_images
from mdistill.objectives.mae import DTYPES
from mdistill.teacher import Teacher

RELATIONS = ("qk", "vv")
GRAY = (0.299, 0.587, 0.114)  # luma weights of PIL's convert('L'), which ColorJitter's PIL path uses


def _gray(x: jax.Array) -> jax.Array:
    """[B, H, W, C] in [0, 1] -> luminance [B, H, W, 1] (a 1-channel image is its own)."""
    if x.shape[-1] == 1:
        return x
    return jnp.sum(x * jnp.asarray(GRAY, x.dtype), axis=-1, keepdims=True)


def jitter_draws(rng: jax.Array, batch: int, strengths) -> tuple[jax.Array, jax.Array]:
    """torchvision's ColorJitter(brightness, contrast, saturation) draws, per image: factors
    [B, 3] uniform in [max(0, 1 - s), 1 + s] (1 where a strength is 0), and the order [B, 3]
    in which the three adjustments apply (a permutation of 0, 1, 2)."""
    k_factor, k_order = jax.random.split(rng)
    low = jnp.asarray([max(0.0, 1.0 - s) for s in strengths], jnp.float32)
    high = jnp.asarray([1.0 + s for s in strengths], jnp.float32)
    factors = jax.random.uniform(k_factor, (batch, 3), minval=low, maxval=high)
    factors = jnp.where(jnp.asarray(strengths) > 0, factors, 1.0)
    order = jax.vmap(lambda k: jax.random.permutation(k, 3))(jax.random.split(k_order, batch))
    return factors, order


def apply_jitter(x: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
    """Images [B, H, W, C] in [0, 1] adjusted as PIL's ImageEnhance, which ColorJitter calls,
    in `order`, clipped to [0, 1] after each: 0 brightness (x * f), 1 contrast (a blend with the
    image's mean luminance), 2 saturation (a blend with each pixel's luminance)."""
    f = factors[:, :, None, None, None]

    def adjust(op: int, y: jax.Array) -> jax.Array:
        if op == 0:
            out = y * f[:, 0]
        elif op == 1:
            out = f[:, 1] * y + (1 - f[:, 1]) * jnp.mean(_gray(y), axis=(1, 2, 3), keepdims=True)
        else:
            out = f[:, 2] * y + (1 - f[:, 2]) * _gray(y)
        return jnp.clip(out, 0.0, 1.0)

    for slot in range(3):
        op = order[:, slot][:, None, None, None]
        x = jnp.select([op == 0, op == 1, op == 2], [adjust(0, x), adjust(1, x), adjust(2, x)])
    return x


def color_jitter(x: jax.Array, rng: jax.Array, strengths) -> jax.Array:
    """ColorJitter(*strengths) (brightness, contrast, saturation) of images [B, H, W, C] in
    [0, 1], drawn per image from `rng`."""
    return apply_jitter(x, *jitter_draws(rng, x.shape[0], strengths))


def relation_kl(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) over the last axis (the keys), averaged over
    every other (images, heads, queries): the release's KLDivLoss(reduction='none')(
    student_probs.log(), teacher_probs).sum(-1).mean()."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


class TinyMIMObjective(Objective):
    """Trainable parameters: {'mae': {'encoder'}}. Settings: config.tinymim; config.mask_ratio,
    norm_pix_loss and the student's decoder fields are not used."""

    name = "tinymim"
    config_key = "tinymim"
    reference_config = "tinymim_vitb"
    uses_teacher = True

    # ---- the config ----------------------------------------------------------------------
    fields = tuple(Field(*f) for f in (
        ("teacher_block", 17, "0-based teacher block whose relations are the targets; < 0 counts from its last"),
        ("relations", RELATIONS, "which relations are distilled: qk | vv, their KLs added unweighted"),
        ("jitter", (0.4, 0.4, 0.4), "the student's ColorJitter: brightness, contrast, saturation (0: off)"),
        ("drop_path", 0.1, "the student's drop path, one rate in every block but the last"),
        ("student_heads", 0, "heads of the student's blocks but the last (0: its variant's)")))

    @classmethod
    def smoke(cls, config) -> None:
        # an intermediate block of any smoke teacher (xs: block 4 of 0..5); the student's own heads
        config.tinymim.update(teacher_block=-2, student_heads=0)

    @classmethod
    def specs(cls, config) -> tuple[ViTSpec, ViTSpec]:
        """(student, teacher) as the run builds them: the student's blocks with tinymim.student_heads."""
        student = ViTSpec.parse(config.student.variant)
        if config.tinymim.student_heads:
            student = dataclasses.replace(student, num_heads=int(config.tinymim.student_heads))
        return student, ViTSpec.parse(config.teacher.variant)

    @classmethod
    def validate(cls, config) -> None:
        t = config.tinymim
        require(not inputs.is_video(config), "num_frames", inputs.num_frames(config),
                "TinyMIM distils images: expected 1")
        student = variant("student.variant", config.student.variant)
        teacher = variant("teacher.variant", config.teacher.variant)
        require(config.teacher.dtype in DTYPES, "teacher.dtype", config.teacher.dtype,
                f"expected one of {sorted(DTYPES)}")
        require(teacher.patch_size == student.patch_size, "teacher.variant", config.teacher.variant,
                f"the teacher must use the student's patch size {student.patch_size}: the relations compare "
                "token with token")
        require(-teacher.depth <= t.teacher_block < teacher.depth, "tinymim.teacher_block", t.teacher_block,
                f"outside 0..{teacher.depth - 1} ({config.teacher.variant}, 0-based; negative counts from the last)")
        relations = tuple(t.relations)
        require(len(relations) >= 1 and len(set(relations)) == len(relations) and set(relations) <= set(RELATIONS),
                "tinymim.relations", t.relations, f"expected a non-empty subset of {RELATIONS}")
        require(len(t.jitter) == 3 and all(s >= 0 for s in t.jitter), "tinymim.jitter", t.jitter,
                "expected (brightness, contrast, saturation) strengths, each >= 0")
        require(0.0 <= t.drop_path < 1.0, "tinymim.drop_path", t.drop_path, "must be in [0, 1)")
        heads = t.student_heads or student.num_heads
        require(t.student_heads >= 0 and student.width % heads == 0, "tinymim.student_heads", t.student_heads,
                f"must be 0 (the variant's {student.num_heads}) or divide the student width {student.width}")
        require(student.width % teacher.num_heads == 0, "student.variant", config.student.variant,
                f"its last block takes the teacher's {teacher.num_heads} heads ({config.teacher.variant}), which "
                f"must divide its width {student.width}")
        require(config.visualize_every == 0, "visualize_every", config.visualize_every,
                "TinyMIM's student has no decoder, so there is no reconstruction to draw: set 0")

    @classmethod
    def flop_terms(cls, config) -> dict[str, float]:
        """Both models on cls + every patch: the teacher's blocks before its relation block,
        then that block's qkv and the two relation products; the student's likewise at its
        last block. No decoder, no heads."""
        student, teacher = cls.specs(config)
        channels = config.data.channels
        tokens = 1 + (config.image_size // student.patch_size) ** 2

        def to_relations(spec: ViTSpec, block: int) -> float:
            embed = patch_embed_flops(tokens - 1, spec.patch_size, channels, spec.width)
            qkv = 2.0 * tokens * spec.width * 3 * spec.width
            return embed + block * block_flops(tokens, spec.width) + qkv + attention_flops(tokens, spec.width)

        t_block = config.tinymim.teacher_block % teacher.depth
        return {"teacher_forward": to_relations(teacher, t_block), "heads": 0.0,
                "student_encoder": to_relations(student, student.depth - 1),
                "student_embed": patch_embed_flops(tokens - 1, student.patch_size, channels, student.width),
                "decoder": 0.0}

    # ---- built from a validated config ----------------------------------------------------
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        t = config.tinymim
        student, teacher = self.specs(config)
        self.spec = student
        self.dtype = DTYPES[config.dtype]
        self.teacher = Teacher(teacher, DTYPES[config.teacher.dtype])
        self.teacher_block = int(t.teacher_block) % teacher.depth
        self.teacher_blocks = (self.teacher_block,)
        self.student_block = student.depth - 1
        self.encoder = Encoder(student, dtype=self.dtype, drop_path=float(t.drop_path),
                               remat=config.remat, last_heads=teacher.num_heads, drop_path_uniform=True)

    def use_teacher_layout(self, layout: Layout) -> None:
        """A teacher of another ViT layout (timm's): it must have a cls token, as the
        student's relations include one, and cut images into 2-D patches."""
        if layout.tubelet or not layout.class_token:
            raise ValueError(f"config.teacher.checkpoint: TinyMIM compares relations among cls + patch tokens; the "
                             f"teacher ({layout.describe()}) has no cls token or embeds clips")
        self.teacher = Teacher(dataclasses.replace(self.teacher.spec, layout=layout), self.teacher.dtype)

    def describe(self) -> dict:
        s, t, c = self.spec, self.teacher.spec, self.config
        target = (f"teacher {c.teacher.variant} block {self.teacher_block} (0-based: {self.teacher_block + 1} of "
                  f"{t.depth}), {t.num_heads} heads of {t.width // t.num_heads}")
        own = (f"student {c.student.variant} block {self.student_block} (its last), {t.num_heads} heads of "
               f"{s.width // t.num_heads} (its other blocks: {s.num_heads})")
        return {"relations": list(c.tinymim.relations), "teacher_relation_block": self.teacher_block,
                "teacher_relation_heads": t.num_heads, "student_relation_block": self.student_block,
                "student_relation_heads": self.encoder.heads_of(self.student_block), "student_heads": s.num_heads,
                "distilled": f"{target} -> {own}; KL(teacher || student) of {' + '.join(c.tinymim.relations)}"}

    def frozen(self):
        """What the relations never reach: the last block's proj, norm2 and MLP, the final norm."""
        last = f"block_{self.student_block}"

        def unused(path) -> bool:
            keys = tuple(p.key for p in path)
            if keys[:2] != ("mae", "encoder"):
                return False
            return keys[2] == "norm" or keys[2:4] in ((last, "norm2"), (last, "mlp")) or keys[2:5] == (last, "attn",
                                                                                                      "proj")

        return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: unused(path), params)

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        # every parameter of a ViT, those the relations never reach included: the student is
        # a whole encoder for fine-tuning, export and a next TinyMIM run
        return {"mae": {"encoder": self.encoder.init(rng, self.prepare_images(images))["params"]}}

    def prepare_images(self, images: jax.Array) -> jax.Array:
        return normalize_images(images, self.config.data.mean, self.config.data.std)

    def student_view(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """The student's input: the colour-jittered image, normalised."""
        d = self.config.data
        x = color_jitter(images.astype(jnp.float32) / 255.0, rng, tuple(self.config.tinymim.jitter))
        return (x - jnp.asarray(d.mean, jnp.float32)) / jnp.asarray(d.std, jnp.float32)

    def student_relations(self, params: dict, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        deterministic = float(self.config.tinymim.drop_path) == 0.0
        relations, _ = self.encoder.apply({"params": params["mae"]["encoder"]}, x.astype(self.dtype), None,
                                          relations_at=self.student_block, deterministic=deterministic,
                                          rngs=None if deterministic else {"dropout": rng})
        return relations

    def loss(self, params, teacher_params, images, rng):
        k_jitter, k_drop = jax.random.split(rng)
        student = dict(zip(RELATIONS, self.student_relations(params, self.student_view(images, k_jitter), k_drop)))
        teacher = dict(zip(RELATIONS, self.teacher.relations(teacher_params, self.prepare_images(images),
                                                             self.teacher_block)))
        metrics, total = {}, 0.0
        for name in self.config.tinymim.relations:
            metrics[f"{name}_loss"] = relation_kl(teacher[name], student[name])
            total = total + metrics[f"{name}_loss"]
        metrics["loss"] = total
        return total, metrics
