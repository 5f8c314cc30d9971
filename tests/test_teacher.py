"""The teacher's partial forward and its isolation from training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill.config import apply_smoke, base_config
from mdistill.models import ViTSpec
from mdistill.objectives import build_objective
from mdistill.teacher import Teacher
from mdistill.train import Trainer, flops_of
from mdistill import sharding


@pytest.fixture(scope="module")
def teacher_setup():
    teacher = Teacher(ViTSpec.parse("xs/4"))
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    ids = jnp.tile(jnp.arange(4, dtype=jnp.int32), (4, 1))
    return teacher, teacher.init(jax.random.PRNGKey(1), images), images, ids


@pytest.mark.slow
def test_flops_grow_with_the_stopping_block(teacher_setup):
    teacher, params, images, ids = teacher_setup
    flops = []
    for block in range(teacher.spec.depth):
        fn = jax.jit(lambda p, x, i, b=block: teacher.features(p, x, i, (b,)))
        flops.append(flops_of(fn.lower(params, images, ids).compile()))
    steps = np.diff(flops)
    assert np.all(steps > 0)
    # each extra block costs the same
    np.testing.assert_allclose(steps, steps[0], rtol=0.05)


@pytest.mark.slow
def test_blocks_past_the_deepest_aligned_one_are_never_called(teacher_setup):
    teacher, params, images, ids = teacher_setup
    truncated = {k: v for k, v in params.items() if not (k.startswith("block_") and int(k[6:]) > 2)}
    truncated.pop("norm")
    feats = teacher.features(truncated, images, ids, (1, 2))  # would raise if block 3+ or norm ran
    full = teacher.features(params, images, ids, (1, 2))
    np.testing.assert_array_equal(feats[2], full[2])
    hlo = jax.jit(lambda p: teacher.features(p, images, ids, (2,))).lower(params).compile().as_text()
    # only three blocks' worth of matmuls: qkv, 2 attention products, proj, fc1, fc2 per block
    assert hlo.count(" dot(") + hlo.count(" dot_general(") <= 3 * 6 + 2


@pytest.fixture(scope="module")
def dmae_trainer():
    config = apply_smoke(base_config())
    config.method = "dmae"
    return Trainer(config, sharding.make_mesh(jax.devices()[:1]))


@pytest.mark.slow
def test_teacher_gets_no_gradient_and_no_optimizer_state(dmae_trainer):
    trainer = dmae_trainer
    state = trainer.init_state()
    teacher_params = trainer.load_teacher()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)), jnp.uint8)
    loss_of_teacher = lambda t: trainer.objective.loss(state.params, t, images, jax.random.PRNGKey(0))[0]  # noqa: E731
    grad_teacher = jax.jit(jax.grad(loss_of_teacher))(
        teacher_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_teacher))
    # the optimizer state holds moments for the student's parameters only
    n_params = len(jax.tree.leaves(state.params))
    moment_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moment_leaves) == 2 * n_params
    assert "mae" in state.params and "heads" in state.params and len(state.params) == 2


@pytest.mark.slow
def test_student_gradient_flows_into_the_projection_head(dmae_trainer):
    trainer = dmae_trainer
    state = trainer.init_state()
    teacher_params = trainer.load_teacher()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)), jnp.uint8)
    grads = jax.jit(jax.grad(lambda p: trainer.objective.loss(p, teacher_params, images, jax.random.PRNGKey(0))[0]))(
        state.params)
    head = jax.tree.leaves(grads["heads"])
    assert all(float(jnp.abs(g).max()) > 0 for g in head)
    # student blocks after the aligned one get gradient only from reconstruction; block 0 from both
    assert float(jnp.abs(grads["mae"]["encoder"]["block_0"]["attn"]["qkv"]["kernel"]).max()) > 0


def test_feature_losses():
    from mdistill.objectives.common import feature_loss

    a = jnp.asarray([[3.0, 0.0]])
    b = jnp.asarray([[0.0, 4.0]])
    assert float(feature_loss(a, b, "l1", False)) == pytest.approx(3.5)
    assert float(feature_loss(a, b, "l2", False)) == pytest.approx(12.5)
    assert float(feature_loss(a, b, "smooth_l1", False)) == pytest.approx(3.0)
    # normalised: [1, 0] vs [0, 1]
    assert float(feature_loss(a, b, "l1", True)) == pytest.approx(1.0, abs=1e-5)
    assert float(feature_loss(a, 2 * a, "l2", True)) == pytest.approx(0.0, abs=1e-6)


def test_dmae_objective_matches_the_published_release_settings():
    from configs.dmae_vitb import get_config

    obj = build_objective(get_config())
    assert obj.pairs == ((8, 17),)
    assert obj.teacher.spec == ViTSpec(1024, 24, 16, 16) and obj.spec == ViTSpec(768, 12, 12, 16)
    assert obj.teacher.blocks_run(obj.teacher_blocks) == 18
