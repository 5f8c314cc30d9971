"""TFDS video datasets (config.data.source='tfds', config.num_frames > 1) read without TensorFlow
through the video files' sampling and crops: tests/fixtures/tfds_video holds `moving_squares`, a
real TFDS ArrayRecord build (scripts/make_tfds_video_fixture.py; UCF101's features `video` and
`label`, 16 PNG frames of 32x32 per clip, a square moving right, left or down; 12 train and 6
test clips), so these tests need no TensorFlow."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import xla_flags

from mdistill.data.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "fixtures", "tfds_video")
NAME, CLASSES, FRAMES, SIDE = "moving_squares", ["right", "left", "down"], 16, 32
TFDS = {"data.source": "tfds", "data.name": NAME, "data.data_dir": DATA_DIR}


def video_config(frames=4):
    """The video smoke config (4-frame clips of 32 px, 2-frame tubelets) on the fixture."""
    from mdistill.config import apply_smoke, base_config

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.num_frames = frames
    c.data.update(source="tfds", name=NAME, data_dir=DATA_DIR, split="train", sampling_rate=2, flip=False)
    c.eval.update(train_split="train", test_split="test")
    return c


MOVES = {"right": (2, 1), "left": (-2, 1), "down": (2, 0)}  # (pixels, axis of a frame) per frame

def test_the_fixture_reads_as_labelled_videos_of_its_declared_shape():
    """Every record: 16 RGB frames of 32x32, the ClassLabel's names and count, balanced labels,
    and the square moving the way its label says (so labels and frames belong together)."""
    from mdistill.data.tfds_video import TFDSVideoSource

    train = TFDSVideoSource(NAME, "train", data_dir=DATA_DIR)
    test = TFDSVideoSource(NAME, "test", data_dir=DATA_DIR)
    assert (len(train), len(test)) == (12, 6)
    assert train.classes == CLASSES and train.num_classes == 3
    for source in (train, test):
        labels = source.labels(np.arange(len(source)))
        assert np.bincount(labels, minlength=3).tolist() == [len(source) // 3] * 3
        for i, label in enumerate(labels):
            video = source.raw(i)
            frames = video.frames(np.arange(video.count()))
            assert video.count() == FRAMES and frames.shape == (FRAMES, SIDE, SIDE, 3) and frames.dtype == np.uint8
            # each frame is the one before shifted 2 px (wrapping) the way the label says, and no other way
            moved = [name for name, (shift, axis) in MOVES.items()
                     if np.array_equal(frames[1:], np.roll(frames[:-1], shift, axis=axis + 1))]
            assert moved == [CLASSES[label]], (i, moved)


def test_decoded_frames_follow_the_sampled_indices():
    """Only the asked frames, in the asked order (repeats too), as a file's read_frames."""
    from mdistill.data.tfds_video import TFDSVideoSource

    video = TFDSVideoSource(NAME, "train", data_dir=DATA_DIR).raw(0)
    every = video.frames(np.arange(FRAMES))
    np.testing.assert_array_equal(video.frames([5, 1, 5, 15]), every[[5, 1, 5, 15]])
    with pytest.raises(ValueError, match=r"frame indices must lie in \[0, 16\)"):
        video.frames([16])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_frames_encoded_as_jpeg_or_png_decode_as_pil_does(fmt):
    """UCF101's build stores JPEG frames, the fixture PNG: both come back as PIL decodes them."""
    import io

    from PIL import Image

    from mdistill.data.tfds_video import EncodedVideo

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 40, 3), np.uint8), rng.integers(0, 256, (24, 40), np.uint8)]
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    expected = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    got = EncodedVideo(encoded, "clip").frames([1, 0])
    assert got.shape == (2, 24, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack(expected[::-1]))
    if fmt == "PNG":  # lossless: the drawn pixels themselves
        np.testing.assert_array_equal(got[1], frames[0])


