"""Image transforms on the host, as in MAE: random resized crop (scale 0.2-1.0, bicubic) +
horizontal flip for pre-training, resize + centre crop for evaluation.

Convention: the host only crops, resizes and flips; outputs stay uint8 NHWC. The mean/std
normalisation happens on device, inside the objectives (objectives/common.normalize_images
with config.data.mean/std), so host->device transfers are 4x smaller than float32 and every
source (TFDS, folders, Fashion-MNIST, synthetic) feeds the same step. Grayscale follows
config.data.channels: 1 keeps one channel (colour becomes luminance), 3 repeats gray."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

AUGMENTS = ("mae", "flip", "none")  # mae: crop + flip | flip: centre crop + flip | none: centre crop
RRC_SCALE = (0.2, 1.0)              # MAE's pre-training scale (torchvision's default is 0.08)
RRC_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875          # resize the short side to size / 0.875 (256 for 224), crop


def rrc_box(width: int, height: int, rng: np.random.Generator, scale=RRC_SCALE, ratio=RRC_RATIO):
    """(left, top, w, h) of a random crop covering `scale` of the area with aspect `ratio`:
    torchvision's RandomResizedCrop.get_params (10 tries, then a centre crop clamped to ratio)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, scale=RRC_SCALE,
                        ratio=RRC_RATIO) -> Image.Image:
    left, top, w, h = rrc_box(img.width, img.height, rng, scale, ratio)
    # crop and resize in one resampling pass; a crop smaller than `size` is simply upsampled
    return img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def center_crop(img: Image.Image, size: int, fraction: float = EVAL_CROP_FRACTION) -> Image.Image:
    """Short side to size / fraction (bicubic), then the central size x size. An image that is
    already size x size (Fashion-MNIST, CIFAR at their native size) is left untouched."""
    if img.size == (size, size):
        return img
    short = max(size, int(size / fraction))
    scale = short / min(img.size)
    img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(raw, channels: int, min_side: int = 0):
    """A source's raw record -> a decoded PIL image in mode L (channels 1) or RGB, or the
    uint8 array unchanged. `raw` is a file path, encoded bytes, a PIL image or an array.

    For JPEGs larger than needed, PIL's draft mode decodes at 1/2, 1/4 or 1/8 scale while
    keeping the short side >= min_side (the transform's need), which cuts decoding time
    without making any crop blurrier. Raises on a corrupt or truncated file (the pipeline
    counts and skips it)."""
    if isinstance(raw, np.ndarray):
        return raw
    if isinstance(raw, Image.Image):
        return raw.convert("L" if channels == 1 else "RGB")
    if isinstance(raw, (bytes, bytearray)):
        if raw[:6] == b"\x93NUMPY":  # raw pixels (mdistill.data.prepare): [H, W, C] uint8
            return np.load(io.BytesIO(raw), allow_pickle=False)
        if raw[:2] == b"\xff\xd8":
            fast = decode_jpeg(raw, channels, min_side)
            if fast is not None:
                return fast
    src = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else raw
    with Image.open(src) as img:
        if min_side and img.format == "JPEG":
            img.draft("L" if channels == 1 else "RGB", (min_side, min_side))
        if img.mode.startswith("I;16") or img.mode == "I":
            # 16-bit grayscale (PNG, TIFF): convert() would clip every value above 255 to white
            img = Image.fromarray((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
        return img.convert("L" if channels == 1 else "RGB")  # decodes; raises if corrupt


def decode_jpeg(data: bytes, channels: int, min_side: int = 0) -> np.ndarray | None:
    """JPEG bytes -> uint8 [H, W, channels] by simplejpeg (libjpeg-turbo without PIL's
    per-image overhead: the fastest decoder measured in benchmarks/RESULTS.md), with the
    DCT scaling of PIL's draft (the largest 1/2, 1/4, 1/8 keeping both sides >= min_side).
    None where simplejpeg is missing or the file is one it does not handle (CMYK, ...):
    PIL decodes those. The pixels are load_image's through PIL for baseline and progressive
    colour and gray JPEGs (tests/test_prepared.py)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("Gray", "YCbCr", "RGB"):
            return None
        # gray output where PIL's has it: a gray file, or luminance asked for with draft
        # (libjpeg's Y); without draft PIL decodes RGB and computes luminance (below)
        gray = colorspace == "Gray" or (channels == 1 and min_side > 0)
        # PIL's draft scale: the largest power of two s <= min(width, height) // min_side
        fits = min(width, height) // min_side if min_side > 0 else 0
        s = max(s for s in (1, 2, 4, 8) if s == 1 or fits >= s)
        arr = simplejpeg.decode_jpeg(data, "GRAY" if gray else "RGB", min_height=-(-height // s),
                                     min_width=-(-width // s))
    except ValueError:
        return None  # PIL decodes it, or raises the error the pipeline reports
    if gray and channels == 3:
        return np.repeat(arr, 3, axis=-1)
    if not gray and channels == 1:  # luminance as PIL's convert('L') computes it
        return np.asarray(Image.fromarray(arr).convert("L"))[..., None]
    return arr


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    image = np.asarray(image)
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 [H, W, channels]: colour becomes luminance for 1 channel, gray is repeated for 3."""
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


class Transform:
    """image (PIL or uint8 array, any size and mode), rng -> uint8 [size, size, channels].

    Picklable, so grain worker processes can run it; all randomness comes from `rng`."""

    def __init__(self, size: int, channels: int = 3, augment: str = "none", scale=RRC_SCALE, ratio=RRC_RATIO):
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}: expected one of {AUGMENTS}")
        self.size, self.channels, self.augment = size, channels, augment
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    reads_files = False  # the pipeline decodes the record (load_image) before calling it

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.size, self.size, self.channels)

    def min_side(self) -> int:
        """Short side an image needs so that no crop of this transform is upsampled more
        than it would be from the full-resolution image (for JPEG draft decoding)."""
        if self.augment == "mae":  # the smallest crop: area scale[0], aspect at its extreme
            aspect = min(self.ratio[0], 1 / self.ratio[1])
            return math.ceil(self.size / math.sqrt(self.scale[0] * aspect))
        return math.ceil(self.size / EVAL_CROP_FRACTION)

    def __call__(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
        if (self.augment == "none" and isinstance(image, np.ndarray)
                and image.shape[-3:] == (self.size, self.size, self.channels)):
            return image  # already what we want (synthetic images or clips, Fashion-MNIST): skip PIL
        if self.augment != "none" and rng is None:
            raise ValueError(f"augment={self.augment!r} needs an rng")
        img = to_pil(image)
        if self.augment == "mae":
            img = random_resized_crop(img, self.size, rng, self.scale, self.ratio)
        else:
            img = center_crop(img, self.size)
        if self.augment in ("mae", "flip") and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_array(img, self.channels)


class ClipTransform:
    """A video, rng -> uint8 [num_frames, size, size, channels]: the pipeline hands it the
    record's raw form (`reads_files`: a file's path, or a TFDS record's still-encoded frames),
    and it samples, decodes and augments the clip
    (mdistill.data.video.TrainClips: VideoMAE's frame sampling and multi-scale crop), so a bad
    video fails inside the pipeline's try and is skipped like a bad image. With repeats > 1
    (VideoMAE's repeated sampling, config.data.num_sample) one decoded window gives `repeats`
    independently cropped clips, [repeats, num_frames, ...], which the pipeline lays out as
    that many rows of the batch."""

    reads_files = True
    augment = "clip"  # never 'none': each slot draws its own frames and crop
    repeats = 1

    def __init__(self, size: int, num_frames: int, channels: int, sampling_rate: int, flip: bool,
                 temporal: str = "pretrain", repeats: int = 1):
        from mdistill.data.video import TrainClips

        self.size, self.num_frames, self.channels, self.repeats = size, num_frames, channels, repeats
        self.clips = TrainClips(size, num_frames, sampling_rate, num_sample=repeats, flip=flip, temporal=temporal,
                                channels=channels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        clip = (self.num_frames, self.size, self.size, self.channels)
        return clip if self.repeats == 1 else (self.repeats, *clip)

    def min_side(self) -> int:
        return 0

    def __call__(self, path, rng: np.random.Generator) -> np.ndarray:
        clips = self.clips(path, rng)
        return clips[0] if self.repeats == 1 else clips


class EvalClipTransform(ClipTransform):
    """A video file's path -> its single-view evaluation clip (VideoMAE's test sampling with
    one window and the centre crop, mdistill.data.video.EvalClips), for feature passes."""

    augment = "none"

    def __init__(self, size: int, num_frames: int, channels: int, sampling_rate: int):
        from mdistill.data.video import EvalClips

        self.size, self.num_frames, self.channels = size, num_frames, channels
        self.clips = EvalClips(size, num_frames, sampling_rate, channels=channels)

    def __call__(self, path, rng=None) -> np.ndarray:
        return self.clips(path)[0]


class MultiViewClipTransform(ClipTransform):
    """A video (file path or decoder) -> [segments x crops, num_frames, size, size, channels]:
    VideoMAE's multi-view test (EvalClips; temporal 'dense' for Kinetics, 'segments' for SSv2),
    for fine-tuning's evaluation."""

    augment = "none"

    def __init__(self, size: int, num_frames: int, channels: int, sampling_rate: int, segments: int, crops: int,
                 temporal: str = "dense"):
        from mdistill.data.video import EvalClips

        self.size, self.num_frames, self.channels = size, num_frames, channels
        self.clips = EvalClips(size, num_frames, sampling_rate, test_num_segment=segments, test_num_crop=crops,
                               temporal=temporal, channels=channels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.clips.views, self.num_frames, self.size, self.size, self.channels)

    def __call__(self, path, rng=None) -> np.ndarray:
        return self.clips(path)


def from_config(config, train: bool = True):
    """The training transform of config.data (train=False: the evaluation one)."""
    from mdistill.data.kinds import gives_clips

    d = config.data
    if gives_clips(config):
        if not train:
            return EvalClipTransform(config.image_size, int(config.num_frames), d.channels, d.sampling_rate)
        # data.temporal: VideoMAE's pre-training sampling, or its fine-tuning one ('finetune')
        return ClipTransform(config.image_size, int(config.num_frames), d.channels, d.sampling_rate, d.flip,
                             d.temporal, d.num_sample)
    augment = d.augment if train else "none"
    return Transform(config.image_size, d.channels, augment, tuple(d.crop_scale))
