"""The shape of a run's inputs: images, or clips of `config.num_frames` frames (> 1) cut
into tubelets of `config.tubelet_size` frames (VideoMAE's video ViT). Everything that needs
to know how many tokens a sample has, and how they are laid out, asks here."""

from __future__ import annotations

import dataclasses

from mdistill import masking
from mdistill.models.vit import Layout, ViTSpec, token_grid


def num_frames(config) -> int:
    """Frames per sample: 1 for images."""
    return int(config.num_frames)


def is_video(config) -> bool:
    return num_frames(config) > 1


def spec_of(config, variant: str) -> ViTSpec:
    """The ViT of `variant` for this run's inputs: MAE's layout for images, VideoMAE's for clips."""
    spec = ViTSpec.parse(variant)
    if is_video(config):
        spec = dataclasses.replace(spec, layout=Layout.video(int(config.tubelet_size)))
    return spec


def student_spec(config) -> ViTSpec:
    return spec_of(config, config.student.variant)


def tokens(config) -> tuple[int, int]:
    """(token steps in time, tokens per frame) of a student input."""
    return token_grid(student_spec(config), config.image_size, num_frames(config))


def num_tokens(config) -> int:
    steps, per_frame = tokens(config)
    return steps * per_frame


def visible_tokens(config, mask_ratio: float) -> int:
    """Tokens a model sees at `mask_ratio` (tubes and VideoMAE's count for clips)."""
    steps, per_frame = tokens(config)
    return masking.visible_tokens(steps * per_frame, mask_ratio, steps)


def sample_shape(config) -> tuple[int, ...]:
    """One uint8 sample: (H, W, C) or (T, H, W, C)."""
    image = (config.image_size, config.image_size, config.data.channels)
    return (num_frames(config), *image) if is_video(config) else image
