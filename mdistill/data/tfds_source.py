"""TFDS datasets through tfds.data_source (ArrayRecord, random access, no TensorFlow at
run time): imagenet2012, fashion_mnist, cifar10, ... prepared beforehand in a data_dir.
raw(i) is the decoded uint8 image at its stored size; images() is the evaluation view
(resize + centre crop to the config's size)."""

from __future__ import annotations

import numpy as np

from mdistill.data.errors import DataError
from mdistill.data.tfds_info import VIDEO, BuildInfo, prepare_hint

# Split sizes, so that a dry run can plan epochs without the data.
KNOWN_SIZES = {("imagenet2012", "train"): 1281167, ("imagenet2012", "validation"): 50000,
               ("fashion_mnist", "train"): 60000, ("fashion_mnist", "test"): 10000,
               ("cifar10", "train"): 50000, ("cifar10", "test"): 10000}


def open_data_source(name: str, split: str, data_dir: str | None):
    """tfds.data_source, never downloading; a missing dataset, split or the wrong file format
    fails with what is missing and how to prepare it."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises many types; find out which thing is missing
        cause = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:
        raise FileNotFoundError(f"TFDS has no dataset {name!r} ({type(e).__name__}; check config.data.name)") from None
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. "
                                + prepare_hint(name, data_dir))
    splits = sorted(builder.info.splits)
    base = split.split("[")[0]
    if base not in splits:
        raise FileNotFoundError(f"TFDS dataset {name!r} has no split {base!r}: it has {splits} "
                                "(set config.data.split / config.eval.*_split)")
    raise FileNotFoundError(f"TFDS dataset {name!r} split {split!r} in {builder.data_dir!r} cannot be read by "
                            f"random access ({cause}). It must be prepared as ArrayRecord. "
                            + prepare_hint(name, data_dir))


def refuse_videos(name: str, data_dir: str | None) -> None:
    """A dataset whose features hold a Video and no 'image' is refused in one line: asked for
    images (config.num_frames=1), it would otherwise fail record by record (or, without
    TensorFlow, on tfds's Video feature importing it)."""
    try:
        info = BuildInfo(name, data_dir)
        features, where = info.top_level(), info.features_file
    except Exception:  # not prepared, or an old build: tfds.data_source's own failure says more
        return
    videos = sorted(k for k, f in features.items() if f.python_class_name == VIDEO)
    if videos and "image" not in features:
        raise DataError(f"{where}: TFDS dataset {name!r} holds videos (feature {videos[0]!r}), not images, but "
                        "config.num_frames=1 asks for images: set --config.num_frames to the clips' length "
                        "(e.g. 16) and a video model")


class TFDSSource:
    def __init__(self, name: str, split: str, image_size: int, channels: int, data_dir: str | None = None):
        self.name, self.split, self.data_dir = name, split, data_dir
        refuse_videos(name, data_dir)
        self._source = open_data_source(name, split, data_dir)
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self._source)

    def raw(self, index: int) -> np.ndarray:
        """The decoded image, uint8 [H, W, C] at its stored size."""
        return np.asarray(self._source[int(index)]["image"])

    def describe(self, index: int) -> str:
        return f"tfds {self.name} {self.split}[{int(index)}] in {self.data_dir or '~/tensorflow_datasets'}"

    def fingerprint(self) -> str:
        return f"tfds:{self.name}:{self.split}:{len(self)}"

    def images(self, indices) -> np.ndarray:
        """Evaluation view: short side to image_size / 0.875, centre crop (MAE's 256 -> 224)."""
        from mdistill.data.transforms import Transform

        transform = Transform(self.image_size, self.channels, "none")
        return np.stack([transform(self.raw(i)) for i in indices])

    @property
    def num_classes(self) -> int | None:
        """The label feature's class count from the dataset's metadata (None if it has none)."""
        try:
            return int(self._source.dataset_info.features["label"].num_classes)
        except (AttributeError, KeyError, TypeError):
            return None

    def label(self, index: int) -> int:
        return int(self._source[int(index)]["label"])

    def labels(self, indices) -> np.ndarray:
        return np.asarray([self.label(i) for i in indices], np.int32)
