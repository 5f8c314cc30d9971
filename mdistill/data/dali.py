"""An optional input path with NVIDIA DALI (config.data.decoder='dali'): JPEG (or PNG, ...)
decoding, the crop, the bicubic resize and the flip run in DALI, on the GPU where JAX has one
(nvJPEG through DALI's 'mixed' decoder) and on DALI's CPU operators otherwise. The default,
config.data.decoder='grain', needs none of it; CPU machines and TPUs keep that path.

Same batches as the grain path. Everything random is decided on the host, as the grain path
decides it (mdistill.data.pipeline): the record of each slot (the epoch's permutation, this
host's shard of the global batch), the random resized crop box (transforms.rrc_box: MAE's
scale and ratio, drawn from the rng (seed, step, slot, 1) on the image's size read from its
header) and the flip. DALI receives each record's encoded bytes and that geometry (an
external_source), and only decodes the region, resizes it (bicubic, antialiased) and flips.
So a batch is a pure function of (seed, step), as in the grain path, and:

- determinism: the same seed gives the same records, crops and flips, on any number of hosts;
  the pixels are DALI's decoder's and resampler's, so they differ from the grain path's
  (libjpeg-turbo with DCT scaling, then PIL's bicubic) by a few grey levels, not in geometry;
- per-host sharding: host p of P reads only the records of its slots, as in the grain path;
- resume: the pipeline's state is the grain path's (the next step, the data's fingerprint),
  so a run resumes at exactly the next step with the same records, crops and flips. A run
  may even switch between the two decoders at a checkpoint; its pixels change as above.

Sources: those whose records are encoded images: image folders (source='folder', read by
their paths) and prepared shards written as JPEG (source='prepared', read through their
ArrayRecord reader). DALI's own file reader is not used: its shuffling (a random buffer) and
sharding would not give the grain path's batches, nor an exact resume. Transforms: the
Transform of mdistill.data.transforms, with augment 'mae' (random resized crop + flip),
'flip' (centre crop + flip) or 'none' (resize the short side to size / 0.875, centre crop).

Bad records: a record whose header cannot be read is replaced as in the grain path (another
record drawn from the rng (seed, step, slot, 2 + try)); a record whose header reads but whose
data DALI cannot decode stops the run with DALI's error, as DALI fails the whole batch.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mdistill.data.errors import DataError
from mdistill.data.transforms import EVAL_CROP_FRACTION, Transform, rrc_box

DECODERS = ("grain", "dali")  # config.data.decoder


def available() -> bool:
    """Whether NVIDIA DALI imports here (pip install 'mdistill[dali]')."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image from its header; raises if it cannot be read."""
    if data[:2] == b"\xff\xd8":
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return int(width), int(height)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def centre_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """transforms.center_crop's geometry: (resized width, resized height, left, top) of the
    size x size crop in the resized image."""
    if (width, height) == (size, size):
        return size, size, 0, 0
    short = max(size, int(size / EVAL_CROP_FRACTION))
    scale = short / min(width, height)
    rw, rh = max(short, round(width * scale)), max(short, round(height * scale))
    return rw, rh, (rw - size) // 2, (rh - size) // 2


