"""Moving Fashion-MNIST: a small real video dataset with a label that needs time.

  python -m scripts.make_moving_fmnist --out=/data/moving_fmnist
  python -m scripts.make_moving_fmnist --out=/tmp/mf --train_clips=64 --test_clips=16 --directions=4

(from the repository root; `python scripts/make_moving_fmnist.py ...` runs the same where mdistill
is installed.)

Each clip shows one Fashion-MNIST object (28x28, from the IDX files read by
mdistill.data.fashion_mnist; training clips from its train split, test clips from its test
split) moving in a straight line at --speed pixels per frame across a black --canvas x
--canvas frame, for --frames frames, from a random start that keeps it whole in every frame.
The directions are --directions angles evenly spread counter-clockwise from east (image y
points down). Two labels per clip: its direction (a single frame cannot tell it) and the
object's class (a single frame suffices). Directions are balanced; the objects are drawn
without replacement. Everything is a pure function of --seed.

Layout (each clip is written once; the class tree holds hard links to the same files):

  <out>/direction/{train,test}/<k>_<direction>/<clip>.mp4   VideoFolderSource(<out>/direction, split)
  <out>/class/{train,test}/<k>_<class>/<clip>.mp4           VideoFolderSource(<out>/class, split)
  <out>/direction/{train,test}.csv, <out>/class/{train,test}.csv
      VideoMAE's list form, '<path> <label>' with paths relative to the csv's folder
      (VideoListSource(csv)); --absolute_paths writes absolute ones, as the official loaders
      need (they open the listed path as it is)
  <out>/meta.json   the flags, label names, every clip's object / direction / start, and the
                    measured codec round-trip error

Encoding: H.264 (libx264) in MP4, YUV 4:2:0, --crf 0 (lossless in YUV: a gray object comes
back within 1 level, only RGB <-> YUV rounding; the official readers, decord and PyAV, are
FFmpeg and decode it). Every clip is decoded back after writing and the largest and mean
absolute differences from the drawn frames are reported (and stored in meta.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
from absl import app, flags

from mdistill.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
from mdistill.data.video import read_frames, write_video

CLASS_NAMES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle_boot")
COMPASS = {4: ("east", "north", "west", "south"),
           8: ("east", "northeast", "north", "northwest", "west", "southwest", "south", "southeast")}
OBJECT = 28  # Fashion-MNIST's side


def direction_names(directions: int) -> list[str]:
    """Folder names whose sorted order is the label order: '<k>_<name>' with k zero-padded."""
    width = len(str(directions - 1))
    names = COMPASS.get(directions) or [f"{round(360 * k / directions)}deg" for k in range(directions)]
    return [f"{k:0{width}d}_{name}" for k, name in enumerate(names)]


def velocity(direction: int, directions: int, speed: float) -> tuple[float, float]:
    """(dx, dy) in pixels per frame; y grows downwards, so north is -y."""
    angle = 2 * math.pi * direction / directions
    return speed * math.cos(angle), -speed * math.sin(angle)


def start_range(v: float, canvas: int, frames: int) -> tuple[float, float]:
    """Starts along one axis that keep the object inside the canvas in every frame."""
    travel = v * (frames - 1)
    return max(0.0, -travel), canvas - OBJECT - max(0.0, travel)


def draw_clip(image: np.ndarray, start: tuple[float, float], v: tuple[float, float], canvas: int,
              frames: int) -> np.ndarray:
    """uint8 [frames, canvas, canvas, 1]: the object pasted at its rounded position each frame."""
    clip = np.zeros((frames, canvas, canvas, 1), np.uint8)
    for t in range(frames):
        x, y = round(start[0] + v[0] * t), round(start[1] + v[1] * t)
        clip[t, y:y + OBJECT, x:x + OBJECT] = image.reshape(OBJECT, OBJECT, 1)
    return clip


def plan_split(source: FashionMNISTSource, count: int, directions: int, speed: float, canvas: int, frames: int,
               rng: np.random.Generator) -> list[dict]:
    """Clip records: balanced directions in random order, objects without replacement."""
    if count > len(source):
        raise ValueError(f"{count} clips asked for, Fashion-MNIST {source.split} has {len(source)} objects")
    objects = rng.choice(len(source), size=count, replace=False)
    dirs = rng.permutation(np.arange(count) % directions)
    clips = []
    for obj, d in zip(objects.tolist(), dirs.tolist()):
        v = velocity(d, directions, speed)
        (x0, x1), (y0, y1) = start_range(v[0], canvas, frames), start_range(v[1], canvas, frames)
        clips.append({"object": obj, "class": source.label(obj), "direction": d,
                      "start": [float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))], "velocity": list(v)})
    return clips


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, dst)


def write_lists(out: str, tree: str, split: str, rows: list[tuple[str, int]], absolute: bool) -> None:
    base = os.path.join(out, tree)
    with open(os.path.join(base, f"{split}.csv"), "w") as f:
        for rel, label in rows:
            f.write(f"{os.path.abspath(os.path.join(base, rel)) if absolute else rel} {label}\n")


def build(out: str, fmnist_dir: str = DEFAULT_DIR, train_clips: int = 1000, test_clips: int = 200,
          canvas: int = 64, frames: int = 16, directions: int = 8, speed: float = 2.0, fps: int = 25,
          crf: int = 0, seed: int = 0, absolute_paths: bool = False) -> dict:
    """Writes the dataset under `out` (which must not hold one yet); returns meta.json's content."""
    if directions < 2:
        raise ValueError(f"--directions={directions}: at least 2")
    if canvas % 2 or canvas < OBJECT:
        raise ValueError(f"--canvas={canvas}: an even size of at least {OBJECT} (YUV 4:2:0 needs even sides)")
    travel = speed * (frames - 1)
    if travel > canvas - OBJECT:
        raise ValueError(f"an object moving {speed} px/frame for {frames} frames travels {travel:g} px; "
                         f"the canvas leaves {canvas - OBJECT}: lower --speed or --frames, or raise --canvas")
    for tree in ("direction", "class"):
        if os.path.exists(os.path.join(out, tree)):
            raise FileExistsError(f"{os.path.join(out, tree)} exists: remove it or choose another --out")
    dir_names = direction_names(directions)
    meta = {"canvas": canvas, "frames": frames, "directions": dir_names, "classes": list(CLASS_NAMES),
            "speed": speed, "fps": fps, "codec": "libx264", "pix_fmt": "yuv420p", "crf": crf, "seed": seed,
            "fashion_mnist": fmnist_dir, "splits": {}}
    sources = {split: FashionMNISTSource(split, fmnist_dir) for split in ("train", "test")}  # fail before writing
    for split_id, (split, count) in enumerate((("train", train_clips), ("test", test_clips))):
        source = sources[split]
        clips = plan_split(source, count, directions, speed, canvas, frames, np.random.default_rng((seed, split_id)))
        width = len(str(max(count - 1, 0)))
        max_err, sum_err, pixels, rows = 0, 0, 0, {"direction": [], "class": []}
        for i, clip in enumerate(clips):
            name = f"{i:0{width}d}.mp4"
            by_dir = os.path.join(split, dir_names[clip["direction"]], name)
            by_class = os.path.join(split, f"{clip['class']}_{CLASS_NAMES[clip['class']]}", name)
            drawn = draw_clip(source.raw(clip["object"]), clip["start"], clip["velocity"], canvas, frames)
            path = os.path.join(out, "direction", by_dir)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_video(path, drawn, fps=fps, crf=crf)
            os.makedirs(os.path.dirname(os.path.join(out, "class", by_class)), exist_ok=True)
            link_or_copy(path, os.path.join(out, "class", by_class))
            err = np.abs(read_frames(path, range(frames)).astype(np.int16) - drawn)  # drawn gray vs decoded RGB
            max_err, sum_err, pixels = max(max_err, int(err.max())), sum_err + int(err.sum()), pixels + err.size
            clip.update(file=by_dir, class_file=by_class)
            rows["direction"].append((by_dir, clip["direction"]))
            rows["class"].append((by_class, clip["class"]))
        for tree in ("direction", "class"):
            os.makedirs(os.path.join(out, tree, split), exist_ok=True)  # a split of 0 clips still has its folder
            write_lists(out, tree, split, rows[tree], absolute_paths)
        meta["splits"][split] = {"clips": clips, "round_trip_max_abs_error": max_err,
                                 "round_trip_mean_abs_error": sum_err / max(pixels, 1)}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def define_flags() -> None:
    flags.DEFINE_string("out", None, "output folder (its direction/ and class/ must not exist yet)", required=True)
    flags.DEFINE_string("fmnist_dir", DEFAULT_DIR, "folder of the Fashion-MNIST IDX files (*-ubyte or *-ubyte.gz)")
    flags.DEFINE_integer("train_clips", 1000, "training clips (objects from Fashion-MNIST's train split)")
    flags.DEFINE_integer("test_clips", 200, "test clips (objects from Fashion-MNIST's test split)")
    flags.DEFINE_integer("canvas", 64, "frame side in pixels (even)")
    flags.DEFINE_integer("frames", 16, "frames per clip")
    flags.DEFINE_integer("directions", 8, "directions of motion, evenly spread (4 and 8 get compass names)")
    flags.DEFINE_float("speed", 2.0, "pixels per frame")
    flags.DEFINE_integer("fps", 25, "frame rate written in the files")
    flags.DEFINE_integer("crf", 0, "libx264 constant rate factor (0: lossless in YUV)")
    flags.DEFINE_integer("seed", 0, "the dataset is a pure function of it")
    flags.DEFINE_bool("absolute_paths", False, "absolute paths in the .csv lists (as the official loaders need)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    a = flags.FLAGS
    try:
        meta = build(a.out, a.fmnist_dir, a.train_clips, a.test_clips, a.canvas, a.frames, a.directions, a.speed,
                     a.fps, a.crf, a.seed, a.absolute_paths)
    except (ValueError, OSError) as e:  # bad flags, missing Fashion-MNIST, an existing output: one line
        raise SystemExit(f"make_moving_fmnist: {e}")
    for split, s in meta["splits"].items():
        print(json.dumps({"split": split, "clips": len(s["clips"]), "round_trip_max_abs_error":
                          s["round_trip_max_abs_error"], "round_trip_mean_abs_error":
                          round(s["round_trip_mean_abs_error"], 4), "out": a.out}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
