"""Clips from a TFDS video dataset (config.data.source='tfds' with config.num_frames > 1), e.g.
`tfds build ucf101 --file_format=array_record`: read without TensorFlow and sampled and cropped
exactly as video files are (mdistill.data.video's TrainClips / EvalClips).

tfds.data_source cannot open such a build without TensorFlow (tfds 4.9.10: the Video
feature's constructor imports it), so the records are read here: ArrayRecord random access
(array_record), each record a tf.train.Example parsed with tfds's own proto. A Video feature
is stored as one encoded image (PNG, or JPEG as UCF101's) per frame; only the frames a clip
samples are decoded (PIL; simplejpeg for JPEG), so a long video costs its sampled frames, not
all of them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mdistill.data.errors import DataError
from mdistill.data.tfds_info import IMAGE, VIDEO, BuildInfo, prepare_hint
from mdistill.data.transforms import decode_jpeg


class EncodedVideo:
    """One record's frames, still encoded: count() and frames(indices) as
    mdistill.data.video.VideoFile, for the same samplers."""

    def __init__(self, encoded, name: str, length: int = -1):
        self.encoded, self.name = list(encoded), name
        if not self.encoded:
            raise DataError(f"{name}: the video has no frames")
        if length > 0 and len(self.encoded) != length:
            raise DataError(f"{name}: the video has {len(self.encoded)} frames, its Video feature declares {length}")

    def count(self) -> int:
        return len(self.encoded)

    def frames(self, indices) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] (RGB; gray frames repeated, as files are decoded)."""
        order = np.asarray(indices, np.int64).reshape(-1)
        if order.size == 0 or order.min() < 0 or order.max() >= len(self.encoded):
            raise ValueError(f"{self.name}: frame indices must lie in [0, {len(self.encoded)}), "
                             f"got {order.tolist()}")
        decoded = {i: self._decode(i) for i in sorted(set(order.tolist()))}
        return np.stack([decoded[i] for i in order.tolist()])

    def _decode(self, i: int) -> np.ndarray:
        data = self.encoded[i]
        # JPEG frames (UCF101's build) by simplejpeg where it can, as prepared JPEG images are
        frame = decode_jpeg(data, 3) if data[:2] == b"\xff\xd8" else None
        if frame is not None:
            return frame
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DataError(f"{self.name}: cannot decode frame {i} ({type(e).__name__}: {e})") from e


def _video_feature(info: BuildInfo, key: str):
    """The Video feature `key`, or a one-line error naming features.json, the field and what
    the dataset holds instead."""
    kinds = info.kinds()
    feature = info.top_level().get(key)
    if feature is None or feature.python_class_name != VIDEO:
        has = ", ".join(f"{k} ({v})" for k, v in sorted(kinds.items()))  # (a proto map has no fixed order)
        videos = sorted(k for k, f in info.top_level().items() if f.python_class_name == VIDEO)
        if videos:
            hint = f"set config.data.video_key={videos[0]!r}"
        elif any(f.python_class_name == IMAGE for f in info.top_level().values()):
            hint = "it holds images: set config.num_frames=1 (and an image model) to read them"
        else:
            hint = "expected a tfds.features.Video feature"
        raise DataError(f"{info.features_file}: config.data.video_key={key!r} is not a Video feature of TFDS "
                        f"dataset {info.name!r} (its features: {has}); {hint}")
    if feature.video.dtype not in ("", "uint8"):
        raise DataError(f"{info.features_file}: TFDS feature {key!r} holds {feature.video.dtype} frames; "
                        "expected uint8")
    return feature


class TFDSVideoSource:
    """Random access to a TFDS split's videos: raw(i) is the record's EncodedVideo (the clip
    transform samples, decodes and crops it in the pipeline's workers), clips(indices) the
    evaluation view (EvalClips), labels from the 'label' feature (ClassLabel: its names)."""

    LABEL = "label"  # the image source's label key too (mdistill.data.tfds_source)

    def __init__(self, name: str, split: str, video_key: str = "video", data_dir: str | None = None,
                 evaluation=None):
        import tensorflow_datasets as tfds
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        from mdistill.data.video import EvalClips

        self.name, self.split, self.data_dir, self.video_key = name, split, data_dir, video_key
        self.evaluation = evaluation or EvalClips()
        info = BuildInfo(name, data_dir)
        if info.file_format != "array_record":
            raise FileNotFoundError(f"TFDS dataset {name!r} in {str(info.directory)!r} is stored as "
                                    f"{info.file_format}, which cannot be read by random access. "
                                    + prepare_hint(name.partition(":")[0], data_dir))
        shape = _video_feature(info, video_key).video.shape.dimensions
        self.length = int(shape[0]) if shape else -1  # -1: the feature's frame count varies
        self.classes = info.class_names(self.LABEL)
        # a tfds split spec ('train', 'train[:80%]', 'train+test') as rows of one reader over its splits' shards
        try:
            parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(info.splits)
        except (ValueError, KeyError) as e:
            raise FileNotFoundError(f"TFDS dataset {name!r} has no split {split!r} ({str(e)[:200]}): it has "
                                    f"{sorted(info.splits)} (set config.data.split / config.eval.*_split)") from None
        names = list(dict.fromkeys(p.splitname for p in parts))
        offsets = np.cumsum([0] + [info.splits[n].num_examples for n in names])
        rows = []
        for p in parts:
            count = info.splits[p.splitname].num_examples
            start, stop, _ = slice(p.from_, p.to).indices(count)
            rows.append(offsets[names.index(p.splitname)] + np.arange(start, stop))
        self._rows = np.concatenate(rows).astype(np.int64)
        self._files = [str(f) for n in names for f in info.splits[n].filepaths]
        self._reader = ArrayRecordDataSource(self._files)
        self._last = (-1, None)  # the last parsed record: a step reads a record's clip, then its label

    def __len__(self) -> int:
        return len(self._rows)

    def _example(self, index: int):
        from tensorflow_datasets.proto import tf_example_pb2

        index, last = int(index), self._last  # one read of the pair: the pipeline's threads share it
        if last[0] == index:
            return last[1]
        feature = tf_example_pb2.Example.FromString(self._reader[int(self._rows[index])]).features.feature
        self._last = (index, feature)
        return feature

    def raw(self, index: int) -> EncodedVideo:
        return EncodedVideo(self._example(index)[self.video_key].bytes_list.value, self.describe(index),
                            self.length)

    def describe(self, index: int) -> str:
        return f"tfds {self.name} {self.split}[{int(index)}] in {self.data_dir or '~/tensorflow_datasets'}"

    def fingerprint(self) -> str:
        return f"tfds:{self.name}:{self.split}:{self.video_key}:{len(self)}"

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def label(self, index: int) -> int:
        feature = self._example(index)
        if self.LABEL not in feature:  # as the image source: labelled_source reports "no labels"
            raise KeyError(self.LABEL)
        return int(feature[self.LABEL].int64_list.value[0])

    def labels(self, indices) -> np.ndarray:
        return np.asarray([self.label(i) for i in indices], np.int32)

    def clips(self, indices) -> np.ndarray:
        """uint8 [len(indices), views, T, size, size, C] (EvalClips); a bad record is an error."""
        return np.stack([self.evaluation(self.raw(i)) for i in indices])

    def __getstate__(self):  # the pipeline's worker processes open their own reader
        state = dict(self.__dict__)
        state["_last"] = (-1, None)
        return state
