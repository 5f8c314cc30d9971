"""Fashion-MNIST from its original IDX files (gzipped or not), as shipped by Zalando and
by Debian's package dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

from mdistill.data.errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SIZES = {"train": 60000, "test": 10000}
HOW_TO_GET = ("install Debian's package (apt-get install dataset-fashion-mnist) or download the "
              "four *-ubyte.gz files from github.com/zalandoresearch/fashion-mnist into that folder")


def _find(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"Fashion-MNIST file {stem}(.gz) not found in {directory!r}: {HOW_TO_GET}")


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file: magic (0, 0, dtype code 0x08 = uint8, ndim), big-endian dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a cut or damaged gzip stream, an unreadable file
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e}). If it is truncated or damaged, "
                        f"replace it: {HOW_TO_GET}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}; "
                         "the file is truncated or corrupt")
    return body.reshape(dims)


class FashionMNISTSource:
    """28x28 grayscale images [N, 28, 28, channels] and labels, held in memory (47 MB)."""

    def __init__(self, split: str = "train", directory: str = DEFAULT_DIR, channels: int = 1):
        if split not in FILES:
            raise ValueError(f"Fashion-MNIST split {split!r}: expected one of {sorted(FILES)}")
        image_path, label_path = (_find(directory, stem) for stem in FILES[split])
        images = read_idx(image_path)
        self._labels = read_idx(label_path).astype(np.int32)
        if images.shape[0] != self._labels.shape[0]:
            raise DataError(f"Fashion-MNIST {split}: {images.shape[0]} images in {image_path} but "
                            f"{self._labels.shape[0]} labels in {label_path}; one of them is damaged or from "
                            f"another split: {HOW_TO_GET}")
        self._images = np.repeat(images[..., None], channels, axis=-1) if channels > 1 else images[..., None]
        self.directory, self.split = directory, split
        # identifies the content: any changed image or label, or another order, changes it
        # (decoded arrays, so a gzipped and an unpacked copy agree; ~0.1 s for the 47 MB)
        self._digest = hashlib.sha1(images.tobytes() + self._labels.tobytes()).hexdigest()[:16]

    def __len__(self) -> int:
        return self._images.shape[0]

    def raw(self, index: int) -> np.ndarray:
        return self._images[int(index)]

    def describe(self, index: int) -> str:
        return f"Fashion-MNIST {self.split}[{int(index)}] in {self.directory}"

    def fingerprint(self) -> str:
        return f"fashion_mnist:{self.split}:{len(self)}:{self._digest}"

    num_classes = 10

    def label(self, index: int) -> int:
        return int(self._labels[int(index)])

    def images(self, indices) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def labels(self, indices) -> np.ndarray:
        return self._labels[np.asarray(indices)]