def test_clips_go_through_videomaes_sampling_and_crops():
    """The pipeline's transforms (mdistill.data.transforms.from_config) sample and crop TFDS
    records as they do video files: training clips, their repeats, the evaluation view and
    the multi-view test; the evaluation view is the file path's EvalClips of the same frames."""
    from mdistill.data import build_source, transforms
    from mdistill.data.video import EvalClips

    c = video_config()
    c.data.num_sample = 2
    source = build_source(c)
    rng = np.random.default_rng(0)
    train = transforms.from_config(c, train=True)
    assert train(source.raw(0), rng).shape == (2, 4, SIDE, SIDE, 3)
    view = transforms.from_config(c, train=False)(source.raw(3))
    assert view.shape == (4, SIDE, SIDE, 3)
    frames = source.raw(3).frames(np.arange(FRAMES))
    # dense test window at sampling_rate 2: frames 0, 2, 4, 6 (at 32 px the crop is the frame)
    np.testing.assert_array_equal(view, frames[[0, 2, 4, 6]])
    np.testing.assert_array_equal(source.clips([3])[0, 0], view)
    multi = EvalClips(SIDE, 4, 2, test_num_segment=2, test_num_crop=3)(source.raw(3))
    assert multi.shape == (6, 4, SIDE, SIDE, 3)


def test_the_source_pickles_for_the_pipelines_worker_processes():
    import pickle

    from mdistill.data.tfds_video import TFDSVideoSource

    source = TFDSVideoSource(NAME, "test", data_dir=DATA_DIR)
    source.raw(4)  # a parsed record is cached; it does not travel
    copy = pickle.loads(pickle.dumps(source))
    assert copy._last == (-1, None) and copy.label(4) == source.label(4)
    np.testing.assert_array_equal(copy.raw(4).frames([0, 9]), source.raw(4).frames([0, 9]))


def test_a_build_with_configs_is_found_as_tfds_build_writes_it(tmp_path):
    """`tfds build ucf101` writes ucf101/<config>/<version>: data.name without the config
    finds a single built config, and names them when there are several; a version is taken
    as asked."""
    import shutil

    from mdistill.data.tfds_video import TFDSVideoSource

    shutil.copytree(os.path.join(DATA_DIR, NAME, "1.0.0"), tmp_path / NAME / "small" / "1.0.0")
    assert len(TFDSVideoSource(NAME, "test", data_dir=str(tmp_path))) == 6
    assert len(TFDSVideoSource(f"{NAME}/small:1.0.0", "test", data_dir=str(tmp_path))) == 6
    with pytest.raises(FileNotFoundError, match=r"moving_squares:2.0.0' is not prepared"):
        TFDSVideoSource(f"{NAME}:2.0.0", "test", data_dir=str(tmp_path))
    shutil.copytree(tmp_path / NAME / "small", tmp_path / NAME / "large")
    with pytest.raises(FileNotFoundError, match=r"several configs \['large', 'small'\]: name one, e.g. "
                                                r"config.data.name='moving_squares/large'"):
        TFDSVideoSource(NAME, "test", data_dir=str(tmp_path))


def test_split_specs_select_records_as_tfds_does():
    from mdistill.data.tfds_video import TFDSVideoSource

    train = TFDSVideoSource(NAME, "train", data_dir=DATA_DIR)
    head = TFDSVideoSource(NAME, "train[:50%]", data_dir=DATA_DIR)
    both = TFDSVideoSource(NAME, "train[2:4]+test", data_dir=DATA_DIR)
    test = TFDSVideoSource(NAME, "test", data_dir=DATA_DIR)
    assert len(head) == 6 and len(both) == 8
    np.testing.assert_array_equal(head.labels(range(6)), train.labels(range(6)))
    np.testing.assert_array_equal(both.labels(range(8)), np.r_[train.labels([2, 3]), test.labels(range(6))])
    np.testing.assert_array_equal(both.raw(2).frames([0]), test.raw(0).frames([0]))


