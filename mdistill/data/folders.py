"""Listing the class subfolders of a dataset split, shared by the image and video folder
sources (<root>/<split>/<class>/<file>): sorted names, hidden entries and broken links left
out, and an error that says what is there when the split folder is missing."""

from __future__ import annotations

import os


# Names one split goes by: ImageNet's folder holds val/, TFDS calls it 'validation'.
SPLIT_ALIASES = {"validation": ("val",), "val": ("validation",)}


def split_dir(root: str, split: str) -> str:
    """<root>/<split>, or the folder of a name that split goes by where only that exists
    (config.eval.test_split='validation' reads an ImageNet-style val/)."""
    wanted = os.path.join(root, split)
    if os.path.isdir(wanted):
        return wanted
    for alias in SPLIT_ALIASES.get(split, ()):
        if os.path.isdir(os.path.join(root, alias)):
            return os.path.join(root, alias)
    return wanted


def is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop (ELOOP): no folder
        return False


def class_folders(split_dir: str, what: str, expected: str) -> list[str]:
    """The sorted class subfolders of split_dir, or an error naming what is there instead."""
    if not os.path.isdir(split_dir):
        parent = os.path.dirname(split_dir)
        there = sorted(os.listdir(parent)) if os.path.isdir(parent) else None
        raise FileNotFoundError(
            f"{what} {split_dir!r} does not exist"
            + (f" ({parent!r} holds {there[:10]})" if there is not None else f" (nor does {parent!r})")
            + f". Expected {expected}.")
    return sorted(e.name for e in os.scandir(split_dir) if is_dir(e) and not e.name.startswith("."))
