"""The DALI input path (config.data.decoder='dali', mdistill.data.dali) on DALI's CPU operators:
the grain path's records, crops, flips and labels with DALI's pixels, determinism, per-host
shards, resume, bad records, errors, and global jax.Arrays through the config. Skipped where
NVIDIA DALI is not installed (pip install '.[dali]'); its GPU decoder runs only in
benchmarks/gpu/run.sh."""

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nvidia.dali")

from mdistill import sharding  # noqa: E402
from mdistill.data import DataError, Pipeline, build_source  # noqa: E402
from mdistill.data.dali import centre_geometry, image_size  # noqa: E402
from mdistill.data.prepare import prepare_split  # noqa: E402
from mdistill.data.transforms import ClipTransform, Transform  # noqa: E402
from tests.test_prepared import config, write_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("dali") / "folder")


def batches(pipe, n):
    with pipe:
        return [next(pipe) for _ in range(n)]


@pytest.mark.parametrize("augment,channels", [("mae", 3), ("flip", 3), ("none", 3), ("mae", 1)])
def test_same_records_geometry_and_labels_as_the_grain_path(folder, augment, channels):
    source = build_source(config("folder", folder))
    t = Transform(32, channels, augment)
    grain = Pipeline(source, t, 4, seed=3, labels=True)
    dali = Pipeline(source, t, 4, seed=3, labels=True, decoder="dali")
    assert dali.dali.device_id is None  # no sharding on GPUs: DALI's CPU operators
    for step in range(3):
        a, b = grain.local_batch(step), dali.local_batch(step)
        assert b["image"].shape == (4, 32, 32, channels) and b["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["label"], b["label"])
        # same crop and flip, another decoder and resampler: a few grey levels apart, much closer
        # than to the grain path's image flipped or shifted by two pixels (the images are edges
        # and noise). The large JPEG is draft-decoded at 1/2 by the grain path, so its crop box
        # is rounded at half resolution there.
        a, b = a["image"].astype(int), b["image"].astype(int)
        diff = np.abs(a - b).mean(axis=(1, 2, 3))
        flipped = np.abs(a[:, :, ::-1] - b).mean(axis=(1, 2, 3))
        shifted = np.abs(np.roll(a, 2, axis=2) - b).mean(axis=(1, 2, 3))
        assert diff.max() < 8 and (diff < 0.5 * np.minimum(flipped, shifted)).all(), (diff, flipped, shifted)

def test_deterministic_given_the_seed_and_sharded_per_host(folder):
    source = build_source(config("folder", folder))
    t = Transform(32, 3, "mae")
    one = [Pipeline(source, t, 4, seed=5, labels=True, decoder="dali").local_batch(s) for s in range(3)]
    again = [Pipeline(source, t, 4, seed=5, labels=True, threads=1, decoder="dali").local_batch(s) for s in range(3)]
    other = Pipeline(source, t, 4, seed=6, labels=True, decoder="dali").local_batch(0)
    for a, b in zip(one, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(one[0]["image"], other["image"])
    hosts = [Pipeline(source, t, 4, seed=5, labels=True, process_index=p, process_count=2, decoder="dali")
             for p in range(2)]
    assert [h.layout.local_batch for h in hosts] == [2, 2]
    for step in range(3):
        halves = [h.local_batch(step) for h in hosts]
        for k in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), one[step][k])
        # each host reads only its own records
        assert set(hosts[0].local_indices(step)).isdisjoint(hosts[1].local_indices(step))


def test_resume_continues_with_the_batches_of_an_uninterrupted_run(folder):
    source = build_source(config("folder", folder))
    t = Transform(32, 3, "mae")
    straight = batches(Pipeline(source, t, 4, seed=1, labels=True, stop_step=5, decoder="dali"), 5)
    first = Pipeline(source, t, 4, seed=1, labels=True, decoder="dali")
    with first:
        next(first), next(first)
        state = first.state()
    assert state["next_step"] == 2
    resumed = Pipeline(source, t, 4, seed=1, labels=True, stop_step=5, decoder="dali")
    resumed.restore(state)
    rest = batches(resumed, 3)
    for (a_img, a_lab), (b_img, b_lab) in zip(straight[2:], rest):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_lab, b_lab)
    with pytest.raises(StopIteration):
        next(resumed)


