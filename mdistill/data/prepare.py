"""Write a dataset once as prepared shards (config.data.source='prepared'): the images of a
config's data source, stored pre-resized and encoded, in ArrayRecord files that
mdistill.data.prepared reads by random access.

  python -m mdistill.data.prepare --config=configs/dmae_vitb.py \
      --config.data.source=folder --config.data.path=/data/imagenet --out=/data/imagenet-256 \
      --splits=train,validation

What is stored, per split <out>/<split>.json (written last: a split without it is
incomplete), <out>/<split>.labels.npy and <out>/<split>-NNNNN.array_record:
- each image with its short side reduced to --short_side (bicubic, antialiased; 256 serves
  224 px training as FFCV and big_vision do; 0 or an image already that small: kept as it
  is), in the config's channels (data.channels);
- encoded as JPEG at --quality (default 90, as FFCV), or as raw pixels (a .npy record) with
  --encoding=raw, which --encoding=auto (the default) picks for images of at most
  64 x 64 pixels (Fashion-MNIST, CIFAR). A source JPEG kept at its size is stored byte for
  byte (no second lossy encoding): its pixels are the folder's;
- its label (-1 where the source has none) and the class names (an image folder's).
A record that cannot be read (corrupt, truncated) is left out and named in the metadata
('skipped'), so the prepared split holds the rest in the source's order.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from mdistill.data.prepared import FORMAT, VERSION

ENCODINGS = ("auto", "jpeg", "raw")
RAW_MAX_PIXELS = 64 * 64  # --encoding=auto stores images up to this many pixels raw
JPEG_MAGIC = b"\xff\xd8"
NPY_MAGIC = b"\x93NUMPY"


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.array_record"


def resize_short_side(image, short_side: int):
    """PIL image or uint8 array -> PIL image with its short side at most `short_side`
    (bicubic, antialiased by PIL); 0 keeps the size."""
    from mdistill.data.transforms import to_pil

    img = to_pil(image)
    if short_side <= 0 or min(img.size) <= short_side:
        return img
    scale = short_side / min(img.size)
    size = (max(short_side, round(img.width * scale)), max(short_side, round(img.height * scale)))
    return img.resize(size, 3)  # Image.BICUBIC


def encode_jpeg(img, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def encode_raw(img, channels: int) -> bytes:
    from mdistill.data.transforms import to_array

    out = io.BytesIO()
    np.save(out, to_array(img, channels), allow_pickle=False)
    return out.getvalue()


def _jpeg_to_copy(raw, short_side: int) -> bytes | None:
    """The source file's bytes when it is a gray or colour JPEG that needs no resizing:
    storing it as it is keeps its exact pixels (no second lossy encoding)."""
    if isinstance(raw, (str, os.PathLike)):
        with open(raw, "rb") as f:
            data = f.read()
    elif isinstance(raw, (bytes, bytearray)):
        data = bytes(raw)
    else:
        return None
    if not data.startswith(JPEG_MAGIC):
        return None
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        mode_ok = img.mode in ("L", "RGB")  # decoded and converted to `channels` as the source's file is
        size_ok = short_side <= 0 or min(img.size) <= short_side
    return data if mode_ok and size_ok else None


class Encoder:
    """Record index -> (encoded bytes, label); picklable, for a pool of processes."""

    def __init__(self, source, channels: int, short_side: int, encoding: str, quality: int):
        self.source, self.channels, self.short_side = source, channels, short_side
        self.encoding, self.quality = encoding, quality

    def __call__(self, index: int) -> tuple[bytes | None, int, str]:
        """(record, label, ''), or (None, -1, why) for a record that cannot be read."""
        try:
            return (*self.encode(index), "")
        except Exception as e:  # corrupt, truncated or unreadable: left out, named in the metadata
            return None, -1, f"{self.source.describe(index)}: {type(e).__name__}: {str(e)[:200]}"

    def encode(self, index: int) -> tuple[bytes, int]:
        from mdistill.data.transforms import load_image

        raw = self.source.raw(index)
        label = int(self.source.label(index)) if hasattr(self.source, "label") else -1
        if self.encoding != "raw":
            copied = _jpeg_to_copy(raw, self.short_side)
            if copied is not None:
                load_image(copied, self.channels)  # a truncated or corrupt file fails here, not in training
                return copied, label
        img = resize_short_side(load_image(raw, self.channels), self.short_side)
        raw_pixels = self.encoding == "raw" or (self.encoding == "auto" and img.width * img.height <= RAW_MAX_PIXELS)
        data = encode_raw(img, self.channels) if raw_pixels else encode_jpeg(img, self.quality)
        return data, label


def prepare_split(source, out: str, split: str, *, channels: int, short_side: int = 256, encoding: str = "auto",
                  quality: int = 90, records_per_shard: int = 10000, workers: int = 0,
                  log=print) -> dict:
    """Write `source` as the prepared split `split` under `out`; returns its metadata."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: expected one of {ENCODINGS}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality}: expected 1..100")
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard={records_per_shard}: expected >= 1")
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, f"{split}.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the split is incomplete until its metadata is written again
    for stale in os.listdir(out):  # an earlier, interrupted or larger, preparation of this split
        if stale.startswith(f"{split}-") and stale.endswith(".array_record"):
            os.remove(os.path.join(out, stale))
    n = len(source)
    encoder = Encoder(source, channels, short_side, encoding, quality)
    labels, skipped, names = [], [], []
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    encoded = pool.imap(encoder, range(n), chunksize=16) if pool else map(encoder, range(n))
    t0, stored_bytes, writer = time.time(), 0, None
    try:
        for data, label, why in encoded:
            if data is None:
                skipped.append(why)
                log(f"WARNING: left out {why}")
                continue
            if len(labels) % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                    log(f"{split}: {len(labels)}/{n} images written ({time.time() - t0:.0f} s)")
                names.append(shard_name(split, len(names)))
                writer = ArrayRecordWriter(os.path.join(out, names[-1]), "group_size:1")
            writer.write(data)
            labels.append(label)
            stored_bytes += len(data)
        if writer is not None:
            writer.close()
    finally:
        if pool is not None:
            pool.terminate()
    np.save(os.path.join(out, f"{split}.labels.npy"), np.asarray(labels, np.int32))
    classes = getattr(source, "classes", None)
    meta = {"format": FORMAT, "version": VERSION, "split": split, "count": len(labels), "shards": names,
            "records_per_shard": records_per_shard, "short_side": short_side, "encoding": encoding,
            "quality": quality, "channels": channels, "stored_bytes": stored_bytes,
            "classes": list(classes) if classes is not None else None,
            "num_classes": (len(classes) if classes is not None else getattr(source, "num_classes", None)),
            "source": source.fingerprint(), "source_example": source.describe(0) if n else "",
            "skipped": skipped}  # records of the source that could not be read
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path)
    return meta


