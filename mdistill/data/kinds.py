"""What a config's data source gives: clips (videos, sampled as VideoMAE does by
mdistill.data.video) or images. Apart from mdistill.data.sources, so the transforms can ask
without importing the sources (which import the transforms)."""

from __future__ import annotations

VIDEO_SOURCES = ("video_folder", "video_list")  # video files, decoded and sampled by mdistill.data.video


def gives_clips(config) -> bool:
    """Whether the source gives clips: video files, or a TFDS dataset's Video feature
    (config.data.video_key) when config.num_frames > 1 (with 1, a TFDS dataset gives images)."""
    return config.data.source in VIDEO_SOURCES or (config.data.source == "tfds" and int(config.num_frames) > 1)