def test_prepared_jpeg_shards_and_global_arrays_through_the_config(folder, tmp_path):
    out = str(tmp_path / "prepared")
    prepare_split(build_source(config("folder", folder)), out, "train", channels=3, short_side=48,
                  encoding="jpeg", records_per_shard=4)
    c = config("prepared", out, decoder="dali", augment="none")
    c.batch_size = 8
    batch_sharding = sharding.batch_sharding(sharding.make_mesh())
    pipe = Pipeline.from_config(c, batch_sharding, 0, 2, labels=True)
    assert pipe.dali is not None
    g = config("prepared", out, augment="none")
    g.batch_size = 8
    grain = Pipeline.from_config(g, labels=True)
    images, labels = batches(pipe, 1)[0]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8 and images.sharding == batch_sharding
    expected = grain.local_batch(0)
    np.testing.assert_array_equal(np.asarray(labels), expected["label"])
    assert np.abs(np.asarray(images).astype(int) - expected["image"]).mean() < 5


def test_a_record_whose_header_cannot_be_read_is_replaced_and_reported(folder, tmp_path):
    import shutil

    root = str(tmp_path / "folder")
    shutil.copytree(folder, root)
    with open(os.path.join(root, "train", "ant", "0.jpg"), "wb") as f:
        f.write(b"not an image at all")
    source = build_source(config("folder", root))
    bad = next(i for i in range(len(source)) if source.path(i).endswith(os.path.join("ant", "0.jpg")))
    pipe = Pipeline(source, Transform(32, 3, "mae"), 4, seed=0, max_bad_fraction=0.5, stop_step=5, decoder="dali")
    with pipe:
        for _ in range(5):
            assert next(pipe).shape == (4, 32, 32, 3)
    assert pipe.bad == {bad}
    strict = Pipeline(source, Transform(32, 3, "mae"), 4, seed=0, stop_step=5, decoder="dali")
    with strict, pytest.raises(DataError, match="cannot be decoded"):
        for _ in range(5):
            next(strict)


def test_errors_name_what_dali_cannot_take(folder, tmp_path):
    c = config("synthetic", "")
    with pytest.raises(DataError, match="encoded images"):
        Pipeline(build_source(c), Transform(32, 3, "mae"), 4, decoder="dali")
    with pytest.raises(DataError, match="decoder='grain'"):
        Pipeline(build_source(config("folder", folder)), ClipTransform(32, 2, 3, 1, True), 4, decoder="dali")
    with pytest.raises(DataError, match="decoder='bogus'"):
        Pipeline.from_config(config("folder", folder, decoder="bogus"))
    raw = str(tmp_path / "raw")  # prepared as raw pixels: nothing for DALI to decode
    prepare_split(build_source(config("folder", folder)), raw, "train", channels=3, short_side=0, encoding="raw")
    with pytest.raises(DataError, match="raw pixels"):
        Pipeline.from_config(config("prepared", raw, decoder="dali"))


def test_header_size_and_centre_geometry(tmp_path):
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.new("RGB", (70, 40)).save(path, format=fmt)
        assert image_size(path.read_bytes()) == (70, 40)
    assert centre_geometry(32, 32, 32) == (32, 32, 0, 0)  # left as it is, as transforms.center_crop does
    rw, rh, left, top = centre_geometry(300, 200, 224)  # short side to 256, the central 224
    assert (rw, rh) == (384, 256) and (left, top) == (80, 16)


def test_the_benchmark_times_the_dali_format(folder, capsys):
    from benchmarks.pipeline import FORMATS, bench_dali

    assert "dali" in FORMATS
    source = build_source(config("folder", folder))
    record = bench_dali(source, Transform(32, 3, "mae"), 4, 1, 2, "pipeline", labels=True)
    assert record["format"] == "dali" and record["device"] == "cpu" and record["images_per_cpu_second"] > 0
    assert '"format": "dali"' in capsys.readouterr().out


@pytest.mark.slow  # two training runs in subprocesses
def test_a_pretraining_run_with_dali_logs_about_the_grain_losses(folder, tmp_path):
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    losses = {}
    for decoder in ("grain", "dali"):
        workdir = str(tmp_path / f"run-{decoder}")
        overrides = ["--config.data.source=folder", f"--config.data.path={folder}", "--config.data.split=train",
                     "--config.data.augment=mae", f"--config.data.decoder={decoder}", "--config.batch_size=8",
                     "--config.total_steps=4", "--config.log_every=1", "--config.checkpoint_every=4",
                     "--config.visualize_every=0"]
        run = subprocess.run([sys.executable, "-m", "mdistill.main", "--config=configs/mae_vitb.py:smoke",
                              f"--workdir={workdir}", *overrides], cwd=root, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"))
        assert run.returncode == 0, run.stderr[-3000:]
        losses[decoder] = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))
                           if "loss" in json.loads(line)]
    # the same records, crops and flips; pixels a few grey levels apart (0.1% apart in the losses here)
    assert len(losses["dali"]) == 4
    np.testing.assert_allclose(losses["dali"], losses["grain"], rtol=0.005)
