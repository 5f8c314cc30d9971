"""Prepared shards (mdistill.data.prepare -> config.data.source='prepared'): what is stored,
that a split prepared at the source's size gives the folder's batches and losses, the JPEG
decoder against PIL's, and the errors."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mdistill import sharding
from mdistill.config import apply_smoke, base_config
from mdistill.data import DataError, Pipeline, build_source
from mdistill.data.prepare import prepare_split
from mdistill.data.prepared import PreparedSource
from mdistill.data.transforms import Transform, decode_jpeg, load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root, sizes=((64, 80), (40, 30), (9, 13), (120, 90), (300, 200)), classes=("ant", "bee")):
    """<root>/train/<class>/: RGB and gray JPEGs (one progressive), a PNG, an RGBA PNG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        d = os.path.join(root, "train", name)
        os.makedirs(d)
        for i, (h, w) in enumerate(sizes):
            y, x = np.mgrid[:h, :w]
            arr = (128 + 100 * np.sin((x + 2 * y) / (3 + c + i))).astype(np.uint8)
            img = Image.fromarray(np.stack([arr, arr[::-1], rng.integers(0, 255, (h, w), dtype=np.uint8)], -1))
            if i == 1:
                img.convert("L").save(os.path.join(d, f"{i}.png"))
            elif i == 2:
                img.convert("RGBA").save(os.path.join(d, f"{i}.png"))
            elif i == 3:
                img.convert("L").save(os.path.join(d, f"{i}.jpg"), quality=85)
            else:
                img.save(os.path.join(d, f"{i}.jpg"), quality=90, progressive=i == 4)
    return str(root)


def config(source, path, **data):
    c = apply_smoke(base_config())
    c.update(batch_size=4, image_size=32)
    c.data.update({**dict(source=source, path=str(path), split="train", augment="mae"), **data})
    return c


@pytest.fixture
def folder_and_copy(tmp_path):
    root = write_folder(tmp_path / "folder")
    out = str(tmp_path / "prepared")
    prepare_split(build_source(config("folder", root)), out, "train", channels=3, short_side=0, records_per_shard=4)
    return root, out


def test_a_split_prepared_at_the_source_size_gives_the_folder_batches(folder_and_copy):
    root, out = folder_and_copy
    folder, prepared = build_source(config("folder", root)), build_source(config("prepared", out))
    assert isinstance(prepared, PreparedSource) and len(prepared) == len(folder) == 10
    assert prepared.classes == folder.classes == ("ant", "bee") and prepared.num_classes == 2
    assert len(prepared.meta["shards"]) == 3  # 4 records a shard
    np.testing.assert_array_equal(prepared.labels(range(10)), folder.labels(range(10)))
    for augment in ("mae", "none"):
        pipes = [Pipeline.from_config(config(s, p, augment=augment), seed=3)
                 for s, p in (("folder", root), ("prepared", out))]
        for step in range(3):
            a, b = (p.local_batch(step)["image"] for p in pipes)
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(prepared.images([0, 4, 7]), folder.images([0, 4, 7]))
    # the JPEGs are stored byte for byte; the PNGs (small) as raw pixels
    with open(folder.path(0), "rb") as f:
        assert prepared.raw(0) == f.read()
    assert prepared.raw(1)[:6] == b"\x93NUMPY"


def test_the_prepared_pipeline_resumes_and_checks_the_data(folder_and_copy, tmp_path):
    root, out = folder_and_copy
    c = config("prepared", out)
    whole = Pipeline.from_config(c)
    with whole:
        batches = [np.asarray(next(whole)) for _ in range(4)]
        state = dict(whole.state(), next_step=2)
    resumed = Pipeline.from_config(c, start_step=2, state=state)
    with resumed:
        np.testing.assert_array_equal(np.asarray(next(resumed)), batches[2])
    other = str(tmp_path / "other")
    prepare_split(build_source(config("folder", root)), other, "train", channels=3, short_side=16)
    with pytest.raises(DataError, match="fingerprint"):
        Pipeline.from_config(config("prepared", other), start_step=2, state=state)


def test_prepared_sizes_encodings_and_channels(tmp_path):
    root = write_folder(tmp_path / "folder")
    src = build_source(config("folder", root))
    out = str(tmp_path / "p")
    meta = prepare_split(src, out, "train", channels=3, short_side=32, encoding="jpeg", quality=80)
    prepared = PreparedSource(out, "train", 32, 3)
    for i in range(len(prepared)):
        img = load_image(prepared.raw(i), 3)
        h, w = np.asarray(img).shape[:2]
        original = Image.open(src.path(i)).size
        assert min(h, w) == min(32, min(original)), (i, (h, w), original)
        assert prepared.raw(i)[:2] == b"\xff\xd8"  # every record re-encoded as JPEG
    assert meta["stored_bytes"] > 0 and meta["quality"] == 80
    gray = prepare_split(src, str(tmp_path / "g"), "train", channels=1, short_side=0, encoding="raw")
    g = PreparedSource(str(tmp_path / "g"), "train", 32, 1)
    assert gray["count"] == 10 and np.asarray(load_image(g.raw(0), 1)).shape[-1] == 1
    np.testing.assert_array_equal(g.images([0, 3]), PreparedSource(str(tmp_path / "g"), "train", 32, 1).images([0, 3]))
    assert g.images([0, 3]).shape == (2, 32, 32, 1)