def test_wrong_requests_fail_in_one_line_naming_the_field():
    from mdistill.data import build_source
    from mdistill.data.tfds_source import TFDSSource
    from mdistill.data.tfds_video import EncodedVideo, TFDSVideoSource

    features = os.path.join(DATA_DIR, NAME, "1.0.0", "features.json")
    with pytest.raises(DataError) as e:  # no such feature
        TFDSVideoSource(NAME, "train", video_key="frames", data_dir=DATA_DIR)
    assert str(e.value) == (f"{features}: config.data.video_key='frames' is not a Video feature of TFDS dataset "
                            f"'{NAME}' (its features: label (ClassLabel), video (Video)); set "
                            "config.data.video_key='video'")
    with pytest.raises(DataError, match="config.data.video_key='label' is not a Video feature"):
        TFDSVideoSource(NAME, "train", video_key="label", data_dir=DATA_DIR)
    c = video_config(frames=1)  # images asked from a video dataset
    with pytest.raises(DataError) as e:
        build_source(c)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{features}: TFDS dataset '{NAME}' holds videos")
    assert "config.num_frames=1 asks for images: set --config.num_frames" in str(e.value)
    with pytest.raises(DataError, match="holds videos"):
        TFDSSource(NAME, "train", 32, 3, DATA_DIR)
    with pytest.raises(FileNotFoundError, match=r"has no split 'validation'.*it has \['test', 'train'\]"):
        TFDSVideoSource(NAME, "validation", data_dir=DATA_DIR)
    with pytest.raises(FileNotFoundError, match=r"'ucf101' is not prepared in .*tfds build ucf101 .*array_record"):
        TFDSVideoSource("ucf101", "train", data_dir=DATA_DIR)
    with pytest.raises(DataError, match=r"clip 7: the video has 10 frames, its Video feature declares 16"):
        EncodedVideo([b""] * 10, "clip 7", length=16)
    with pytest.raises(DataError, match="clip 8: the video has no frames"):
        EncodedVideo([], "clip 8")
    with pytest.raises(DataError, match=r"clip 9: cannot decode frame 1 \("):
        EncodedVideo([b"\x89PNG", b"broken"], "clip 9").frames([1])


def test_an_image_tfds_dataset_asked_for_clips_is_refused(tmp_path):
    """A build without a Video feature (here the fixture's features.json rewritten as an Image
    dataset's) read with num_frames > 1: one line naming the file and what to set."""
    import shutil

    build = tmp_path / NAME / "1.0.0"
    shutil.copytree(os.path.join(DATA_DIR, NAME, "1.0.0"), build)
    features = json.loads((build / "features.json").read_text())
    video = features["featuresDict"]["features"].pop("video")
    features["featuresDict"]["features"]["image"] = {
        "pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
        "image": {"shape": {"dimensions": video["video"]["shape"]["dimensions"][1:]}, "dtype": "uint8"}}
    (build / "features.json").write_text(json.dumps(features))
    from mdistill.data.tfds_video import TFDSVideoSource

    with pytest.raises(DataError) as e:
        TFDSVideoSource(NAME, "train", data_dir=str(tmp_path))
    assert str(e.value) == (f"{build / 'features.json'}: config.data.video_key='video' is not a Video feature of "
                            f"TFDS dataset '{NAME}' (its features: image (Image), label (ClassLabel)); it holds "
                            "images: set config.num_frames=1 (and an image model) to read them")


