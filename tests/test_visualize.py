"""Reconstruction grids: layout, the visible patches pasted back are the original's, hidden
patches are shaded, AMD adds the teacher's mask, and the writer leaves a PNG and TensorBoard
image."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import amd_vitb, mae_vitb
from mdistill import sharding, visualize
from mdistill.config_base import apply_smoke
from mdistill.models.mae import patchify
from mdistill.objectives import build_objective
from mdistill.train import Trainer


@pytest.fixture(scope="module")
def mae():
    config = apply_smoke(mae_vitb.get_config())
    objective = build_objective(config)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    return config, objective, objective.init(jax.random.PRNGKey(0), images), images


def test_columns_show_original_masked_reconstruction_and_pasted(mae):
    config, objective, params, images = mae
    rng = jax.random.PRNGKey(1)
    parts = jax.device_get(visualize.predict(objective, params, images, rng))
    assert set(parts) == {"original", "masked", "reconstruction", "pasted"}
    for v in parts.values():
        assert v.shape == (3, 32, 32, 3) and v.min() >= 0 and v.max() <= 1
    # the original is the input, up to the 8-bit quantisation
    np.testing.assert_allclose(parts["original"], images / 255.0, atol=1e-5)
    hidden = np.asarray(objective.sample_mask(rng, 3).mask, bool)
    p = objective.spec.patch_size
    pasted, original, masked = (np.asarray(patchify(parts[k], p)) for k in ("pasted", "original", "masked"))
    np.testing.assert_allclose(pasted[~hidden], original[~hidden], atol=1e-6)
    np.testing.assert_allclose(masked[~hidden], original[~hidden], atol=1e-6)
    np.testing.assert_allclose(masked[hidden], original[hidden] * visualize.HIDDEN_SHADE, atol=1e-6)
    assert hidden.mean() == pytest.approx(config.mask_ratio, abs=0.07)

    grid = visualize.reconstruction_grid(objective, params, images, rng, scale=2)
    assert grid.shape == (3 * 32 * 2, 4 * 32 * 2, 3) and grid.dtype == np.uint8


def test_amd_grid_adds_the_nested_masks():
    config = apply_smoke(amd_vitb.get_config())
    objective = build_objective(config)
    images = np.full((2, 32, 32, 3), 200, np.uint8)
    params = objective.init(jax.random.PRNGKey(0), images)
    parts = jax.device_get(visualize.predict(objective, params, images, jax.random.PRNGKey(3)))
    rgb = np.asarray(patchify(parts["masks"], objective.spec.patch_size)).reshape(2, objective.num_patches, -1, 3)
    masks = rgb[..., 2]  # blue channel
    original = 200 / 255.0
    levels = {round(float(v), 4) for v in np.unique(masks.round(4))}
    # student-visible (original), teacher-only (tinted, blue kept) and hidden (dark) patches
    assert levels == {round(original, 4), round(original * visualize.HIDDEN_SHADE, 4)}
    red = rgb[..., 0]
    teacher_only = np.isclose(red, original * visualize.TEACHER_TINT[0]).all(-1)
    student = np.isclose(red, original).all(-1)
    k_s = int(objective.num_patches * (1 - config.mask_ratio))
    k_t = int(objective.num_patches * (1 - config.amd.teacher_mask_ratio))
    assert (student.sum(1) == k_s).all() and (teacher_only.sum(1) == k_t - k_s).all()


def test_writer_saves_png_and_tensorboard_image(tmp_path, mae):
    config, _, _, images = mae
    trainer = Trainer(config, sharding.make_mesh())
    state = trainer.init_state()

    class FakeBoard:
        def __init__(self):
            self.calls = []

        def add_image(self, tag, picture, step, dataformats):
            self.calls.append((tag, picture.shape, step, dataformats))

    board = FakeBoard()
    writer = visualize.ReconstructionWriter(trainer, str(tmp_path), images, rows=2, tensorboard=board)
    path = writer(5, state.params)
    assert path == os.path.join(tmp_path, "visualizations", "recon_000005.png")
    scale = writer.scale
    assert Image.open(path).size == (4 * 32 * scale, 2 * 32 * scale)
    assert board.calls == [("reconstructions", (2 * 32 * scale, 4 * 32 * scale, 3), 5, "HWC")]


def test_training_writes_grids_every_visualize_every_steps(tmp_path, mae):
    from mdistill.train import train

    config = mae[0].copy_and_resolve_references()
    config.update(total_steps=3, visualize_every=2, log_every=3, checkpoint_every=3)
    train(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "visualizations")) == ["recon_000002.png", "recon_000003.png"]
