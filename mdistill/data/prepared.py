"""Prepared shards (config.data.source='prepared', written by mdistill.data.prepare): random
access to ArrayRecord files of encoded, pre-resized images. raw(i) is the record's bytes (a
JPEG, or raw pixels as .npy); the pipeline decodes them in its workers
(mdistill.data.transforms.load_image, simplejpeg for JPEGs), with the same transforms,
determinism, resume and per-host sharding as every other source."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from mdistill.data.errors import DataError

FORMAT = "mdistill-prepared"  # <split>.json's 'format'
VERSION = 1                    # its 'version': readers accept this one and older
HOW = "write it with `python -m mdistill.data.prepare --config=... --out=<path> --splits=<split>`"


def read_metadata(path: str, split: str) -> dict:
    meta_path = os.path.join(path, f"{split}.json")
    if not os.path.exists(meta_path):
        there = sorted(f[:-5] for f in os.listdir(path) if f.endswith(".json")) if os.path.isdir(path) else None
        raise FileNotFoundError(
            f"no prepared split {split!r}: {meta_path!r} does not exist"
            + (f" (prepared splits there: {there})" if there is not None else f" (nor does {path!r})") + f"; {HOW}")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise DataError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
                        f"{FORMAT!r} version <= {VERSION}")
    return meta


class PreparedSource:
    def __init__(self, path: str, split: str, image_size: int, channels: int = 3):
        from mdistill.data.folders import SPLIT_ALIASES

        self.path, self.image_size, self.channels = path, image_size, channels
        # 'validation' finds a split prepared as 'val' and back, as for image folders
        names = (split, *SPLIT_ALIASES.get(split, ()))
        self.split = next((s for s in names if os.path.exists(os.path.join(path, f"{s}.json"))), split)
        self.meta = read_metadata(path, self.split)
        self._labels = np.load(os.path.join(path, f"{self.split}.labels.npy"))
        if len(self._labels) != self.meta["count"]:
            raise DataError(f"{os.path.join(path, self.split)}.labels.npy holds {len(self._labels)} labels, "
                            f"{self.split}.json counts {self.meta['count']} images")
        self._files = [os.path.join(path, name) for name in self.meta["shards"]]
        missing = [f for f in self._files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"prepared split {self.split!r} in {path!r} lacks {missing[:3]}; {HOW}")
        self._reader = None

    def __getstate__(self):  # worker processes open their own readers
        return {**self.__dict__, "_reader": None}

    @property
    def reader(self):
        if self._reader is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._reader = ArrayRecordDataSource(self._files)
        return self._reader

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def classes(self):
        return tuple(self.meta["classes"]) if self.meta.get("classes") else None

    @property
    def num_classes(self) -> int | None:
        return self.meta.get("num_classes")

    def raw(self, index: int) -> bytes:
        return self.reader[int(index)]

    def describe(self, index: int) -> str:
        shard = int(index) // self.meta["records_per_shard"]
        return f"prepared {self.path}/{self.split}[{int(index)}] ({self.meta['shards'][shard]})"

    def fingerprint(self) -> str:
        digest = hashlib.sha1(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        return f"prepared:{len(self)}:{digest}"

    def label(self, index: int) -> int:
        return int(self._labels[int(index)])

    def labels(self, indices) -> np.ndarray:
        return self._labels[np.asarray(indices, np.int64)]

    def images(self, indices) -> np.ndarray:
        """Evaluation view: resized and centre-cropped to image_size; a record that cannot be
        decoded is an error here, naming it."""
        from mdistill.data.transforms import Transform, load_image

        transform = Transform(self.image_size, self.channels, "none")
        out = []
        for i in indices:
            try:
                img = load_image(self.raw(i), self.channels, transform.min_side())
            except Exception as e:
                raise DataError(f"cannot decode {self.describe(i)} ({type(e).__name__}: {e})") from e
            out.append(transform(img))
        return np.stack(out)
