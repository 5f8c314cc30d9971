"""An image folder in the ImageNet layout, <root>/<split>/<class>/<image>, for users who
have raw JPEGs (or PNGs, ...) and no TFDS build. Labels are the indices of the sorted
class folder names. Files are listed once, sorted, so every host and every worker sees the
same order; decoding happens in the pipeline's workers (mdistill/data/transforms.py)."""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np

from mdistill.data.folders import class_folders, is_dir, split_dir

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = "<path>/<split>/<class>/<image> (ImageNet layout: train/n01440764/n01440764_10026.JPEG)"


@functools.lru_cache(maxsize=4)
def list_folder(split_dir: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(class names, relative paths as bytes, labels), sorted; cached so that planning and
    training list a large folder once."""
    classes = class_folders(split_dir, "image folder",
                            f"{LAYOUT}; config.data.path is <path>, the split names <split>")
    paths, labels = [], []
    for label, name in enumerate(classes):
        # links that lead nowhere (dangling, or a loop) are listed too: reading them fails by
        # name in the pipeline, which skips and counts them like corrupt files
        files = sorted(e.name for e in os.scandir(os.path.join(split_dir, name))
                       if (e.is_symlink() or e.is_file()) and not is_dir(e) and not e.name.startswith(".")
                       and e.name.lower().endswith(EXTENSIONS))
        paths += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    if not paths:
        loose = [e.name for e in os.scandir(split_dir) if e.name.lower().endswith(EXTENSIONS)][:3]
        raise FileNotFoundError(
            f"no images in {split_dir!r}: expected {LAYOUT}, one subfolder per class"
            + (f"; found images directly in it ({loose}): move them into class subfolders" if loose else ""))
    return tuple(classes), np.asarray([p.encode() for p in paths]), np.asarray(labels, np.int32)


class ImageFolderSource:
    """Random access to <root>/<split>/<class>/<image>: raw(i) is the file's path; images()
    decodes and centre-crops for evaluation."""

    def __init__(self, root: str, split: str, image_size: int, channels: int = 3):
        self.root, self.split, self.image_size, self.channels = root, split, image_size, channels
        self.directory = split_dir(root, split)
        self.classes, self._paths, self._labels = list_folder(os.path.abspath(self.directory))

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, index: int) -> str:
        return os.path.join(self.directory, self._paths[int(index)].decode())

    raw = path  # the pipeline decodes the file itself (mdistill.data.transforms.load_image)
    describe = path

    def fingerprint(self) -> str:
        """Changes when a file is added, removed or renamed (which would change the data order)."""
        digest = hashlib.sha1(b"\n".join(self._paths.tolist())).hexdigest()[:16]
        return f"folder:{len(self)}:{digest}"

    def label(self, index: int) -> int:
        return int(self._labels[int(index)])

    def labels(self, indices) -> np.ndarray:
        return self._labels[np.asarray(indices, np.int64)]

    def images(self, indices) -> np.ndarray:
        """Evaluation view: resized and centre-cropped to image_size. A file that cannot be
        decoded is an error here, naming it (training skips such files instead)."""
        from mdistill.data.errors import DataError
        from mdistill.data.transforms import Transform, load_image

        transform = Transform(self.image_size, self.channels, "none")
        out = []
        for i in indices:
            try:
                img = load_image(self.path(i), self.channels, transform.min_side())
            except Exception as e:
                raise DataError(f"cannot decode image {self.path(i)!r} ({type(e).__name__}: {e})") from e
            out.append(transform(img))
        return np.stack(out)
