import gzip
import os

import numpy as np
import pytest

from mdistill import sharding
from mdistill.data import DataError, Pipeline, SyntheticSource
from mdistill.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource, read_idx
from mdistill.data.transforms import Transform


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (20,), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    return tmp_path, images, labels


def test_idx_reader_roundtrip(tiny_fmnist):
    path, images, labels = tiny_fmnist
    src = FashionMNISTSource("train", str(path), channels=3)
    assert len(src) == 20
    out = src.images([3, 7])
    assert out.shape == (2, 28, 28, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], images[[3, 7]])
    np.testing.assert_array_equal(src.labels([3, 7]), labels[[3, 7]])


def test_truncated_idx_file_is_named(tiny_fmnist):
    path, _, _ = tiny_fmnist
    raw = gzip.open(path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:1000])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: header says"):
        FashionMNISTSource("train", str(path))


def test_cut_gzip_stream_is_named(tiny_fmnist):
    path, _, _ = tiny_fmnist
    packed = (path / "train-images-idx3-ubyte.gz").read_bytes()
    (path / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])  # no end-of-stream marker
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot be read .*EOFError"):
        FashionMNISTSource("train", str(path))


def test_image_and_label_counts_must_agree(tiny_fmnist):
    path, _, labels = tiny_fmnist
    write_idx(path / "train-labels-idx1-ubyte.gz", labels[:15])
    with pytest.raises(DataError, match="20 images in .*train-images-idx3-ubyte.gz but 15 labels in "
                                        ".*train-labels-idx1-ubyte.gz"):
        FashionMNISTSource("train", str(path))


def test_fingerprint_follows_the_content(tiny_fmnist):
    """Other images of the same count (inverted, reordered) are other data: a resume on them
    must be refused, so the fingerprint changes; the same data unpacked keeps it."""
    path, images, labels = tiny_fmnist
    original = FashionMNISTSource("train", str(path)).fingerprint()
    write_idx(path / "train-images-idx3-ubyte.gz", 255 - images)
    inverted = FashionMNISTSource("train", str(path)).fingerprint()
    write_idx(path / "train-images-idx3-ubyte.gz", images[::-1])
    reordered = FashionMNISTSource("train", str(path)).fingerprint()
    assert len({original, inverted, reordered}) == 3
    write_idx(path / "train-images-idx3-ubyte.gz", images)
    os.remove(path / "train-labels-idx1-ubyte.gz")
    (path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (20).to_bytes(4, "big") + labels.tobytes())
    assert FashionMNISTSource("train", str(path)).fingerprint() == original
    # a resume on other content is refused; a checkpoint from before the digest names the count only
    pipeline = Pipeline(FashionMNISTSource("train", str(path)), Transform(28, 1), 4)
    state = dict(pipeline.state(), next_step=2)
    with pytest.raises(DataError, match=f"fingerprint: '{inverted}' in the checkpoint"):
        pipeline.restore(dict(state, fingerprint=inverted))
    pipeline.restore(dict(state, fingerprint="fashion_mnist:train:20"))
    assert pipeline.step == 2


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNISTSource("train", str(tmp_path))


@pytest.mark.skipif(not os.path.exists(os.path.join(DEFAULT_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files():
    src = FashionMNISTSource("test", DEFAULT_DIR)
    assert len(src) == 10000
    assert read_idx(os.path.join(DEFAULT_DIR, "t10k-labels-idx1-ubyte.gz")).shape == (10000,)
    labels = src.labels(np.arange(10000))
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)  # the test split is balanced
    assert src.images([0]).shape == (1, 28, 28, 1)


def test_batches_are_a_pure_function_of_seed_and_step():
    src = SyntheticSource(size=64, image_size=8, channels=3)
    shard = sharding.batch_sharding(sharding.make_mesh())
    transform = Transform(8, 3)
    with Pipeline(src, transform, 16, shard, seed=1) as a, Pipeline(src, transform, 16, shard, seed=1,
                                                                     start_step=3) as b:
        first = [np.asarray(next(a)) for _ in range(6)]  # 4 steps per epoch: crosses an epoch
        np.testing.assert_array_equal(np.asarray(next(b)), first[3])
        np.testing.assert_array_equal(np.asarray(next(b)), first[4])
        # one epoch visits every example once
        seen = np.concatenate([a.global_indices(s) for s in range(4)])
        assert sorted(seen.tolist()) == list(range(64))
        assert not np.array_equal(a.global_indices(0), a.global_indices(4))  # reshuffled next epoch
    with Pipeline(src, transform, 16, shard, seed=2) as c:
        assert not np.array_equal(np.asarray(next(c)), first[0])
        assert next(c).sharding == shard