@pytest.mark.slow  # a subprocess
def test_prepare_still_refuses_clips(tmp_path):
    """mdistill.data.prepare writes images: a TFDS video run is refused by name, not prepared."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "mdistill.data.prepare", "--config=configs/mae_video_vitb.py:smoke",
                          *(f"--config.{k}={v}" for k, v in TFDS.items()), f"--out={tmp_path / 'p'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and not (tmp_path / "p").exists()
    assert out.stderr.strip().splitlines()[-1] == (
        "error: config.data.source='tfds' with config.num_frames=4 (clips) cannot be prepared: expected an image "
        "source (folder, tfds with num_frames=1, fashion_mnist, synthetic)")


# ---- pre-training, k-NN and fine-tuning from the fixture ----

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """configs/mae_video_vitb.py:smoke pointed at the fixture from the command line, 3 steps."""
    run = tmp_path_factory.mktemp("tfds_video") / "run"
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "mdistill.main", "--config=configs/mae_video_vitb.py:smoke",
                          f"--workdir={run}", *(f"--config.{k}={v}" for k, v in TFDS.items()),
                          "--config.data.sampling_rate=2", "--config.batch_size=4", "--config.total_steps=3",
                          "--config.warmup_steps=1", "--config.log_every=1", "--config.checkpoint_every=3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.mark.slow
def test_video_pretraining_reads_the_tfds_build(pretrained):
    records = [json.loads(line) for line in open(pretrained / "metrics.jsonl")]
    last = [r for r in records if "loss" in r][-1]
    assert last["step"] == 3 and np.isfinite(last["loss"]) and last["loss"] > 0
    assert os.listdir(pretrained / "visualizations")  # the reconstruction grid read clips from the build


@pytest.mark.slow
def test_knn_command_on_the_tfds_build_names_its_classes(pretrained, tmp_path):
    """python -m mdistill.evaluate.knn on the run: its data fields (the fixture) taken from the
    run, the splits from the command line."""
    overrides = {"eval.train_split": "train", "eval.test_split": "test", "eval.knn_train_examples": -1,
                 "eval.knn_test_examples": -1, "eval.batch_size": 6, "eval.knn_k": 3}
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "mdistill.evaluate.knn", f"--workdir={tmp_path / 'knn'}",
                          f"--checkpoint={pretrained}", *(f"--config.{k}={v}" for k, v in overrides.items())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(tmp_path / "knn" / "knn.json"))
    assert 0.0 <= result["knn_top1"] <= 100.0 and (result["train_examples"], result["test_examples"]) == (12, 6)
    assert result["data"]["classes"] == CLASSES and result["data"]["num_classes"] == 3
    assert result["data"]["source"] == "tfds" and result["data"]["name"] == NAME


@pytest.mark.slow
def test_fine_tuning_on_the_tfds_build_with_the_multi_view_test(pretrained, tmp_path):
    """VideoMAE's fine-tuning sampling on the train split, 2 windows x 3 crops per test video;
    the classifier's 3 classes come from the dataset's ClassLabel."""
    from mdistill import sharding
    from mdistill.config import apply_smoke, base_config
    from mdistill.evaluate import finetune

    ft = finetune.finetune_config(apply_smoke(base_config()))
    ft.num_frames, ft.tubelet_size = 4, 2
    ft.data.update(source="tfds", name=NAME, data_dir=DATA_DIR, sampling_rate=2, flip=False, size=0,
                   temporal="finetune", test_num_segment=2, test_num_crop=3, augment="none")
    ft.update(pretrained=str(pretrained), batch_size=4, total_steps=2, warmup_steps=0, eval_every=2, log_every=1)
    ft.eval.update(train_split="train", test_split="test", batch_size=6)
    ft.finetune.update(randaug_layers=0)
    explicit = {"data.source", "data.name", "data.data_dir", "data.sampling_rate", "eval.train_split",
                "eval.test_split"}
    mesh = sharding.make_mesh(jax.devices()[:1])
    assert finetune.FineTuner(ft, mesh, explicit).test_transform().sample_shape == (6, 4, SIDE, SIDE, 3)
    result = finetune.run(ft, str(tmp_path / "ft"), mesh, explicit)
    assert 0.0 <= result["top1"] <= 100.0 and result["steps"] == 2 and result["num_classes"] == 3
    assert result["data"]["classes"] == CLASSES and result["data"]["test"]["examples"] == 6


@pytest.mark.slow
def test_linear_probe_on_the_tfds_build(pretrained, tmp_path):
    """The probe's model and frames come from the run (config.pretrained), its data from the
    command line's fields, its 3 classes from the dataset."""
    from mdistill import sharding
    from mdistill.config import apply_smoke, base_config
    from mdistill.evaluate import linprobe

    c = linprobe.linprobe_config(apply_smoke(base_config()))
    c.data.update(source="tfds", name=NAME, data_dir=DATA_DIR, sampling_rate=2, flip=False, size=0)
    c.update(pretrained=str(pretrained), batch_size=4, total_steps=2, warmup_steps=0, log_every=1,
             train_examples=-1, test_examples=-1)
    c.eval.update(train_split="train", test_split="test", pool="avg", batch_size=6)
    explicit = {"data.source", "data.name", "data.data_dir", "data.sampling_rate", "eval.train_split",
                "eval.test_split"}
    result = linprobe.run(c, str(tmp_path / "probe"), sharding.make_mesh(jax.devices()[:1]), explicit)
    assert 0.0 <= result["top1"] <= 100.0 and result["data"]["classes"] == CLASSES
    assert result["data"]["num_classes"] == 3 and result["data"]["train"]["examples"] == 12
