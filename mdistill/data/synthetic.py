"""Synthetic images with learnable structure: oriented colour gratings whose orientation
and frequency depend on the class, with random phase, colour and a little noise. Each
image is a pure function of (seed, index)."""

from __future__ import annotations

import numpy as np


class SyntheticSource:
    def __init__(self, size: int = 1024, image_size: int = 32, channels: int = 3,
                 num_classes: int = 10, seed: int = 0):
        self.size, self.image_size, self.channels = size, image_size, channels
        self.num_classes, self.seed = num_classes, seed

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
        wave = np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
        colour = rng.uniform(0.3, 1.0, self.channels)
        noise = rng.normal(0, 0.03, (self.image_size, self.image_size, self.channels))
        img = 0.5 + 0.4 * wave[..., None] * colour + noise
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)

    raw = image

    def describe(self, index: int) -> str:
        return f"synthetic[{int(index)}]"

    def fingerprint(self) -> str:
        return f"synthetic:{self.size}:{self.image_size}:{self.channels}:{self.num_classes}:{self.seed}"

    def images(self, indices) -> np.ndarray:
        return np.stack([self.image(int(i)) for i in indices])

    def labels(self, indices) -> np.ndarray:
        return np.asarray([self.label(int(i)) for i in indices], np.int32)
