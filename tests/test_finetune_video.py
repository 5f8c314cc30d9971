"""configs/finetune_video.py: AMD's fine-tuning scripts as mdistill settings (the release's
peak lr, videos per step and test views), SSv2's segment test, and its `:smoke` run."""

import importlib.util
import os

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (variant, dataset) -> (epochs, peak lr, videos per step, classes, flip, test views): the
# release's scripts/finetune/*_ft.sh, lr = --lr x GPUs x 16 / 256
RELEASE = {("S/16", "k400"): (150, 1e-3 * 2, 512, 400, True, 15), ("B/16", "k400"): (90, 7e-4 * 2, 512, 400, True, 15),
           ("S/16", "ssv2"): (40, 1e-3, 256, 174, False, 6), ("B/16", "ssv2"): (30, 5e-4, 256, 174, False, 6)}


def load(arg=None):
    spec = importlib.util.spec_from_file_location("finetune_video", os.path.join(ROOT, "configs", "finetune_video.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("variant,dataset", list(RELEASE))
def test_the_config_trains_as_the_release(variant, dataset):
    from mdistill import data, optim

    epochs, lr, videos, classes, flip, views = RELEASE[(variant, dataset)]
    c = load(f"variant={variant},dataset={dataset}")
    assert c.student.variant == variant and c.num_classes == classes and c.num_epochs == epochs
    assert optim.peak_learning_rate(c.optim, c.batch_size) == pytest.approx(lr)
    assert data.records_per_step(c) == videos and c.batch_size == 2 * videos  # 2 clips per video read
    assert c.optim.min_lr == pytest.approx(1e-6 * videos / 256)
    assert c.finetune.flip == flip and c.finetune.randaug_layers == 0
    assert c.data.test_num_segment * c.data.test_num_crop == views
    assert c.data.temporal == ("segments" if dataset == "ssv2" else "finetune")


def test_an_unknown_variant_or_dataset_is_refused():
    with pytest.raises(ValueError, match="dataset='ucf101'"):
        load("dataset=ucf101")
    with pytest.raises(ValueError, match="variant='L/16'"):
        load("variant=L/16")


def test_ssv2_tests_each_video_at_its_segment_starts_and_middles(tmp_path):
    """The SSv2 config trains on one frame per segment, so its test reads SSv2's two segment
    views (not Kinetics' dense windows), each in 3 crops."""
    pytest.importorskip("av")
    from mdistill import sharding
    from mdistill.data.video import write_video
    from mdistill.evaluate import finetune

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(tmp_path / split / label)
            for i in range(2):
                write_video(str(tmp_path / split / label / f"{i}.mp4"), rng.integers(0, 255, (12, 32, 40, 3), np.uint8))
    c = load("dataset=ssv2,smoke")
    c.data.update(source="video_folder", path=str(tmp_path), test_num_segment=2, test_num_crop=3, num_sample=1)
    c.update(batch_size=4, num_classes=2)
    tuner = finetune.FineTuner(c, sharding.make_mesh(jax.devices()[:1]))
    t = tuner.test_transform()
    assert t.clips.temporal == "segments" and t.sample_shape == (6, 4, 32, 32, 3)
    assert t(str(tmp_path / "val" / "a" / "0.mp4")).shape == (6, 4, 32, 32, 3)


@pytest.mark.slow
def test_the_smoke_config_fine_tunes_from_the_command_line(tmp_path):
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "mdistill.evaluate.finetune", "--config=configs/finetune_video.py:smoke",
               f"--workdir={tmp_path}"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.load(open(tmp_path / "finetune.json"))
    # drifting gratings, 10 classes: 30 steps from scratch learn something (38.7% when written)
    assert result["steps"] == 30 and result["top1"] > result["initial_top1"] + 10
