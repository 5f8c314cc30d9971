"""Synthetic images with learnable structure: oriented colour gratings whose orientation
and frequency depend on the class, with random phase, colour and a little noise. Each
image is a pure function of (seed, index). With frames > 1, clips [T, H, W, C]: the grating
drifts across the frames, one way for even classes and the other way for odd ones."""

from __future__ import annotations

import numpy as np


class SyntheticSource:
    def __init__(self, size: int = 1024, image_size: int = 32, channels: int = 3,
                 num_classes: int = 10, seed: int = 0, frames: int = 1):
        self.size, self.image_size, self.channels = size, image_size, channels
        self.num_classes, self.seed, self.frames = num_classes, seed, frames

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        return index % self.num_classes

    def image(self, index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index))
        c = self.label(index)
        theta = np.pi * c / self.num_classes
        freq = (1 + c % 3) * 2 * np.pi / self.image_size
        y, x = np.mgrid[: self.image_size, : self.image_size].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi)
        colour = rng.uniform(0.3, 1.0, self.channels)
        drift = (1.0 if c % 2 else -1.0) * 0.6  # radians per frame
        frames = []
        for t in range(self.frames):
            wave = np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)) + phase + drift * t)
            noise = rng.normal(0, 0.03, (self.image_size, self.image_size, self.channels))
            frames.append(0.5 + 0.4 * wave[..., None] * colour + noise)
        clip = (np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)
        return clip if self.frames > 1 else clip[0]

    raw = image

    def describe(self, index: int) -> str:
        return f"synthetic[{int(index)}]"

    def fingerprint(self) -> str:
        clips = f":{self.frames}f" if self.frames > 1 else ""
        return f"synthetic:{self.size}:{self.image_size}:{self.channels}:{self.num_classes}:{self.seed}{clips}"

    def images(self, indices) -> np.ndarray:
        return np.stack([self.image(int(i)) for i in indices])

    def labels(self, indices) -> np.ndarray:
        return np.asarray([self.label(int(i)) for i in indices], np.int32)
