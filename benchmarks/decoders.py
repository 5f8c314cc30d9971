"""JPEG decoders on the host, per CPU-second: PIL (with and without draft, PIL's DCT-scaled
decoding), simplejpeg (with and without its DCT scaling, min_height/min_width) and
PyTurboJPEG where its library loads. Each decoder runs over the same files in memory,
interleaved in rounds (the machine may be shared), on the original JPEGs of a folder and on
the same images stored with the short side at --short_side (what mdistill.data.prepare writes).

  python -m benchmarks.decoders                       # the synthetic folder of benchmarks.pipeline
  python -m benchmarks.decoders --folder=/data/imagenet --split=train

One JSON line per (files, decoder) with images_per_cpu_second, then the fastest per set.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
from absl import app, flags


def decoders(min_side: int) -> dict:
    """name -> bytes -> uint8 array (RGB)."""
    from PIL import Image

    def pil(data):
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))

    def pil_draft(data):
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (min_side, min_side))
            return np.asarray(img.convert("RGB"))

    out = {"pil": pil, "pil_draft": pil_draft}
    try:
        import simplejpeg

        out["simplejpeg"] = lambda data: simplejpeg.decode_jpeg(data, "RGB")
        out["simplejpeg_scaled"] = lambda data: simplejpeg.decode_jpeg(data, "RGB", min_height=min_side,
                                                                        min_width=min_side)
    except ImportError:
        pass
    try:
        from turbojpeg import TurboJPEG

        turbo = TurboJPEG()
        out["turbojpeg"] = lambda data: turbo.decode(data)
    except Exception as e:  # the package installs, its shared library (libturbojpeg) may not be there
        print(json.dumps({"bench": "decoder_unavailable", "decoder": "turbojpeg", "why": str(e)[:200]}), flush=True)
    return out


def resized_copies(blobs: list[bytes], short_side: int, quality: int) -> list[bytes]:
    from mdistill.data.prepare import encode_jpeg, resize_short_side
    from mdistill.data.transforms import load_image

    return [encode_jpeg(resize_short_side(load_image(b, 3), short_side), quality) for b in blobs]


def run(sets: dict, min_side: int, rounds: int, per_round: float) -> list[dict]:
    fns = decoders(min_side)
    totals = {(s, d): [0, 0.0] for s in sets for d in fns}
    for _ in range(rounds):
        for s, blobs in sets.items():
            for d, fn in fns.items():
                n, c0, t0 = 0, time.process_time(), time.perf_counter()
                while time.perf_counter() - t0 < per_round:
                    fn(blobs[n % len(blobs)])
                    n += 1
                totals[(s, d)][0] += n
                totals[(s, d)][1] += time.process_time() - c0
    records = []
    for (s, d), (n, cpu) in totals.items():
        records.append({"bench": "decode", "files": s, "decoder": d, "images": n, "cpu_seconds": round(cpu, 2),
                        "images_per_cpu_second": round(n / cpu, 1)})
        print(json.dumps(records[-1]), flush=True)
    for s in sets:
        best = max((r for r in records if r["files"] == s), key=lambda r: r["images_per_cpu_second"])
        print(json.dumps({"bench": "fastest", "files": s, "decoder": best["decoder"],
                          "images_per_cpu_second": best["images_per_cpu_second"]}), flush=True)
    return records


def main(argv):
    del argv
    args = flags.FLAGS
    from benchmarks.pipeline import write_jpeg_folder
    from mdistill.data.image_folder import ImageFolderSource
    from mdistill.data.transforms import Transform

    root = args.folder or write_jpeg_folder(os.path.join(args.workdir, "jpegs"), args.num_images)
    source = ImageFolderSource(root, args.split, args.image_size, 3)
    count = min(len(source), args.files)
    blobs = []
    for i in range(count):
        with open(source.path(i), "rb") as f:
            blobs.append(f.read())
    sets = {"original": blobs,
            f"short{args.short_side}_q{args.quality}": resized_copies(blobs, args.short_side, args.quality)}
    min_side = Transform(args.image_size, 3, "mae").min_side()  # what pre-training's crops need
    print(json.dumps({"bench": "setup", "root": root, "files": count, "min_side": min_side,
                      "cpu_cores": os.cpu_count(), "load_average": os.getloadavg()[0]}), flush=True)
    run(sets, min_side, args.rounds, args.seconds)


if __name__ == "__main__":
    flags.DEFINE_string("folder", "", "an image folder; default: benchmarks.pipeline's synthetic JPEGs")
    flags.DEFINE_string("split", "train", "the folder's split")
    flags.DEFINE_string("workdir", "/tmp/mdistill-bench", "where the synthetic JPEG folder goes")
    flags.DEFINE_integer("num_images", 512, "synthetic JPEGs to write")
    flags.DEFINE_integer("files", 200, "files decoded (held in memory)")
    flags.DEFINE_integer("image_size", 224, "crop size (sets the draft decoders' minimum side)")
    flags.DEFINE_integer("short_side", 256, "short side of the resized copies")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the resized copies")
    flags.DEFINE_integer("rounds", 3, "interleaved rounds")
    flags.DEFINE_float("seconds", 1.5, "seconds per decoder per round")
    app.run(main)