def _blank_jpeg(size: int, channels: int) -> bytes:
    """A black JPEG: what DALI decodes for a slot whose records all failed (label -1)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (size, size)).save(out, format="JPEG", quality=100)
    return out.getvalue()


class DaliDecoder:
    """The batches of an mdistill.data.Pipeline built with decoder='dali' (config.data.decoder),
    decoded by DALI: the pipeline keeps its layout, state, resume, accounting of bad records
    and its transfer to the devices; this replaces its grain dataset.

    `device_id`: the CUDA device DALI decodes on; -1 (default) picks the first GPU of the
    batch's sharding on this host, or DALI's CPU operators where there is none. The
    pipeline's `workers` are not used (DALI's `threads` CPU threads do the host-side work)."""

    def __init__(self, pipeline, max_tries: int, device_id: int | None = -1):
        transform, sharding = pipeline.reader.transform, pipeline.sharding
        if not isinstance(transform, Transform):
            raise DataError(f"config.data.decoder='dali' decodes images with the transforms of "
                            f"mdistill.data.transforms.Transform; got {type(transform).__name__} (video clips "
                            f"and other transforms use config.data.decoder='grain')")
        self.source, self.reader, self.layout = pipeline.source, pipeline.reader, pipeline.layout
        self.transform, self.seed, self.labels, self.max_tries = transform, pipeline.seed, pipeline.labels, max_tries
        self.threads, self.prefetch = pipeline.threads, pipeline.prefetch
        if device_id == -1:  # where the batch goes: the first GPU of this host, or DALI's CPU operators
            devices = [] if sharding is None else [d for d in sharding.addressable_devices if d.platform == "gpu"]
            device_id = min(d.local_hardware_id for d in devices) if devices else None
        self.device_id = device_id
        self.encoded(0)  # fail now, naming the source, if its records are not encoded images
        self._blank = _blank_jpeg(transform.size, transform.channels)

    def encoded(self, index: int) -> bytes:
        """Record `index` as encoded bytes (a folder's file is read here)."""
        raw = self.source.raw(index)
        if isinstance(raw, (str, os.PathLike)):
            with open(raw, "rb") as f:
                return f.read()
        if isinstance(raw, (bytes, bytearray)) and raw[:6] != b"\x93NUMPY":
            return bytes(raw)
        raise DataError(f"config.data.decoder='dali' needs records that are encoded images (source 'folder', or "
                        f"'prepared' written with --encoding=jpeg); {self.source.describe(index)} is "
                        f"{'raw pixels' if isinstance(raw, (bytes, bytearray)) else type(raw).__name__}")

    # ---- the host's part: records and geometry, pure functions of (seed, step, slot) ---------
    def plan(self, step: int, slot: int) -> dict:
        """Slot `slot` of global batch `step`: the encoded record, the decoded region (x, y,
        w, h in the image), the resize (w, h), the crop of the resized image (x, y), the flip,
        the label and the records skipped."""
        reader, t, size = self.reader, self.transform, self.transform.size
        index = reader.record_index(step, slot)
        skipped = np.full(self.max_tries, -1, np.int64)
        rng = np.random.default_rng((self.seed, step, slot, 1)) if t.augment != "none" else None
        data = None
        for attempt in range(self.max_tries if self.layout.shuffle else 1):
            try:
                data = self.encoded(index)
                width, height = image_size(data)
                break
            except DataError:
                raise
            except Exception:
                data = None
                skipped[attempt] = index
                index = int(np.random.default_rng((self.seed, step, slot, 2 + attempt)).integers(self.layout.size))
        if data is None:
            data, width, height = self._blank, size, size
        if t.augment == "mae":
            region = rrc_box(width, height, rng, t.scale, t.ratio)
            resized, crop = (size, size), (0, 0)
        else:
            rw, rh, left, top = centre_geometry(width, height, size)
            region, resized, crop = (0, 0, width, height), (rw, rh), (left, top)
        flip = t.augment in ("mae", "flip") and rng.random() < 0.5
        valid = data is not self._blank and not reader.is_padding(step, slot)
        return {"data": np.frombuffer(data, np.uint8), "anchor": np.array(region[:2], np.float32),
                "shape": np.array(region[2:], np.float32), "resize_x": np.float32(resized[0]),
                "resize_y": np.float32(resized[1]), "crop": np.array(crop, np.float32),
                "crop_shape": np.array([size, size], np.float32), "flip": np.int32(flip),
                "label": np.int32(self.source.label(index) if valid and self.labels else -1), "skipped": skipped}

    def plans(self, step: int, pool: ThreadPoolExecutor | None = None) -> list[dict]:
        lo = self.layout.process_index * self.layout.local_batch
        slots = range(lo, lo + self.layout.local_batch)
        if pool is None:
            return [self.plan(step, s) for s in slots]
        return list(pool.map(lambda s: self.plan(step, s), slots))

    # ---- DALI's part -------------------------------------------------------------------------
    def build(self, start: int, stop: int, pool: ThreadPoolExecutor | None = None):
        """The DALI pipeline of this host's batches from step `start` to `stop` - 1."""
        from nvidia.dali import fn, pipeline_def, types

        fields = ("data", "anchor", "shape", "resize_x", "resize_y", "crop", "crop_shape", "flip", "label", "skipped")
        gpu = self.device_id is not None
        channels = self.transform.channels

        def feed(info):
            step = start + info.iteration
            if step >= stop:
                raise StopIteration
            rows = self.plans(step, pool)
            return tuple([row[k] for row in rows] for k in fields)

        @pipeline_def(batch_size=self.layout.local_batch, num_threads=max(self.threads, 1), device_id=self.device_id,
                      seed=self.seed & 0x7FFFFFFF, prefetch_queue_depth=self.prefetch)
        def graph():
            data, anchor, shape, resize_x, resize_y, crop, crop_shape, flip, label, skipped = fn.external_source(
                source=feed, batch=True, batch_info=True, num_outputs=len(fields))
            # decode the region (x, y, w, h in pixels) only; 'mixed' decodes on the GPU
            images = fn.decoders.image_slice(
                data, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False,
                output_type=types.GRAY if channels == 1 else types.RGB, adjust_orientation=False,
                device="mixed" if gpu else "cpu")
            images = fn.resize(images, resize_x=resize_x, resize_y=resize_y, interp_type=types.INTERP_CUBIC,
                               antialias=True)
            images = fn.slice(images, crop, crop_shape, axis_names="WH",
                              normalized_anchor=False, normalized_shape=False)
            images = fn.flip(images, horizontal=flip)
            return images, label, skipped

        return graph()

    def batches(self, start: int, stop: int):
        """This host's batches of steps start .. stop - 1, as the grain dataset's:
        {'image': uint8 [L, size, size, C], 'skipped': int64 [L, max_tries]} (+ 'label')."""
        pool = ThreadPoolExecutor(max(self.threads, 1)) if self.threads > 1 else None
        pipe = self.build(start, stop, pool)
        try:
            pipe.build()
            while True:
                try:
                    images, labels, skipped = pipe.run()
                except StopIteration:
                    return
                if self.device_id is not None:
                    images = images.as_cpu()
                batch = {"image": np.array(images.as_array()), "skipped": np.array(skipped.as_array())}
                if self.labels:
                    batch["label"] = np.array(labels.as_array()).reshape(-1)
                yield batch
        finally:
            del pipe
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
