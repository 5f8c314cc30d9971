"""What a method is to the rest of mdistill: the Objective interface.

A method is one subclass of Objective in its own file, listed in OBJECTIVES
(mdistill/objectives/__init__.py, or added with register()). From that entry alone:
  - base_config() holds its config section (config.<config_key>, the fields it declares,
    each with its default and meaning) and the ':smoke' shrink applies smoke() to it;
  - mdistill.config.validation runs its validate() after the shared checks;
  - benchmarks.flops counts its flop_terms() beside the student's;
  - the trainer builds it from the config and differentiates its loss(), --dry_run compiles
    its step, and benchmarks/step.py times it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import ml_collections

from mdistill import inputs, masking
from mdistill.config.field import Field


class Objective:
    """A pre-training method. The class-level part reads a config before anything is built;
    an instance, built from a validated config, gives the trainer init() and loss()."""

    name: ClassVar[str] = ""  # config.method
    # The config section the method owns (config.<config_key>), or None. Methods may share
    # one: the first registered provides its defaults.
    config_key: ClassVar[str | None] = None
    # The section's fields, named within it: Field(name, default, one-line meaning), as the
    # shared ones (mdistill/config/schema.py); mdistill.config.meaning('<config_key>.<name>').
    fields: ClassVar[tuple[Field, ...]] = ()
    # The experiment config (configs/<name>.py) of the method at ViT-B/16 scale, which
    # benchmarks/step.py times; '' for none.
    reference_config: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = False  # the step gets frozen teacher parameters

    # ---- the config, before anything is built --------------------------------------------
    @classmethod
    def defaults(cls) -> ml_collections.ConfigDict | None:
        """Full-size defaults of config.<config_key>, from `fields` (None: no section)."""
        return ml_collections.ConfigDict({f.name: f.default for f in cls.fields}) if cls.fields else None

    @classmethod
    def smoke(cls, config: ml_collections.ConfigDict) -> None:
        """Shrink config.<config_key> to the ':smoke' models (student mu/4, teacher xs/4)."""

    @classmethod
    def follow_teacher(cls, config: ml_collections.ConfigDict, explicit: set[str]) -> None:
        """Update the fields of config.<config_key> that follow config.teacher.variant, once
        it is read off the teacher's checkpoint (mdistill.resolve.teacher); `explicit`: the
        fields set on the command line, which must agree instead."""

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """Check the method's own fields after the shared ones passed; raise
        mdistill.config.errors.ConfigError naming the field (mdistill.config.errors.require)."""

    @classmethod
    def flop_terms(cls, config: ml_collections.ConfigDict) -> dict[str, float]:
        """FLOPs per sample the method adds to an MAE student's forward pass:
        'teacher_forward' (not differentiated) and 'heads' (trained: counted again, twice,
        in the backward pass). Matrix products only, as benchmarks.flops counts. A method
        whose student is not MAE's (another token count, no decoder) also gives
        'student_encoder', 'student_embed' (its patch embedding, which gets no input
        gradient) and 'decoder', which replace benchmarks.flops' MAE terms."""
        return {"teacher_forward": 0.0, "heads": 0.0}

    # ---- built from a validated config ----------------------------------------------------
    teacher: Any = None  # mdistill.teacher.Teacher when uses_teacher
    teacher_blocks: tuple[int, ...] = ()  # the teacher blocks the loss reads (it runs up to the deepest)
    teacher_mask_ratio: float | None = None  # the teacher's own mask ratio (None: it sees the student's patches)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.token_steps, per_frame = inputs.tokens(config)  # (1, patches) for images
        self.num_patches = self.token_steps * per_frame

    def describe(self) -> dict:
        """What --dry_run's summary says of the method beyond the shared fields ({}: nothing)."""
        return {}

    def frozen(self) -> Callable[[Any], Any] | None:
        """None when every parameter is trained; else a function of the params tree giving a
        tree of bools, True where the optimizer leaves a parameter as it is (no update, no
        weight decay), as PyTorch's AdamW skips a parameter that never gets a gradient
        (mdistill.optim.build_optimizer)."""
        return None

    def init(self, rng: jax.Array, images: jax.Array) -> dict:
        """Trainable parameters for uint8 NHWC `images` (NTHWC clips) (one image is enough: shapes only)."""
        raise NotImplementedError

    def loss(self, params: dict, teacher_params: dict | None, images: jax.Array,
             rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, metrics) of uint8 NHWC `images` (NTHWC clips) under the step's `rng`. metrics hold
        'loss' and any other scalars to log; teacher_params is None without a teacher."""
        raise NotImplementedError

    def sample_masks(self, rng: jax.Array, batch_size: int) -> masking.Masks:
        """The patches each model sees, from config.masking.kind (mdistill.masking.sample)."""
        return masking.sample(masking.kind_of(self.config), rng, batch_size, self.num_patches,
                              self.config.mask_ratio, self.teacher_mask_ratio, masking.options_of(self.config),
                              frames=self.token_steps)
