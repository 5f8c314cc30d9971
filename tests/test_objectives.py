"""The Objective interface: a method is one objective file plus one config. A toy method
registered here gets its config section, validation, smoke step, dry run and FLOP count
from OBJECTIVES alone; config.masking.kind='random' keeps the losses of before it existed."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import flops
from mdistill import data, objectives, sharding, train
from mdistill.config import Field, apply_smoke, base_config, meaning, upgrade, validation
from mdistill.config.errors import require
from mdistill.objectives.common import feature_loss
from mdistill.objectives.distill import DistillObjective

# float.hex() of the first two smoke losses, measured before config.masking existed
# (8 simulated CPU devices, tests/conftest.py's XLA flags); AMD's since its generators' mask
# tokens start as the release's (a normal cut at +-1 std): 11.7136 -> 11.7097, 11.6381 -> 11.6344
SMOKE_LOSSES = {"mae": ["0x1.27e70e0000000p+1", "0x1.28a0e80000000p+1"],
                "dmae": ["0x1.35c9ee0000000p+1", "0x1.3686da0000000p+1"],
                "amd": ["0x1.76b5e40000000p+3", "0x1.744cb40000000p+3"]}


class ToyObjective(DistillObjective):
    """MAE plus a cosine alignment of one student block to one teacher block."""

    name = "toy"
    config_key = "toy"

    fields = (Field("pairs", ((8, 17),), "(student block, teacher block), 0-based"),
              Field("weight", 0.5, "weight of the alignment loss"))

    @classmethod
    def smoke(cls, config):
        config.toy.pairs = ((3, 5),)

    @classmethod
    def validate(cls, config):
        student, teacher = cls.validate_teacher(config)
        cls.validate_pairs(config, "toy.pairs", config.toy.pairs, student, teacher)
        require(config.toy.weight >= 0, "toy.weight", config.toy.weight, "must be >= 0")

    @classmethod
    def flop_terms(cls, config):
        pairs = config.toy.pairs
        return {"teacher_forward": cls.teacher_flops(config, pairs, cls.visible_patches(config, config.mask_ratio)),
                "heads": cls.head_flops(config, pairs)}

    def __init__(self, config):
        super().__init__(config, config.toy.pairs)

    def loss(self, params, teacher_params, images, rng):
        x = self.prepare_images(images)
        masks = self.sample_masks(rng, x.shape[0])
        _, student_feats, rec = self.student_forward(params, x, masks.student)
        teacher_feats = self.teacher.features(teacher_params, x, masks.teacher_ids, self.teacher_blocks)
        projected = self.project(params, student_feats)
        align = sum(feature_loss(p, teacher_feats[t], "l2", True) for (_, t), p in projected.items())
        total = rec + self.config.toy.weight * align
        return total, {"loss": total, "rec_loss": rec, "align_loss": align}


@pytest.fixture
def toy():
    objectives.register(ToyObjective)
    yield
    del objectives.OBJECTIVES["toy"]


def toy_config():
    c = apply_smoke(base_config())  # the toy's section comes with every config once registered
    c.method = "toy"
    return c


@pytest.mark.slow
def test_a_registered_method_runs_its_smoke_step_dry_run_and_flop_count(toy):
    c = toy_config()
    assert c.toy.pairs == ((3, 5),) and c.toy.weight == 0.5
    validation.validate(c)
    mesh = sharding.make_mesh()
    trainer = train.Trainer(c, mesh)
    state, teacher = trainer.init_state(), trainer.load_teacher()
    images = data.build_source(c).images(np.arange(c.batch_size))
    for _ in range(2):
        state, metrics = trainer.step_fn(state, teacher, jax.device_put(images, trainer.batch_sharding))
    assert np.isfinite(float(metrics["loss"])) and "align_loss" in metrics
    summary = train.summarize(c, mesh)
    assert summary["method"] == "toy" and summary["teacher_blocks_run"] == 6
    model = flops.step_flops(c)
    assert model["teacher_forward"] > 0 and model["heads"] > 0
    assert 1.0 <= summary["flops_per_step"] / model["total"] <= 1.15


def test_a_registered_method_validates_its_own_fields(toy):
    c = toy_config()
    assert meaning("toy.weight") == "weight of the alignment loss"  # its fields' meanings come with it
    c.toy.weight = -1.0
    with pytest.raises(validation.ConfigError, match=r"config.toy.weight=-1.0 is invalid: must be >= 0"):
        validation.validate(c)
    c = toy_config()
    c.toy.pairs = ((3, 6),)
    with pytest.raises(validation.ConfigError, match="teacher block 6 is outside 0..5"):
        validation.validate(c)


def test_masking_kind_is_validated():
    c = apply_smoke(base_config())
    c.masking.kind = "checkerboard"
    with pytest.raises(validation.ConfigError, match=r"config.masking.kind='checkerboard' is invalid: expected one of"):
        validation.validate(c)


def smoke_losses(method: str, masking_kind: str | None) -> list[str]:
    c = apply_smoke(base_config())
    c.method, c.mask_ratio = method, 0.9 if method == "amd" else 0.75
    if masking_kind is None:  # a config saved before config.masking, read as today's
        saved = c.to_dict()
        del saved["masking"]
        c = upgrade(saved)
    else:
        c.masking.kind = masking_kind
    trainer = train.Trainer(c, sharding.make_mesh())
    state, teacher = trainer.init_state(), trainer.load_teacher()
    source, losses = data.build_source(c), []
    for step in range(2):
        images = source.images(np.arange(step * c.batch_size, (step + 1) * c.batch_size))
        state, metrics = trainer.step_fn(state, teacher, jax.device_put(images, trainer.batch_sharding))
        losses.append(float(metrics["loss"]).hex())
    return losses


@pytest.mark.parametrize("method", ["mae", "dmae", "amd"])
@pytest.mark.slow
def test_random_masking_keeps_the_smoke_losses(method):
    """Bitwise equal to a config without config.masking; equal to the losses recorded before
    masking kinds existed up to float32 rounding (XLA:CPU's reductions round differently on
    other CPU types: the first loss's last bits differ between machines)."""
    losses = smoke_losses(method, "random")
    assert losses == smoke_losses(method, None)
    np.testing.assert_allclose([float.fromhex(v) for v in losses],
                               [float.fromhex(v) for v in SMOKE_LOSSES[method]], rtol=1e-5)