def test_a_corrupt_file_is_left_out_and_named(tmp_path):
    root = write_folder(tmp_path / "folder")
    good = open(os.path.join(root, "train", "bee", "0.jpg"), "rb").read()
    with open(os.path.join(root, "train", "bee", "9.jpg"), "wb") as f:
        f.write(good[: len(good) // 3])
    meta = prepare_split(build_source(config("folder", root)), str(tmp_path / "p"), "train", channels=3)
    assert meta["count"] == 10 and len(meta["skipped"]) == 1 and "9.jpg" in meta["skipped"][0]


def test_missing_split_and_files_are_named(tmp_path, folder_and_copy):
    _, out = folder_and_copy
    with pytest.raises(FileNotFoundError, match=r"no prepared split 'test'.*\['train'\].*mdistill.data.prepare"):
        PreparedSource(out, "test", 32)
    os.remove(os.path.join(out, "train-00001.array_record"))
    with pytest.raises(FileNotFoundError, match="train-00001.array_record"):
        PreparedSource(out, "train", 32)
    meta = json.load(open(os.path.join(out, "train.json")))
    json.dump(dict(meta, format="other"), open(os.path.join(out, "train.json"), "w"))
    with pytest.raises(DataError, match="expected 'mdistill-prepared'"):
        PreparedSource(out, "train", 32)


def test_the_jpeg_decoder_gives_pil_pixels_and_draft_sizes(tmp_path):
    rng = np.random.default_rng(1)
    for mode, progressive, size in (("RGB", False, (300, 641)), ("RGB", True, (257, 90)), ("L", False, (500, 520))):
        y, x = np.mgrid[:size[1], :size[0]]
        arr = np.stack([(x * 7 + y) % 256, (y * 3) % 256, rng.integers(0, 256, x.shape)], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90, progressive=progressive)
        data = buf.getvalue()
        for channels in (1, 3):
            for min_side in (0, 60, 130, 1000):
                with Image.open(io.BytesIO(data)) as img:
                    if min_side:
                        img.draft("L" if channels == 1 else "RGB", (min_side, min_side))
                    expected = np.asarray(img.convert("L" if channels == 1 else "RGB"))
                got = decode_jpeg(data, channels, min_side)
                expected = expected[..., None] if expected.ndim == 2 else expected
                assert got.shape == expected.shape, (mode, channels, min_side)
                np.testing.assert_array_equal(got, expected, err_msg=str((mode, progressive, channels, min_side)))


@pytest.mark.slow
def test_a_run_from_prepared_shards_logs_the_folder_losses(folder_and_copy, tmp_path):
    root, out = folder_and_copy
    losses = {}
    for source, path in (("folder", root), ("prepared", out)):
        workdir = str(tmp_path / f"run-{source}")
        overrides = [f"--config.data.source={source}", f"--config.data.path={path}", "--config.data.split=train",
                     "--config.data.augment=mae", "--config.batch_size=8", "--config.total_steps=4",
                     "--config.log_every=1", "--config.checkpoint_every=4", "--config.visualize_every=0"]
        run = subprocess.run([sys.executable, "-m", "mdistill.main", "--config=configs/mae_vitb.py:smoke",
                              f"--workdir={workdir}", *overrides], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
        assert run.returncode == 0, run.stderr[-3000:]
        losses[source] = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))
                          if "loss" in json.loads(line)]
    assert len(losses["folder"]) == 4 and losses["folder"] == losses["prepared"]


@pytest.mark.slow  # a subprocess
def test_prepare_command_writes_a_split(tmp_path):
    root = write_folder(tmp_path / "folder", sizes=((40, 50), (70, 60)))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "mdistill.data.prepare", "--config=configs/mae_vitb.py:smoke",
                             "--config.data.source=folder", f"--config.data.path={root}", f"--out={out}",
                             "--short_side=48", "--workers=0"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["count"] == 4 and summary["shards"] == ["train-00000.array_record"]
    assert Transform(32, 3, "mae")(load_image(PreparedSource(str(out), "train", 32).raw(1), 3),
                                   np.random.default_rng(0)).shape == (32, 32, 3)


def test_the_evaluators_read_a_prepared_split(folder_and_copy):
    from mdistill.evaluate.common import check_model_fits_data, load_split

    root, out = folder_and_copy
    prepared, folder = (load_split(config(s, p), "train") for s, p in (("prepared", out), ("folder", root)))
    np.testing.assert_array_equal(prepared.labels, folder.labels)
    np.testing.assert_array_equal(prepared.images(np.arange(4)), folder.images(np.arange(4)))
    check_model_fits_data(config("prepared", out), "the model", tubelet=0)  # an image source: no error
