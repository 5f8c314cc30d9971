"""TFDS datasets through tfds.data_source (ArrayRecord, random access, no TensorFlow at
run time). Images are resized on the short side and centre-cropped to the config's size."""

from __future__ import annotations

import numpy as np

# Training-split sizes, so that a dry run can plan epochs without the data.
KNOWN_SIZES = {("imagenet2012", "train"): 1281167, ("imagenet2012", "validation"): 50000,
               ("fashion_mnist", "train"): 60000, ("fashion_mnist", "test"): 10000,
               ("cifar10", "train"): 50000, ("cifar10", "test"): 10000}


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    out = np.asarray(pil)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    out = out[top: top + size, left: left + size]
    return out[..., None] if out.ndim == 2 else out


class TFDSSource:
    def __init__(self, name: str, split: str, image_size: int, channels: int, data_dir: str | None = None):
        import tensorflow_datasets as tfds

        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as e:  # tfds raises several types for a dataset that is not prepared
            raise FileNotFoundError(
                f"TFDS dataset {name!r} split {split!r} is not available in data_dir={data_dir!r} ({e}). "
                f"Prepare it first, e.g. `tfds build {name} --data_dir=...` (imagenet2012 needs its "
                "manual download in <data_dir>/downloads/manual).") from e
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self._source)

    def _image(self, record) -> np.ndarray:
        img = np.asarray(record["image"])
        if img.shape[-1] != self.channels:
            img = np.repeat(img[..., :1], self.channels, axis=-1) if self.channels == 3 else img[..., :1]
        return resize_center_crop(img, self.image_size)

    def images(self, indices) -> np.ndarray:
        return np.stack([self._image(self._source[int(i)]) for i in indices])

    def labels(self, indices) -> np.ndarray:
        return np.asarray([self._source[int(i)]["label"] for i in indices], np.int32)
