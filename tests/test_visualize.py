"""Reconstruction grids: layout, the visible patches pasted back are the original's, hidden
patches are shaded, AMD adds the teacher's mask, columns are titled, clips are strips of
frames, the samples spread over the classes, every pre-training config draws by default
(smoke runs at their end), drawing leaves the training unchanged, and the writer leaves a
PNG and TensorBoard image."""

import glob
import importlib
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import amd_video, amd_vitb, mae_vitb
from mdistill import sharding, visualize
from mdistill.config import apply_smoke
from mdistill.models.mae import patchify
from mdistill.objectives import build_objective
from mdistill.train import Trainer

pytestmark = pytest.mark.slow  # training runs and models built to draw from (tests/README.md)


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

    grid = visualize.reconstruction_grid(objective, params, images, rng, scale=2, header=False)
    # rows 1 pixel apart, columns GAP apart
    assert grid.shape == (3 * 64 + 2, 4 * 64 + 3 * visualize.GAP, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:64, :64], (np.repeat(np.repeat(parts["original"][0], 2, 0), 2, 1) * 255
                                                   + 0.5).astype(np.uint8))


def test_columns_are_titled(mae):
    config, objective, params, images = mae
    parts = jax.device_get(visualize.predict(objective, params, images, jax.random.PRNGKey(1)))
    picture, body = visualize.assemble(parts), visualize.assemble(parts, header=False)
    assert picture.shape[1:] == body.shape[1:] and picture.shape[0] > body.shape[0]
    np.testing.assert_array_equal(picture[-body.shape[0]:], body)
    header = picture[:-body.shape[0]]
    cell = body.shape[1] // 4 - visualize.GAP
    for column in range(4):  # dark text over every column, white around it
        span = header[:, column * (cell + visualize.GAP):column * (cell + visualize.GAP) + cell]
        assert (span < 100).any() and (span == 255).mean() > 0.5, column
    assert [visualize.COLUMNS[k] for k in ("original", "masked", "reconstruction", "pasted")] == \
        ["original", "masked", "reconstruction", "reconstruction + visible"]
    long = visualize._header(["reconstruction + visible"], [40])  # wrapped to a narrow column
    assert long.shape[0] > visualize._header(["original"], [40]).shape[0]


class Labelled:
    def __init__(self, labels):
        self._labels = np.asarray(labels)

    def __len__(self):
        return len(self._labels)

    def labels(self, indices):
        return self._labels[np.asarray(indices)]


def test_samples_spread_over_the_classes():
    # a folder's order: sorted by class, 100 images each
    sorted_by_class = Labelled(np.repeat(np.arange(20), 100))
    chosen = visualize.sample_indices(sorted_by_class, 8)
    labels = sorted_by_class.labels(chosen)
    assert len(set(labels)) == 8 and labels.min() == 0 and labels.max() == 19
    assert (chosen == visualize.sample_indices(sorted_by_class, 8)).all()  # deterministic
    # fewer classes than rows: every class, then every class's second, ...
    three = Labelled(np.repeat(np.arange(3), 50))
    assert sorted(np.bincount(three.labels(visualize.sample_indices(three, 8)))) == [2, 3, 3]
    # shuffled labels: distinct classes, in class order
    shuffled = Labelled(np.random.default_rng(0).integers(0, 10, 60000))
    labels = shuffled.labels(visualize.sample_indices(shuffled, 8))
    assert len(set(labels)) == 8 and (np.diff(labels) > 0).all()

    class Unlabelled:
        def __len__(self):
            return 1000

    assert visualize.sample_indices(Unlabelled(), 4).tolist() == [0, 333, 666, 999]  # spread over the dataset
    assert visualize.sample_indices(Labelled([0, 1, 2]), 8).tolist() == [0, 1, 2]  # a tiny dataset: all of it


def test_smoke_samples_come_from_every_class(mae):
    from mdistill import data

    config = mae[0]
    source = data.build_source(config)
    labels = source.labels(visualize.sample_indices(source, visualize.ROWS))
    assert len(set(labels.tolist())) == visualize.ROWS
    images = visualize.samples(config)
    assert images.shape == (visualize.ROWS, 32, 32, 3) and images.dtype == np.uint8


