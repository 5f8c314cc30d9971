"""The grain input pipeline: transforms, determinism, exact resume, host shards, image
folders with a corrupt file, Fashion-MNIST and TFDS sources, and training through it."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from mdistill import sharding
from mdistill.config import apply_smoke, base_config, fashion_mnist
from mdistill.data import DataError, ImageFolderSource, Pipeline, SyntheticSource, build_source
from mdistill.data.fashion_mnist import DEFAULT_DIR as FMNIST_DIR
from mdistill.data.transforms import Transform, load_image, rrc_box
from mdistill.weights import checkpoint


def pipeline(source, batch=8, augment="mae", size=16, channels=3, **kw):
    return Pipeline(source, Transform(size, channels, augment), batch, **kw)


def take(p, n):
    with p:
        return [np.asarray(next(p)) for _ in range(n)]


# ---- transforms ---------------------------------------------------------------------------

@pytest.mark.parametrize("augment", ["mae", "flip", "none"])
@pytest.mark.parametrize("shape", [(40, 60, 3), (5, 7, 3), (16, 16, 1), (30, 20, 4)])
@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_keep_shapes_and_value_ranges(augment, shape, channels):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    out = Transform(16, channels, augment)(image, np.random.default_rng(1))
    assert out.shape == (16, 16, channels) and out.dtype == np.uint8
    # bicubic overshoot is clipped by PIL: a flat image stays flat, within [0, 255]
    flat = Transform(16, channels, augment)(np.full(shape, 200, np.uint8), np.random.default_rng(1))
    assert flat.min() >= 199 and flat.max() <= 201


def test_random_resized_crop_box_follows_mae():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(2000):
        left, top, w, h = rrc_box(300, 200, rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        areas.append(w * h / (300 * 200))
    assert 0.19 < min(areas) < 0.25 and max(areas) > 0.85  # scale (0.2, 1.0), not torchvision's 0.08
    assert rrc_box(3, 2, rng)[2:] in ((2, 2), (3, 2), (2, 1), (1, 1), (3, 1))  # tiny images: still a box


def test_transform_is_a_function_of_its_rng_and_flips():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    t = Transform(16, 3, "mae")
    np.testing.assert_array_equal(t(image, np.random.default_rng(5)), t(image, np.random.default_rng(5)))
    flip = Transform(32, 3, "flip")
    square = image[:, :32]
    outs = {flip(square, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert outs == {square.tobytes(), square[:, ::-1].tobytes()}  # centre crop of a 32x32 is itself


def test_evaluation_transform_is_resize_then_centre_crop():
    image = np.zeros((256, 320, 3), np.uint8)
    image[16:240, 48:272] = 255  # the central 224 x 224
    out = Transform(224, 3, "none")(image)
    assert out.shape == (224, 224, 3) and out.min() == 255  # 256 short side -> crop 224: all inside
    gray = Transform(8, 3, "none")(np.full((8, 8, 1), 77, np.uint8))
    assert gray.shape == (8, 8, 3) and (gray == 77).all()  # grayscale repeated to three channels
    rgb = Transform(8, 1, "none")(np.stack([np.full((8, 8), v, np.uint8) for v in (255, 0, 0)], -1))
    assert rgb.shape == (8, 8, 1) and abs(int(rgb[0, 0, 0]) - 76) <= 1  # luminance of pure red


# ---- determinism, resume, hosts -----------------------------------------------------------

def test_same_seed_gives_the_same_batches_and_grain_matches_the_definition():
    src = SyntheticSource(size=40, image_size=24, channels=3)
    a = take(pipeline(src, seed=3), 7)  # 5 steps per epoch: crosses an epoch boundary
    b = take(pipeline(src, seed=3), 7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    direct = pipeline(src, seed=3)
    for step in (0, 4, 5, 6):
        np.testing.assert_array_equal(a[step], direct.local_batch(step)["image"])
    c = take(pipeline(src, seed=4), 1)
    assert not np.array_equal(a[0], c[0])
    # one epoch visits every example once, the next epoch is reshuffled
    seen = np.concatenate([direct.global_indices(s) for s in range(5)])
    assert sorted(seen.tolist()) == list(range(40))
    assert not np.array_equal(direct.global_indices(0), direct.global_indices(5))


def test_resume_mid_epoch_continues_with_identical_batches():
    c = apply_smoke(base_config())
    c.update(batch_size=8, image_size=16)
    c.data.update(synthetic_size=40, augment="mae")
    mesh_sharding = sharding.batch_sharding(sharding.make_mesh())
    with Pipeline.from_config(c, mesh_sharding) as first:
        batches = [np.asarray(next(first)) for _ in range(3)]
        saved = first.state()  # as a checkpoint at step 3 holds it
        batches += [np.asarray(next(first)) for _ in range(4)]
    assert saved["next_step"] == 3
    with Pipeline.from_config(c, mesh_sharding, start_step=3, state=saved) as resumed:
        again = next(resumed)
        assert again.sharding == mesh_sharding and again.shape == (8, 16, 16, 3)
        np.testing.assert_array_equal(np.asarray(again), batches[3])
        for step in range(4, 7):
            np.testing.assert_array_equal(np.asarray(next(resumed)), batches[step])
    c.data.synthetic_size = 48  # other data: the checkpoint's batches cannot be reproduced
    with pytest.raises(DataError, match="dataset_size: 40 in the checkpoint, 48 now"):
        Pipeline.from_config(c, mesh_sharding, start_step=3, state=saved)


def test_two_hosts_read_disjoint_shards_that_cover_the_data():
    src = SyntheticSource(size=48, image_size=12, channels=3)
    hosts = [pipeline(src, batch=8, size=12, seed=1, process_index=i, process_count=2) for i in range(2)]
    single = pipeline(src, batch=8, size=12, seed=1)
    epoch = []
    for step in range(6):
        mine = [set(h.local_indices(step).tolist()) for h in hosts]
        assert not mine[0] & mine[1] and len(mine[0]) == len(mine[1]) == 4
        epoch += sorted(mine[0] | mine[1])
        if step < 2:  # each host's batch is its half of the one-host batch, augmentation included
            halves = [h.local_batch(step)["image"] for h in hosts]
            np.testing.assert_array_equal(np.concatenate(halves), single.local_batch(step)["image"])
    assert sorted(epoch) == list(range(48))
    np.testing.assert_array_equal(take(hosts[1], 2)[1], hosts[1].local_batch(1)["image"])


# ---- image folders --------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    """train/<class>/: JPEGs and PNGs of several sizes and modes, one corrupt JPEG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cat"]):
        d = tmp_path / "train" / name
        d.mkdir(parents=True)
        for i, (h, w) in enumerate([(64, 80), (40, 30), (9, 13), (120, 90)]):  # 9x13: smaller than the crop
            y, x = np.mgrid[:h, :w]
            arr = (128 + 100 * np.sin((x + 2 * y) / (3 + c + i))).astype(np.uint8)
            img = Image.fromarray(np.stack([arr, arr[::-1], rng.integers(0, 255, (h, w), dtype=np.uint8)], -1))
            if i == 1:
                img.convert("L").save(d / f"{name}_{i}.png")
            elif i == 2:
                img.convert("RGBA").save(d / f"{name}_{i}.PNG")
            else:
                img.save(d / f"{name}_{i}.JPEG", quality=90)
        (d / "notes.txt").write_text("not an image")
    good = (tmp_path / "train" / "bee" / "bee_0.JPEG").read_bytes()
    (tmp_path / "train" / "bee" / "bee_9.JPEG").write_bytes(good[: len(good) // 3])  # truncated
    return tmp_path


def folder_config(root, **data):
    c = apply_smoke(base_config())
    c.update(batch_size=8, image_size=32)
    c.data.update({**dict(source="folder", path=str(root), split="train", augment="mae", max_bad_fraction=0.1), **data})
    return c


def test_image_folder_reads_real_files_and_skips_a_corrupt_one(image_folder, capsys):
    src = build_source(folder_config(image_folder))
    assert isinstance(src, ImageFolderSource) and len(src) == 13 and src.classes == ("ant", "bee", "cat")
    assert [src.label(i) for i in range(13)] == [0] * 4 + [1] * 5 + [2] * 4
    bad = next(i for i in range(13) if src.path(i).endswith("bee_9.JPEG"))
    with pytest.raises(OSError):
        load_image(src.raw(bad), 3)
    assert src.images([0, 6]).shape == (2, 32, 32, 3)  # evaluation view: resize + centre crop

    p = Pipeline.from_config(folder_config(image_folder), sharding.batch_sharding(sharding.make_mesh()))
    with p:
        # 13 // 8 = 1 step per epoch: 6 epochs read 48 of 13 records, the corrupt one surely among them
        out = [np.asarray(next(p)) for _ in range(6)]
    assert all(o.shape == (8, 32, 32, 3) and o.dtype == np.uint8 for o in out)
    assert p.state()["bad_records"] == [bad]
    log = capsys.readouterr().out
    assert log.count("bee_9.JPEG") == 1 and "cannot be decoded" in log  # logged once, with its path
    # its slot got another image: batches are still a function of the step
    np.testing.assert_array_equal(out[5], p.local_batch(5)["image"])

    strict = Pipeline.from_config(folder_config(image_folder, max_bad_fraction=0.0))
    with strict, pytest.raises(DataError, match="bee_9.JPEG"):
        for _ in range(6):
            next(strict)


def test_grain_worker_processes_give_the_same_batches(image_folder):
    in_process = take(Pipeline.from_config(folder_config(image_folder, workers=0)), 3)
    workers = take(Pipeline.from_config(folder_config(image_folder, workers=2)), 3)
    for a, b in zip(in_process, workers):
        np.testing.assert_array_equal(a, b)


def test_missing_folder_and_layout_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*<path>/<split>/<class>/<image>"):
        ImageFolderSource(str(tmp_path), "train", 32)
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a.JPEG")
    with pytest.raises(FileNotFoundError, match="move them into class subfolders"):
        ImageFolderSource(str(tmp_path), "val", 32)


def test_symlink_loops_are_listed_and_skipped_like_corrupt_files(image_folder):
    """Image files symlinked to each other used to stop the listing with OSError: [Errno 40]."""
    cat = image_folder / "train" / "cat"
    os.symlink(cat / "loop_b.png", cat / "loop_a.png")
    os.symlink(cat / "loop_a.png", cat / "loop_b.png")
    os.symlink(cat / "nowhere", image_folder / "train" / "dog")  # a dangling class folder: not a class
    src = build_source(folder_config(image_folder))
    assert len(src) == 15 and src.classes == ("ant", "bee", "cat")
    loop = next(i for i in range(15) if src.path(i).endswith("loop_a.png"))
    p = Pipeline.from_config(folder_config(image_folder, max_bad_fraction=0.0), start_step=0)
    with p, pytest.raises(DataError, match="loop_a.png|loop_b.png"):
        for _ in range(10):
            next(p)
    with pytest.raises(DataError, match=f"cannot decode image .*{src.path(loop)}"):
        src.images([loop])


def test_16_bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    gray = np.asarray(load_image(str(tmp_path / "deep.png"), 1))
    np.testing.assert_array_equal(gray, (ramp >> 8).astype(np.uint8))
    rgb = np.asarray(load_image(str(tmp_path / "deep.png"), 3))
    np.testing.assert_array_equal(rgb[..., 1], (ramp >> 8).astype(np.uint8))


# ---- Fashion-MNIST and TFDS -------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_through_the_pipeline():
    c = fashion_mnist(base_config())
    c.batch_size = 16
    p = Pipeline.from_config(c, labels=True)
    images, labels = next(p)
    p.close()
    assert images.shape == (16, 28, 28, 1) and images.dtype == np.uint8 and labels.shape == (16,)
    np.testing.assert_array_equal(images, p.source.images(p.global_indices(0)))  # no augmentation
    np.testing.assert_array_equal(labels, p.source.labels(p.global_indices(0)))
    c.data.update(channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, augment="mae")
    assert Pipeline.from_config(c).local_batch(0)["image"].shape == (16, 28, 28, 3)


def test_tfds_source_through_the_pipeline():
    import tensorflow_datasets as tfds

    c = folder_config("unused")
    c.data.update(source="tfds", name="cifar10", split="train")
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        p = Pipeline.from_config(c)
        first = take(p, 2)
    assert first[0].shape == (8, 32, 32, 3) and p.state()["fingerprint"] == "tfds:cifar10:train:20"


def test_missing_tfds_dataset_names_it_and_how_to_prepare(tmp_path):
    from mdistill.data.tfds_source import TFDSSource

    with pytest.raises(FileNotFoundError, match=r"'imagenet2012' is not prepared.*downloads/manual.*tfds build"):
        TFDSSource("imagenet2012", "train", 224, 3, str(tmp_path))
    assert not os.path.exists(tmp_path / "downloads")  # never starts a download


# ---- training through the pipeline ----------------------------------------------------------

@pytest.mark.slow
def test_mae_trains_from_an_image_folder_and_checkpoints_the_input_state(image_folder, tmp_path):
    """Exact resume through train() is checked by tests/test_train.py and
    tests/test_fault_tolerance.py, which run the same pipeline on synthetic data."""
    from mdistill.weights import checkpoint
    from mdistill.train import train

    c = folder_config(image_folder)
    c.update(total_steps=3, checkpoint_every=2, log_every=1)
    workdir = tmp_path / "run"
    assert np.isfinite(train(c, str(workdir), sharding.make_mesh(jax.devices()[:2]))["loss"])
    _, meta = checkpoint.load_params(str(workdir), None)
    assert meta["data"]["next_step"] == 3 and meta["data"]["fingerprint"].startswith("folder:13:")
    resumed = Pipeline.from_config(c, start_step=3, state=meta["data"])
    np.testing.assert_array_equal(take(resumed, 1)[0], Pipeline.from_config(c).local_batch(3)["image"])


@pytest.mark.slow
def test_finetuning_reads_the_pipeline_with_workers_and_random_resized_crops(image_folder, tmp_path):
    """Fine-tuning's batches come from data.Pipeline (here with 2 grain workers) with MAE's
    fine-tuning crop, RandomResizedCrop of 8-100% of the area + flip, not the centre crop."""
    from configs.finetune_fmnist import get_config

    from mdistill.evaluate import finetune
    from mdistill.evaluate.finetune import finetune_config

    assert tuple(finetune_config(base_config()).data.crop_scale) == (0.08, 1.0)
    (image_folder / "train" / "bee" / "bee_9.JPEG").unlink()  # evaluation reads every image: none corrupt
    c = get_config("smoke")
    c.update(batch_size=8, image_size=32, total_steps=3, warmup_steps=1, log_every=1,
             eval_every=3, checkpoint_every=3)
    c.data.update(source="folder", path=str(image_folder), split="train", augment="mae", crop_scale=(0.08, 1.0),
                  workers=2, max_bad_fraction=0.1)
    c.eval.update(train_split="train", test_split="train", batch_size=8)
    ft = finetune.FineTuner(c, sharding.make_mesh())
    pipeline = ft.batches()
    transform = pipeline.reader.transform
    assert (transform.augment, transform.scale) == ("mae", (0.08, 1.0))
    batch = pipeline.local_batch(0)
    rows = pipeline.local_indices(0)
    centre = ft.train_split.source.images(rows)  # the evaluation view of the same records
    assert not np.array_equal(batch["image"], centre)  # cropped at random, not centred
    np.testing.assert_array_equal(batch["label"], ft.train_split.source.labels(rows))
    with pipeline:
        images, labels = next(pipeline)
    np.testing.assert_array_equal(np.asarray(images), batch["image"])  # workers give the definition's batch
    results = finetune.run(c, str(tmp_path))
    assert results["steps"] == 3 and 0.0 <= results["top1"] <= 100.0
    meta = checkpoint.load_params(str(tmp_path), None)[1]
    assert meta["data"]["next_step"] == 3 and meta["data"]["dataset_size"] == 12


@pytest.mark.slow
def test_feature_extraction_and_the_probe_read_the_pipeline_with_workers(image_folder, tmp_path):
    """k-NN and the linear probe extract features through data.Pipeline: with 2 grain
    workers the features are those of the in-process read, every image once, in order, the
    last batch padded with label -1; the probe (with k-NN) runs on an image folder."""
    from configs.linprobe_fmnist import get_config

    from mdistill.evaluate import common, linprobe

    c = get_config("smoke")
    c.update(image_size=32, batch_size=8, knn=True, total_steps=4, warmup_steps=1)
    c.data.update(source="folder", path=str(image_folder), split="train", workers=2, max_bad_fraction=0.1)
    c.eval.update(train_split="train", test_split="train", batch_size=8, knn_k=3)
    mesh = sharding.make_mesh()
    split = common.load_split(c, "train")
    params = common.random_encoder(c.student.variant, c.image_size, c.data.channels, mesh)
    with_workers = common.FeatureExtractor(c, mesh).extract(params, split)
    c.data.workers = 0
    in_process = common.FeatureExtractor(c, mesh).extract(params, split)
    np.testing.assert_array_equal(np.asarray(with_workers[0]), np.asarray(in_process[0]))
    labels = np.asarray(with_workers[1])
    assert labels.shape == (16,) and list(labels[13:]) == [-1] * 3
    # the truncated JPEG is not replaced in an evaluation pass: its row is padding
    bad = next(i for i in range(13) if split.source.path(i).endswith("bee_9.JPEG"))
    expected = split.labels.copy()
    expected[bad] = -1
    np.testing.assert_array_equal(labels[:13], expected)
    c.data.workers = 2
    results = linprobe.run(c, str(tmp_path))
    assert results["train_examples"] == 13 and 0.0 <= results["top1"] <= 100.0 and "knn_top1" in results


@pytest.mark.slow
def test_the_probe_can_train_on_augmented_images(image_folder, tmp_path, monkeypatch):
    """config.data.augment='mae' or 'flip': the probe's training batches come through the
    pipeline with that transform (each image cropped or flipped, of the records the
    precomputed path would take at that step) and the frozen encoder runs in the step; the
    test features and the k-NN stay those of the un-augmented images; results are written."""
    from configs.linprobe_fmnist import get_config

    from mdistill.evaluate import common, linprobe

    c = get_config("smoke")
    c.update(image_size=32, batch_size=8, knn=True, num_epochs=3.0, warmup_epochs=1.0)
    c.data.update(source="folder", path=str(image_folder), split="train", max_bad_fraction=0.1)
    c.eval.update(train_split="train", test_split="train", batch_size=8, knn_k=3)
    assert c.data.augment == "none"  # the default: features computed once
    seen, extracted = [], []
    make_batches, extract = linprobe.probe_batches, common.FeatureExtractor.extract

    class Recording:
        """The pipeline's batches, kept as the probe reads them."""

        def __init__(self, pipeline):
            self.pipeline = pipeline

        def close(self):
            self.pipeline.close()

        def __next__(self):
            images, labels = next(self.pipeline)
            seen.append((np.asarray(images), np.asarray(labels)))
            return images, labels

    monkeypatch.setattr(linprobe, "probe_batches", lambda *a: Recording(make_batches(*a)))
    monkeypatch.setattr(common.FeatureExtractor, "extract",
                        lambda self, params, split, **kw: extracted.append(split) or extract(self, params, split, **kw))
    plain = linprobe.run(c, str(tmp_path / "plain"))
    assert seen == [] and len(extracted) == 2 and "augment" not in plain  # no batch read: features once

    split = common.load_split(c, "train")
    bad = next(i for i in range(13) if split.source.path(i).endswith("bee_9.JPEG"))
    for augment in ("flip", "mae"):
        c.data.augment = augment
        seen.clear()
        results = linprobe.run(c, str(tmp_path / augment))
        assert results["augment"] == augment and results["steps"] == 3 and 0.0 <= results["top1"] <= 100.0
        assert results["knn_top1"] == plain["knn_top1"] and "knn_top5" not in results  # 3 classes: no top-5
        assert os.path.exists(tmp_path / augment / "linprobe.json")
        assert os.path.exists(tmp_path / augment / "metrics.jsonl")
        assert len(seen) == 3
        c_plain = c.copy_and_resolve_references()
        c_plain.data.augment = "none"
        unaugmented = make_batches(c_plain, split, None, 3)
        flipped = cropped = 0
        for step, (images, labels) in enumerate(seen):
            reference = unaugmented.local_batch(step)  # the same records, centre-cropped
            np.testing.assert_array_equal(labels, reference["label"])
            rows = make_batches(c, split, None, 3).global_indices(step)
            np.testing.assert_array_equal(rows, unaugmented.global_indices(step))
            for image, centre, row in zip(images, reference["image"], rows):
                if row == bad:  # replaced by a record drawn at random, the same in both
                    continue
                if augment == "flip":
                    assert np.array_equal(image, centre) or np.array_equal(image, centre[:, ::-1])
                    flipped += not np.array_equal(image, centre)
                else:
                    cropped += not (np.array_equal(image, centre) or np.array_equal(image, centre[:, ::-1]))
        assert (flipped > 0) if augment == "flip" else (cropped > 20)
    c.knn = False
    extracted.clear()
    linprobe.run(c, str(tmp_path / "no_knn"))
    assert len(extracted) == 1  # the test split only: no train features without k-NN
