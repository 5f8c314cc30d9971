"""The linear probe on clips (mdistill/evaluate/linprobe.py): a tiny video encoder pre-trained
on synthetic drifting gratings, probed on gratings and on real Moving Fashion-MNIST clip
files, with k-NN and both baselines from the same features; what it refuses on clips."""

import json
import os

import jax
import pytest

from mdistill.data.fashion_mnist import DEFAULT_DIR

KEYS = {"top1", "top5", "train_loss", "epochs", "steps", "train_seconds", "pool", "train_examples", "test_examples",
        "knn_top1", "knn_top5", "knn_pool", "knn_k"}


def probe_config(**fields):
    """configs/linprobe_fmnist.py:smoke, as a user would start: its pool is 'cls'."""
    from configs.linprobe_fmnist import get_config

    c = get_config("smoke")
    c.update(knn=True, baselines=True, **fields)
    c.num_epochs, c.warmup_epochs = 20.0, 1.0
    c.optim.blr = 6.4  # lr 1.6 at batch 64: LARS steps are small, 40 steps need a large lr
    c.eval.knn_k = 5
    return c


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A VideoMAE mu/4 pre-trained 2 steps on 4-frame synthetic clips of 32 px."""
    from mdistill import sharding, train
    from mdistill.config import apply_smoke, base_config

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.update(total_steps=2, warmup_steps=1, log_every=1)
    path = str(tmp_path_factory.mktemp("video_run") / "run")
    train.train(c, path, sharding.make_mesh(jax.devices()[:1]))
    return path


def test_on_clips_the_pool_is_the_token_average_and_augmentation_is_refused():
    from mdistill.config import ConfigError
    from mdistill.evaluate import linprobe

    c = probe_config()
    c.num_frames = 4
    assert c.eval.pool == "cls"
    linprobe.for_clips(c)
    assert (c.eval.pool, c.eval.knn_pool) == ("avg", "avg")
    with pytest.raises(ConfigError, match=r"--config.eval.pool='cls' disagrees with a video ViT"):
        linprobe.for_clips(probe_config(num_frames=4), explicit={"eval.pool"})
    c = probe_config(num_frames=4)
    c.data.augment = "mae"
    with pytest.raises(ConfigError, match=r"config.data.augment='mae': the linear probe on clips .* "
                                          r"--config.data.augment=none"):
        linprobe.for_clips(c)


def test_a_random_video_encoder_with_augmentation_is_refused_before_any_feature(tmp_path):
    from mdistill import sharding
    from mdistill.config import ConfigError, apply_smoke, base_config
    from mdistill.evaluate import linprobe

    c = probe_config()
    c.num_frames = 16
    apply_smoke(c)  # 4 frames
    c.data.augment = "flip"
    with pytest.raises(ConfigError, match="augment='flip'"):
        linprobe.run(c, str(tmp_path / "lp"), sharding.make_mesh(jax.devices()[:1]))
    assert not os.path.exists(tmp_path / "lp" / "linprobe.json")


@pytest.mark.slow
def test_a_video_encoder_is_probed_on_synthetic_clips_beside_both_baselines(video_run, tmp_path):
    from mdistill import sharding
    from mdistill.evaluate import linprobe

    c = probe_config(pretrained=video_run, train_examples=256, test_examples=64, batch_size=64)
    result = linprobe.run(c, str(tmp_path / "lp"), sharding.make_mesh(jax.devices()[:1]))
    assert KEYS <= set(result) and result["pool"] == "avg" and result["data"]["num_classes"] == 10
    assert set(result["baselines"]) == {"pixels", "random"}
    for r in (result, *result["baselines"].values()):
        assert KEYS <= set(r) and r["steps"] == 80 and (r["train_examples"], r["test_examples"]) == (256, 64)
    # 10 drifting gratings: far above chance (10%) by k-NN; the probe of 80 steps above it too
    # (when written: probe 36%, k-NN 89%; pixels 41 / 100%, random encoder 38 / 78%)
    assert result["knn_top1"] > 50 and result["top1"] > 20
    saved = json.load(open(tmp_path / "lp" / "linprobe.json"))
    assert saved["top1"] == result["top1"] and saved["baselines"]["random"]["pool"] == "avg"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(DEFAULT_DIR, "train-labels-idx1-ubyte.gz"))
                    and not os.path.exists(os.path.join(DEFAULT_DIR, "train-labels-idx1-ubyte")),
                    reason="Fashion-MNIST IDX files not installed (Debian's dataset-fashion-mnist)")
def test_a_video_encoder_is_probed_on_moving_fashion_mnist_files(video_run, tmp_path):
    """Real .mp4 clips (scripts/make_moving_fmnist.py, 4 directions of motion, 8 frames of 32 px,
    read at sampling rate 2: the run's 4 frames), through the video pipeline's test sampling;
    the class count is the data's (4), not the pre-training data's (10)."""
    pytest.importorskip("av")
    from mdistill import sharding
    from mdistill.evaluate import linprobe
    from scripts import make_moving_fmnist

    out = str(tmp_path / "mf")
    make_moving_fmnist.build(out, train_clips=32, test_clips=16, canvas=32, frames=8, directions=4, speed=0.5)
    c = probe_config(pretrained=video_run, batch_size=16)
    c.data.update(source="video_folder", path=os.path.join(out, "direction"), sampling_rate=2)
    c.eval.update(train_split="train", test_split="test", batch_size=16)
    # named as the command line would: other data than the run's (mdistill.resolve)
    explicit = {"data.source", "data.path", "data.sampling_rate", "eval.train_split", "eval.test_split"}
    result = linprobe.run(c, str(tmp_path / "lp"), sharding.make_mesh(jax.devices()[:1]), explicit)
    assert result["data"]["num_classes"] == 4 and result["data"]["source"] == "video_folder"
    assert (result["train_examples"], result["test_examples"]) == (32, 16) and result["pool"] == "avg"
    assert {"top1", "knn_top1"} <= set(result) and "top5" not in result  # 4 classes: no top-5
    assert set(result["baselines"]) == {"pixels", "random"}
    for r in (result, *result["baselines"].values()):
        assert 0.0 <= r["top1"] <= 100.0 and 0.0 <= r["knn_top1"] <= 100.0
