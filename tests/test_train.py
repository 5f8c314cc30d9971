"""The train step and loop on simulated devices."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.train import Trainer, train
from mdistill.weights.checkpoint import CheckpointError

pytestmark = pytest.mark.slow  # training runs (tests/README.md)


def smoke(method="dmae", **overrides):
    c = apply_smoke(base_config())
    c.method = method
    for k, v in overrides.items():
        c[k] = v
    return c


def batch(n=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def run_steps(trainer, n=2):
    state = trainer.init_state()
    teacher = trainer.load_teacher()
    losses = []
    for i in range(n):
        images = jax.device_put(batch(seed=i), trainer.batch_sharding)
        state, metrics = trainer.step_fn(state, teacher, images)
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.mark.parametrize("method", ["mae", "dmae"])
def test_same_loss_on_one_and_eight_devices(method):
    assert jax.device_count() == 8
    one, state1 = run_steps(Trainer(smoke(method), sharding.make_mesh(jax.devices()[:1])))
    eight, state8 = run_steps(Trainer(smoke(method), sharding.make_mesh()))
    np.testing.assert_allclose(one, eight, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradient_accumulation_averages_micro_batch_gradients():
    c = smoke("dmae")
    c.optim.accum_steps = 2
    trainer = Trainer(c, sharding.make_mesh())
    state, teacher = trainer.init_state(), trainer.load_teacher()
    images = jax.device_put(batch(), trainer.batch_sharding)
    rng = jax.random.PRNGKey(7)
    grads, _ = jax.jit(trainer._grads)(state.params, teacher, images, rng)

    grad_fn = jax.jit(jax.grad(lambda p, x, r: trainer.objective.loss(p, teacher, x, r)[0]))
    manual = [grad_fn(state.params, jnp.asarray(batch()[i::2]), jax.random.fold_in(rng, i)) for i in range(2)]
    expected = jax.tree.map(lambda a, b: (a + b) / 2, *manual)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_smoke_run_loss_falls_and_writes_metrics(tmp_path):
    last = train(smoke("dmae"), str(tmp_path))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    assert lines[-1]["loss"] < 0.8 * lines[0]["loss"]
    assert lines[-1]["distill_loss"] < lines[0]["distill_loss"]
    assert last["step"] == 40 and np.isfinite(last["loss"])
    assert os.listdir(tmp_path / "tensorboard")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["40"]


def test_resume_from_a_checkpoint_ends_with_identical_parameters(tmp_path):
    from mdistill.weights import checkpoint

    c = smoke("mae", total_steps=20)
    c.checkpoint_every = 10
    train(c, str(tmp_path / "clean"))
    train(c, str(tmp_path / "resumed"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "20")  # as if killed after step 10
    train(c, str(tmp_path / "resumed"))
    clean, meta = checkpoint.load_params(str(tmp_path / "clean"), None)
    resumed, meta_r = checkpoint.load_params(str(tmp_path / "resumed"), None)
    assert meta["step"] == meta_r["step"] == 20
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_distilling_from_a_trained_mae_checkpoint(tmp_path):
    """An MAE run's checkpoint is a valid teacher; a mismatched one is refused by name."""
    teacher_cfg = smoke("mae", total_steps=2)
    teacher_cfg.student.variant = "xs/4"
    train(teacher_cfg, str(tmp_path / "teacher"))
    c = smoke("dmae", total_steps=2)
    c.teacher.checkpoint = str(tmp_path / "teacher")
    assert np.isfinite(train(c, str(tmp_path / "student"))["loss"])
    c.teacher.variant = "mu/4"
    c.distill.projection = (64, 64)
    with pytest.raises(CheckpointError, match="does not match config.teacher.variant='mu/4'"):
        Trainer(c, sharding.make_mesh()).load_teacher()


def test_bfloat16_compute_keeps_float32_parameters():
    c = smoke("dmae")
    c.dtype = "bfloat16"
    c.teacher.dtype = "bfloat16"
    trainer = Trainer(c, sharding.make_mesh())
    losses, state = run_steps(trainer, n=1)
    assert np.isfinite(losses[0])
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(trainer.load_teacher())} == {jnp.dtype(jnp.bfloat16)}
