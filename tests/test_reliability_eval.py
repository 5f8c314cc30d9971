"""Issue 32, the commands beyond pre-training guard what they write as pre-training does
(cases 1-6, 13, 16): a fine-tuning NaN never saved (real process, one line); export refuses
an existing file unless --overwrite, survives a full disk, refuses an unwritable place before
reading; the evaluators check the workdir before their work and hold it (the workdir lock);
results written whole or not at all; a video model on images (or the reverse) refused in one
line."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import xla_flags

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.evaluate import common, finetune, knn, linprobe
from mdistill.config.validation import ConfigError
from mdistill.weights import checkpoint, convert
from mdistill.weights.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_device():
    return sharding.make_mesh(jax.devices()[:1])


def pretrain(workdir, frames=1):
    """A 1-step MAE smoke run (32 px; with frames > 1 a video ViT on synthetic clips)."""
    from mdistill.train import train

    c = base_config()
    c.method, c.num_frames = "mae", frames
    apply_smoke(c)
    c.update(total_steps=1, warmup_steps=0, log_every=1)
    train(c, str(workdir), one_device())
    return str(workdir)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("image_run"))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("video_run"), frames=16)


# ---- 1: a fine-tuning NaN ------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_nan_is_never_saved_and_is_one_line_naming_the_kept_checkpoint(tmp_path):
    """The issue's command: lr 1e2 diverges between checkpoints (every 4 steps) while logs and
    evaluations (every 100) never come; fine-tuning keeps one checkpoint."""
    workdir = tmp_path / "ft"
    out = subprocess.run(
        [sys.executable, "-m", "mdistill.evaluate.finetune", "--config=configs/finetune_fmnist.py:smoke",
         "--config.optim.lr=1e2", "--config.warmup_steps=30", "--config.total_steps=30",
         "--config.checkpoint_every=4", "--config.log_every=100", "--config.eval_every=100", f"--workdir={workdir}"],
        cwd=ROOT, env=dict(os.environ, XLA_FLAGS=xla_flags(2)), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    [line] = error_lines(out.stderr)
    kept = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert len(kept) == 1, kept
    assert line.startswith("error: finetune: non-finite ") and f"checkpoints/{kept[0]} is kept" in line, line
    failed = int(line.split(" at step ")[1].split()[0])
    assert kept[0] < failed <= kept[0] + 4  # checked before the save that followed the last good one
    params, meta = checkpoint.load_params(str(workdir / "checkpoints"), None)
    assert meta["step"] == kept[0]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# ---- 2, 3, 13: export -----------------------------------------------------------------------------

def export(src, out, *extra):
    convert.main(["--export", "--input", src, "--output", str(out), *extra])


@pytest.mark.slow
def test_export_refuses_an_existing_file_unless_overwrite(image_run, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "student.safetensors"
    out.write_bytes(b"somebody's weights")
    with pytest.raises(SystemExit) as e:
        export(image_run, out)
    assert str(e.value.code).startswith(f"error: --output {str(out)!r} already exists: pass --overwrite")
    assert out.read_bytes() == b"somebody's weights"
    export(image_run, out, "--overwrite")
    assert "patch_embed.proj.weight" in load_file(str(out))
    assert os.listdir(tmp_path) == ["student.safetensors"]  # no temporary file left beside it
    assert os.stat(out).st_mode & 0o444 == 0o444 & ~current_umask()  # readable as any file the user writes


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_export_over_an_existing_file_on_a_full_disk_leaves_it_whole(image_run, tmp_path, monkeypatch, suffix):
    import safetensors.numpy

    torch = pytest.importorskip("torch") if suffix == "pth" else None  # .pth files are written by torch
    out = tmp_path / f"student.{suffix}"
    export(image_run, out)
    before = out.read_bytes()

    def full_disk(_, path, *args, **kwargs):  # some bytes get out, then the disk is full
        with open(path, "wb") as f:
            f.write(before[:100])
        raise OSError(28, "No space left on device")

    if suffix == "safetensors":
        monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    else:
        monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as e:
        export(image_run, out, "--overwrite", "--num_classes=3")
    message = str(e.value.code)
    assert message.startswith(f"error: could not write {out}") and "No space left on device" in message
    assert "the existing file is untouched" in message and "\n" not in message
    assert out.read_bytes() == before and os.listdir(tmp_path) == [out.name]


def test_export_to_an_unwritable_place_is_one_line_before_reading(image_run, monkeypatch):
    from mdistill.weights import loader

    target = "/proc/mdistill-export.safetensors"  # /proc takes no new files, even from root
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")

    def no_reading(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output was checked")

    monkeypatch.setattr(loader, "load", no_reading)
    with pytest.raises(SystemExit) as e:
        export(image_run, target)
    assert str(e.value.code).startswith(f"error: --output {target!r}: cannot write in '/proc'")


# ---- 4, 6: k-NN into a workdir ---------------------------------------------------------------------

KNN = {"eval.knn_train_examples": 32, "eval.knn_test_examples": 16, "eval.batch_size": 16, "eval.knn_k": 5}


def test_knn_into_an_unwritable_workdir_is_refused_before_the_evaluation(image_run, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(knn.KNNMonitor, "run", lambda self, params: ran.append(1) or {"knn_top1": 50.0})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="is not writable"):
        knn.evaluate_checkpoint(image_run, str(blocker / "knn"), KNN, one_device())
    assert ran == []


def test_knn_on_a_held_workdir_is_refused_and_writes_nothing(image_run, tmp_path):
    """Two k-NN runs into one workdir: the second stops at once, naming the holder (the lock
    is the kernel's, so a second process meets it as this second call does)."""
    workdir = tmp_path / "knn"
    workdir.mkdir()
    with checkpoint.workdir_lock(str(workdir)):
        with pytest.raises(CheckpointError, match=f"workdir {workdir} is in use by pid {os.getpid()} "):
            knn.evaluate_checkpoint(image_run, str(workdir), KNN, one_device())
    assert not (workdir / "knn.json").exists()
    # free again, it runs
    knn.evaluate_checkpoint(image_run, str(workdir), KNN, one_device())
    assert 0.0 <= json.loads((workdir / "knn.json").read_text())["knn_top1"] <= 100.0


# ---- 5: fine-tuning and the probe hold their workdir -------------------------------------------------

def smoke_finetune():
    from configs.finetune_fmnist import get_config

    c = get_config("smoke")
    c.total_steps, c.warmup_steps = 2, 0
    return c


def smoke_linprobe():
    from configs.linprobe_fmnist import get_config

    c = get_config("smoke")
    c.total_steps, c.warmup_steps = 2, 0
    return c


@pytest.mark.parametrize("command", ["finetune", "linprobe"])
def test_finetune_and_linprobe_on_a_held_workdir_are_refused_before_writing(tmp_path, command):
    run, config = {"finetune": (finetune.run, smoke_finetune), "linprobe": (linprobe.run, smoke_linprobe)}[command]
    workdir = tmp_path / command
    workdir.mkdir()
    with checkpoint.workdir_lock(str(workdir)):
        with pytest.raises(CheckpointError, match=f"workdir {workdir} is in use by pid {os.getpid()} "):
            run(config(), str(workdir), one_device())
    assert sorted(os.listdir(workdir)) == sorted([checkpoint.LOCK_FILE] + (["best", "checkpoints"]
                                                                           if command == "finetune" else []))


# ---- results: whole or not at all ----------------------------------------------------------------

def test_results_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "knn.json"
    common.write_results(str(tmp_path), "knn", {"knn_top1": 50.0})
    before = path.read_bytes()
    # a value JSON cannot hold, after others: the earlier file stays whole
    with pytest.raises(TypeError):
        common.write_results(str(tmp_path), "knn", {"knn_top1": 60.0, "odd": object()})
    assert path.read_bytes() == before
    # a full disk as the file is flushed
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        common.write_results(str(tmp_path), "knn", {"knn_top1": 70.0})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["knn.json"]
    monkeypatch.undo()
    # nothing non-finite is saved: refused, naming the key
    with pytest.raises(FloatingPointError, match=r"non-finite baselines.random.knn_top1=nan"):
        common.write_results(str(tmp_path), "knn", {"knn_top1": 70.0, "baselines": {"random": {"knn_top1": math.nan}}})
    assert path.read_bytes() == before


# ---- 16: a video model on images, and the reverse ---------------------------------------------------

def image_folder(root, size=32, per_class=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            os.makedirs(root / split / cls)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(root / split / cls / f"{i}.png")
    return str(root)


@pytest.mark.slow
def test_knn_of_a_video_model_on_images_is_refused_naming_what_disagrees(video_run, tmp_path):
    images = {"data.source": "folder", "data.path": image_folder(tmp_path / "images"), "eval.train_split": "train",
              "eval.test_split": "val", "eval.knn_train_examples": -1, "eval.knn_test_examples": -1,
              "eval.batch_size": 8, "eval.knn_k": 3}
    with pytest.raises(ConfigError, match=rf"^checkpoint {video_run} is a video ViT \(config.num_frames=4\) but "
                                          r"config.data.source='folder' gives images: evaluate it on clips"):
        knn.evaluate_checkpoint(video_run, str(tmp_path / "knn"), images, one_device())
    with pytest.raises(ConfigError, match=rf"^checkpoint {video_run} is a video ViT \(tubelets of 2 frames\) but "
                                          r"config.num_frames=1 asks for images"):
        knn.evaluate_checkpoint(video_run, str(tmp_path / "knn"), dict(images, num_frames=1), one_device())
    assert not (tmp_path / "knn" / "knn.json").exists()


def test_knn_of_an_image_model_on_clips_is_refused_naming_what_disagrees(image_run, tmp_path):
    with pytest.raises(ConfigError, match=rf"^checkpoint {image_run} is an image ViT but config.num_frames=4 asks "
                                          "for clips"):
        knn.evaluate_checkpoint(image_run, str(tmp_path / "knn"), dict(KNN, num_frames=4), one_device())
    clips = dict(KNN, **{"data.source": "video_list", "data.path": str(tmp_path / "clips.csv"), "data.size": 0})
    with pytest.raises(ConfigError, match=rf"^checkpoint {image_run} is an image ViT \(config.num_frames=1\) but "
                                          r"config.data.source='video_list' gives clips"):
        knn.evaluate_checkpoint(image_run, str(tmp_path / "knn"), clips, one_device())


@pytest.mark.parametrize("command", ["finetune", "linprobe"])
def test_finetune_and_linprobe_of_a_video_model_on_images_are_refused(video_run, tmp_path, command):
    run, config = {"finetune": (finetune.run, smoke_finetune), "linprobe": (linprobe.run, smoke_linprobe)}[command]
    c = config()
    c.pretrained, c.batch_size = video_run, 8
    c.data.update(source="folder", path=image_folder(tmp_path / "images"))
    c.eval.update(train_split="train", test_split="val", pool="avg", batch_size=8)  # a video ViT has no cls token
    explicit = {"data.source", "data.path", "eval.train_split", "eval.test_split"}  # as from the command line
    with pytest.raises(ConfigError, match=rf"^config.pretrained {video_run} is a video ViT \(config.num_frames=4\) "
                                          r"but config.data.source='folder' gives images"):
        run(c, str(tmp_path / command), one_device(), explicit)