def main(argv):
    from absl import app, flags

    from mdistill.data.kinds import gives_clips
    from mdistill.data.sources import build_source

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    args = flags.FLAGS
    config = args.config
    if config is None or not args.out:
        raise app.UsageError("--config and --out are required", exitcode=2)
    if gives_clips(config) or config.data.source == "prepared":  # clips are sampled from whole videos at run time
        clips = f" with config.num_frames={config.num_frames} (clips)" if config.data.source == "tfds" else ""
        sys.exit(f"error: config.data.source={config.data.source!r}{clips} cannot be prepared: expected an image "
                 "source (folder, tfds with num_frames=1, fashion_mnist, synthetic)")
    for split in args.splits or [config.data.split]:
        source = build_source(config, split)
        meta = prepare_split(source, args.out, split, channels=config.data.channels, short_side=args.short_side,
                             encoding=args.encoding, quality=args.quality, records_per_shard=args.records_per_shard,
                             workers=args.workers)
        print(json.dumps({k: meta[k] for k in ("split", "count", "shards", "stored_bytes")} | {"out": args.out}))


def define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config whose config.data is read (path[:arg]).")
    flags.DEFINE_string("out", "", "Folder the prepared splits are written to (config.data.path of the run).")
    flags.DEFINE_list("splits", [], "Splits to prepare; default: config.data.split.")
    flags.DEFINE_integer("short_side", 256, "Short side the images are reduced to; 0 keeps every size.")
    flags.DEFINE_enum("encoding", "auto", list(ENCODINGS), "jpeg | raw (.npy pixels) | auto: raw up to 64x64 px.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of re-encoded images (FFCV's default).")
    flags.DEFINE_integer("records_per_shard", 10000, "Images per ArrayRecord file.")
    flags.DEFINE_integer("workers", min(os.cpu_count() or 1, 32),
                         "Encoding processes (0: in this process).")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
