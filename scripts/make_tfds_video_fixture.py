"""The TFDS video fixture of tests/test_tfds_video.py: a tiny dataset in the real TFDS format.

  /work/tfenv/bin/python scripts/make_tfds_video_fixture.py --out=tests/fixtures/tfds_video

Needs TensorFlow and tensorflow_datasets (TFDS's Video feature and its writer import TensorFlow),
so run it from a separate environment (python -m venv /work/tfenv; /work/tfenv/bin/pip install
tensorflow-cpu tensorflow_datasets array_record); mdistill itself reads the result without TensorFlow.

`moving_squares` has UCF101's features in TFDS (`video`: Video, uint8 [T, H, W, 3] stored as
one PNG per frame; `label`: ClassLabel) and its split names (train, test), but is not UCF101:
a square of a random colour moves across a gray frame to the right, to the left or downwards
(the class), wrapping at the edge, from a random start. A single frame cannot tell the class.
Written as ArrayRecord (`tfds build ... --file_format=array_record`'s format). Every record's
content is a pure function of --seed; the shard files' bytes may still differ between runs, as
the order in which a tf.Example stores its two features (a protobuf map) is not fixed.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from absl import app, flags

CLASSES = ("right", "left", "down")
STEP = {"right": (0, 1), "left": (0, -1), "down": (1, 0)}  # (dy, dx) per frame, in squares' speed units


def clip(label: int, rng: np.random.Generator, frames: int, size: int, square: int, speed: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]: one square moving in direction CLASSES[label], wrapping."""
    dy, dx = STEP[CLASSES[label]]
    y, x = rng.integers(size, size=2)
    colour = rng.integers(128, 256, size=3)
    out = np.full((frames, size, size, 3), 40, np.uint8)
    rows, cols = np.arange(square), np.arange(square)
    for t in range(frames):
        ys, xs = (y + dy * speed * t + rows) % size, (x + dx * speed * t + cols) % size
        out[t][np.ix_(ys, xs)] = colour
    return out


def examples(split: str, count: int, seed: int, frames: int, size: int, square: int, speed: int):
    """(key, example) pairs with balanced classes; the split's seed differs, so no clip repeats."""
    rng = np.random.default_rng((seed, ("train", "test").index(split)))
    for i in range(count):
        label = i % len(CLASSES)
        yield f"{split}_{i:03d}", {"video": clip(label, rng, frames, size, square, speed), "label": label}


def make_builder(frames: int, size: int):
    import tensorflow_datasets as tfds

    class MovingSquares(tfds.core.GeneratorBasedBuilder):
        """Squares moving right, left or down (UCF101's TFDS features, not UCF101)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "mdistill's test fixture (scripts/make_tfds_video_fixture.py)."}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Squares moving right, left or down; UCF101's TFDS features, not UCF101.",
                features=tfds.features.FeaturesDict({
                    "video": tfds.features.Video(shape=(frames, size, size, 3)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }),
                supervised_keys=("video", "label"),
            )

        def _split_generators(self, dl_manager):
            f = flags.FLAGS
            return {split: examples(split, n, f.seed, frames, size, f.square, f.speed)
                    for split, n in (("train", f.train_clips), ("test", f.test_clips))}

        def _generate_examples(self):  # not used: the split generators above yield the examples
            raise NotImplementedError

    return MovingSquares


def main(argv):
    del argv
    f = flags.FLAGS
    import tensorflow_datasets as tfds

    target = os.path.join(f.out, "moving_squares")
    if os.path.exists(target):
        shutil.rmtree(target)  # regenerate from scratch, not on top of an older build
    builder = make_builder(f.frames, f.size)(data_dir=f.out, file_format=tfds.core.FileFormat.ARRAY_RECORD)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    shutil.rmtree(os.path.join(f.out, "downloads"), ignore_errors=True)  # empty: nothing is downloaded
    written = sorted(os.path.relpath(os.path.join(d, n), f.out) for d, _, files in os.walk(target) for n in files)
    print("\n".join(written), file=sys.stderr)


if __name__ == "__main__":
    flags.DEFINE_string("out", "tests/fixtures/tfds_video", "TFDS data_dir the dataset is written into.")
    flags.DEFINE_integer("train_clips", 12, "Clips in the train split (classes balanced).")
    flags.DEFINE_integer("test_clips", 6, "Clips in the test split.")
    flags.DEFINE_integer("frames", 16, "Frames per clip.")
    flags.DEFINE_integer("size", 32, "Frame side in pixels.")
    flags.DEFINE_integer("square", 8, "The square's side in pixels.")
    flags.DEFINE_integer("speed", 2, "Pixels the square moves per frame.")
    flags.DEFINE_integer("seed", 0, "Seed of the colours and starts.")
    app.run(main)
