"""The data source a config names (config.data.source), and the training set's size."""

from __future__ import annotations

from mdistill.data.fashion_mnist import SPLIT_SIZES as FMNIST_SIZES, FashionMNISTSource
from mdistill.data.image_folder import ImageFolderSource
from mdistill.data.kinds import VIDEO_SOURCES, gives_clips
from mdistill.data.prepared import PreparedSource
from mdistill.data.synthetic import SyntheticSource
from mdistill.data.tfds_source import KNOWN_SIZES, TFDSSource

SOURCES = ("synthetic", "fashion_mnist", "tfds", "folder", "prepared", *VIDEO_SOURCES)


def _eval_clips(config):
    from mdistill.data.video import EvalClips

    return EvalClips(config.image_size, int(config.num_frames), config.data.sampling_rate,
                     channels=config.data.channels)


def build_source(config, split: str | None = None):
    d = config.data
    split = split or d.split
    if d.source == "synthetic":
        return SyntheticSource(d.synthetic_size, config.image_size, d.channels, seed=config.seed,
                               frames=int(config.num_frames))
    if d.source == "fashion_mnist":
        return FashionMNISTSource(split, d.path, d.channels)
    if d.source == "tfds" and gives_clips(config):  # a Video feature, sampled as video files are
        from mdistill.data.tfds_video import TFDSVideoSource

        return TFDSVideoSource(d.name, split, d.video_key, d.data_dir, _eval_clips(config))
    if d.source == "tfds":
        return TFDSSource(d.name, split, config.image_size, d.channels, d.data_dir)
    if d.source == "folder":
        return ImageFolderSource(d.path, split, config.image_size, d.channels)
    if d.source == "prepared":  # shards written by mdistill.data.prepare, in data.path
        return PreparedSource(d.path, split, config.image_size, d.channels)
    if d.source in VIDEO_SOURCES:  # clips: VideoMAE's sampling (mdistill.data.video)
        from mdistill.data.video import VideoFolderSource, VideoListSource

        evaluation = _eval_clips(config)
        if d.source == "video_folder":
            return VideoFolderSource(d.path, split, evaluation)
        return VideoListSource(d.path, d.root or None, evaluation)
    raise ValueError(f"config.data.source={d.source!r}: expected one of {SOURCES}")


def dataset_size(config) -> int:
    """Number of training examples, known without reading the data where possible (an
    image folder is listed; the listing is cached for the run)."""
    d = config.data
    if d.size > 0:  # a published count, for planning the epochs (video configs)
        return int(d.size)
    if d.source == "synthetic":
        return d.synthetic_size
    if d.source == "fashion_mnist":
        return FMNIST_SIZES[d.split]
    if d.source == "tfds" and (d.name, d.split) in KNOWN_SIZES:
        return KNOWN_SIZES[(d.name, d.split)]
    return len(build_source(config))


def records_per_step(config) -> int:
    """Records a step reads: the batch counts rows (clips), and with repeated sampling
    (config.data.num_sample, VideoMAE's) each video read gives num_sample of them."""
    return config.batch_size // config.data.num_sample