def test_clips_are_drawn_as_frame_strips():
    config = apply_smoke(amd_video.get_config())
    objective = build_objective(config)
    clips = visualize.samples(config)
    assert clips.shape == (visualize.CLIP_ROWS, 4, 32, 32, 3)
    params = objective.init(jax.random.PRNGKey(0), clips)
    rng = jax.random.PRNGKey(3)
    parts = jax.device_get(visualize.predict(objective, params, clips, rng))
    assert set(parts) == {"original", "masked", "reconstruction", "pasted", "masks"}
    assert all(v.shape == clips.shape for v in parts.values())
    np.testing.assert_allclose(parts["original"], clips / 255.0, atol=1e-5)
    # tube masking: a hidden token hides its patch in every frame of its tubelet
    hidden = np.asarray(objective.sample_masks(rng, len(clips)).student.mask, bool)
    tubes = np.asarray(patchify(parts["masked"], objective.spec.patch_size, objective.spec.layout.tubelet))
    original = np.asarray(patchify(parts["original"], objective.spec.patch_size, objective.spec.layout.tubelet))
    np.testing.assert_allclose(tubes[hidden], original[hidden] * visualize.HIDDEN_SHADE, atol=1e-5)
    np.testing.assert_allclose(tubes[~hidden], original[~hidden], atol=1e-6)

    body = visualize.assemble(parts, header=False)
    cell = 96  # 32 px frames enlarged 3 times towards visualize.CELL
    strip = 4 * cell + 3  # 4 frames, 1 pixel apart
    assert body.shape == (4 * cell + 3, 4 * strip + 3 * visualize.GAP, 3)  # original, masked, reconstruction, masks
    frame = (np.repeat(np.repeat(clips[1, 2] / 255.0, 3, 0), 3, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_allclose(body[cell + 1:2 * cell + 1, 2 * (cell + 1):2 * (cell + 1) + cell], frame, atol=1)
    assert visualize.frame_choice(16).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]


def test_every_pretraining_config_draws_by_default():
    from mdistill.objectives import OBJECTIVES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checked = []
    for path in sorted(glob.glob(os.path.join(root, "configs", "*.py"))):
        name = os.path.basename(path)[:-3]
        module = importlib.import_module(f"configs.{name}")
        if name == "__init__" or not hasattr(module, "get_config"):
            continue
        config, smoke = module.get_config(), module.get_config("smoke")
        if name.startswith(("finetune_", "linprobe_")) or config.method not in OBJECTIVES:  # evaluations: no drawing
            continue
        if config.method == "tinymim":  # no decoder, no reconstruction: validation refuses pictures
            assert config.visualize_every == smoke.visualize_every == 0, name
            continue
        assert config.visualize_every > 0, name
        assert config.total_steps < 0 or config.visualize_every <= config.total_steps, name
        assert smoke.visualize_every == smoke.total_steps, name  # smoke runs: one picture, at the end
        checked.append(name)
    assert {"mae_vitb", "dmae_vitb", "amd_vitb", "amd_video", "moving_fmnist", "fmnist_dmae"} <= set(checked)


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
    picture = np.asarray(Image.open(path))
    cell = 96  # 32 px images enlarged 3 times towards visualize.CELL
    assert picture.shape[1] == 4 * cell + 3 * visualize.GAP and picture.shape[0] > 2 * cell + 1
    assert board.calls == [("reconstructions", picture.shape, 5, "HWC")]


def losses(workdir):
    return [{k: v for k, v in json.loads(line).items() if k.endswith("loss") or k == "grad_norm"}
            for line in open(workdir / "metrics.jsonl")]


def test_training_writes_grids_every_visualize_every_steps_and_is_unchanged(tmp_path, mae):
    from mdistill.train import train

    config = mae[0].copy_and_resolve_references()
    config.update(total_steps=3, visualize_every=2, log_every=1, checkpoint_every=3)
    train(config, str(tmp_path / "drawn"))
    assert sorted(os.listdir(tmp_path / "drawn" / "visualizations")) == ["recon_000002.png", "recon_000003.png"]
    config.visualize_every = 0
    train(config, str(tmp_path / "plain"))
    assert not os.path.exists(tmp_path / "plain" / "visualizations")
    assert losses(tmp_path / "drawn") == losses(tmp_path / "plain")  # bitwise: JSON floats round-trip


def test_smoke_video_run_draws_at_its_end(tmp_path):
    from mdistill.train import train

    config = apply_smoke(amd_video.get_config())  # synthetic 4-frame clips
    config.update(total_steps=2, log_every=2, checkpoint_every=2)
    assert config.visualize_every == 40  # the smoke default: at the end, here step 2
    train(config, str(tmp_path))
    assert os.listdir(tmp_path / "visualizations") == ["recon_000002.png"]
    picture = np.asarray(Image.open(tmp_path / "visualizations" / "recon_000002.png"))
    assert picture.shape[1] == 4 * (4 * 96 + 3) + 3 * visualize.GAP  # 4 strips of 4 frames
