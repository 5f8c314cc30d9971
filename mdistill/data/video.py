"""Videos for VideoMAE / AMD: decoding with PyAV, the official VideoMAE frame sampling and
clip transforms, and two sources (a class-folder tree and VideoMAE's list files). The
samplers take any video with count() and frames(indices) (VideoFile here; a TFDS record's
frames in mdistill/data/tfds_video.py), so every store gets the same sampling and crops.

What follows the official code (github.com/MCG-NJU/VideoMAE; VideoMAEv2 for pre-training
with repeated sampling) and where:
- pre-training clips: kinetics.py VideoMAE._sample_train_indices + _video_TSN_decord_batch_loader
  (pretrain_indices), augmented by transforms.py GroupMultiScaleCrop(size, [1, .875, .75, .66])
  as datasets.py DataAugmentationForVideoMAE builds it (multi_scale_crop_box). The official
  pre-training has no flip; `flip` is this module's option (never for SSv2-like data).
- fine-tuning clips: kinetics.py VideoClsDataset.loadvideo_decord (finetune_indices), and
  ssv2.py SSVideoClsDataset.loadvideo_decord's segment sampling (segment_indices).
- multi-view testing: VideoClsDataset / SSVideoClsDataset in mode 'test' (dense_test_indices,
  segment_test_indices, eval_views): frames resized to short side `short_side_size` (224 in
  every official script, i.e. the crop size itself, not 224 / 0.875 as for MAE's images),
  test_num_crop crops along the long side, views ordered (segment, crop).
- repeated sampling (num_sample): the frames are sampled and decoded once per video and
  each copy draws its own spatial augmentation (VideoMAEv2 pretrain_datasets.py, VideoMAE
  VideoClsDataset.__getitem__).

Differences, by choice: randomness comes from a numpy Generator (results are a pure function
of (rng, video)); resizing uses PIL's bilinear filter everywhere (the official test path uses
cv2 INTER_LINEAR, which does not antialias when shrinking), so pixels differ slightly but
every crop box is the same. Clips are uint8 [T, H, W, C] with C 1 or 3; normalisation is
left to the device, as for images (mdistill/data/transforms.py)."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
from PIL import Image

from mdistill.data.errors import DataError
from mdistill.data.folders import class_folders, is_dir, split_dir

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv")
LAYOUT = "<path>/<split>/<class>/<video> (e.g. train/abseiling/0347ZoDXyP0_000095_000105.mp4)"
LIST_FORMAT = "one '<path> <label>' per line, space separated (VideoMAE's train.csv / test.csv)"
MULTI_SCALES = (1, .875, .75, .66)  # GroupMultiScaleCrop's scales in DataAugmentationForVideoMAE
SEEK_FROM = 32                      # decode from the start when the first wanted frame is earlier
HEADER_COUNTS = {"mp4", "mov", "avi"}  # containers whose header holds the exact number of frames


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("reading videos needs PyAV: pip install 'mdistill[video]' (or pip install av)") from e
    return av


def _decode_error(path: str, e: Exception) -> DataError:
    return DataError(f"cannot decode video {path!r} ({type(e).__name__}: {e})")


def _video_stream(container, path: str, threads: int):
    if not container.streams.video:
        raise DataError(f"video {path!r} has no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = threads  # 1: the pipeline runs one decoder per core
    return stream


def _guarded(path: str, fn):
    """fn() with every decoder failure turned into a DataError naming the file."""
    av = _av()
    try:
        return fn()
    except DataError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as e:
        raise _decode_error(path, e) from e


def frame_count(path: str, threads: int = 1) -> int:
    """Number of frames: from the header of MP4/MOV/AVI files, by decoding others (WebM and
    MKV keep no count, so they are decoded twice per clip: convert them to MP4 as VideoMAE's
    DATASET.md does for SSv2). Raises a DataError naming the file if it has none or cannot
    be read. A cut-off WebM/MKV that still demuxes reads as a shorter video."""
    def count() -> int:
        with _av().open(path) as container:
            stream = _video_stream(container, path, threads)
            n = stream.frames if HEADER_COUNTS & set(container.format.name.split(",")) else 0
            return n if n > 0 else sum(1 for _ in container.decode(stream))

    n = _guarded(path, count)
    if n <= 0:
        raise DataError(f"video {path!r} has no frames")
    return n


def _decode_from_start(container, stream, wanted: list[int], path: str) -> dict[int, np.ndarray]:
    need, out, seen = set(wanted), {}, 0
    for i, frame in enumerate(container.decode(stream)):
        seen = i + 1
        if i in need:
            out[i] = frame.to_ndarray(format="rgb24")
        if i >= wanted[-1]:
            return out
    raise DataError(f"video {path!r} holds {seen} frames, frame {wanted[-1]} was asked for (truncated?)")


def _decode_after_seek(container, stream, wanted: list[int]) -> dict[int, np.ndarray] | None:
    """Seek to the key frame before wanted[0] and index frames by their time stamps; None
    when that cannot be trusted (no constant frame rate, no time stamps, an overshooting seek,
    a gap) so the caller decodes from the start instead."""
    rate, start, base = stream.average_rate, stream.start_time, stream.time_base
    if not rate or start is None or base is None or stream.base_rate != rate:
        return None
    container.seek(start + round(wanted[0] / (rate * base)), stream=stream, backward=True, any_frame=False)
    need, out, previous = set(wanted), {}, None
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        i = round((frame.pts - start) * base * rate)
        if (previous is None and i > wanted[0]) or (previous is not None and i != previous + 1):
            return None
        previous = i
        if i in need:
            out[i] = frame.to_ndarray(format="rgb24")
        if i >= wanted[-1]:
            return out
    return None  # ended early: decoding from the start says how many frames there are


def read_frames(path: str, indices, threads: int = 1) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] (RGB), frames in the order given (repeats allowed).
    Raises a DataError naming the file if it cannot be decoded or has too few frames."""
    order = np.asarray(indices, np.int64).reshape(-1)
    if order.size == 0 or order.min() < 0:
        raise ValueError(f"frame indices must be >= 0 and not empty, got {order.tolist()}")
    wanted = sorted(set(order.tolist()))
    av = _av()

    def decode() -> dict[int, np.ndarray]:
        if wanted[0] >= SEEK_FROM:  # long videos: skip decoding everything before the clip
            with av.open(path) as container:
                out = _decode_after_seek(container, _video_stream(container, path, threads), wanted)
            if out is not None:
                return out
        with av.open(path) as container:
            return _decode_from_start(container, _video_stream(container, path, threads), wanted, path)

    frames = _guarded(path, decode)
    return np.stack([frames[i] for i in order.tolist()])


def write_video(path: str, frames, fps: int = 25, crf: int = 0, codec: str = "libx264",
                pix_fmt: str = "yuv420p", options: dict | None = None) -> None:
    """Encode uint8 [T, H, W, 3] (or gray [T, H, W, 1]) frames. The default, libx264 at crf 0,
    is lossless in YUV 4:2:0: only the RGB <-> YUV conversion rounds (and subsamples colour).
    One encoder thread, so the bytes do not depend on the machine's core count."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 1 or 3], got {frames.dtype} {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    av = _av()
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), **(options or {})}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


# ---- frame sampling (official VideoMAE rules; n = frames in the video) ----

def _check_length(n: int) -> int:
    if n < 1:
        raise ValueError(f"a video of {n} frames: nothing to sample")
    return int(n)


def pretrain_indices(n: int, rng: np.random.Generator, num_frames: int = 16, sampling_rate: int = 4) -> np.ndarray:
    """VideoMAE pre-training (one segment, no temporal jitter): num_frames frames
    sampling_rate apart from a start drawn uniformly in [0, n - num_frames * sampling_rate].
    A shorter video starts at 0 and steps while the next frame is at most n - 2, then repeats
    the last frame (the official loop's bound, so frame n - 1 is never taken)."""
    n = _check_length(n)
    span = num_frames * sampling_rate
    frame = int(rng.integers(n - span + 1)) if n >= span else 0  # the official `elif` is unreachable for 1 segment
    out = []
    for _ in range(num_frames):
        out.append(frame)
        if frame + 1 + sampling_rate < n:  # official: 1-based offset + step < duration
            frame += sampling_rate
    return np.asarray(out, np.int64)


def finetune_indices(n: int, rng: np.random.Generator, num_frames: int = 16, sampling_rate: int = 4) -> np.ndarray:
    """VideoMAE fine-tuning (VideoClsDataset, Kinetics / UCF / HMDB): num_frames frames evenly
    spread over a window of num_frames * sampling_rate frames ending at a random frame in
    [span, n - 1] (so 64/15, not 4, apart). A video of at most span frames: n // sampling_rate
    frames evenly over [0, n] clipped to n - 1, padded with frame n - 1."""
    n = _check_length(n)
    span = num_frames * sampling_rate
    if n <= span:
        index = np.linspace(0, n, num=n // sampling_rate)
        index = np.concatenate((index, np.full(num_frames - n // sampling_rate, n)))
        return np.clip(index, 0, n - 1).astype(np.int64)
    end = int(rng.integers(span, n))
    return np.clip(np.linspace(end - span, end, num=num_frames), end - span, end - 1).astype(np.int64)


def dense_test_indices(n: int, num_frames: int = 16, sampling_rate: int = 4, test_num_segment: int = 5) -> np.ndarray:
    """int [test_num_segment, num_frames]: every sampling_rate-th frame (padded with the last
    to num_frames), cut into test_num_segment windows with starts evenly spread from the first
    to the last possible one (int(k * step)). One segment: the first window (official: a
    division by zero)."""
    n = _check_length(n)
    every = list(range(0, n, sampling_rate))
    every += [every[-1]] * max(0, num_frames - len(every))
    step = max((len(every) - num_frames) / (test_num_segment - 1), 0) if test_num_segment > 1 else 0
    return np.asarray([every[int(k * step):int(k * step) + num_frames] for k in range(test_num_segment)], np.int64)


def segment_indices(n: int, rng: np.random.Generator, num_segments: int = 16) -> np.ndarray:
    """SSv2 fine-tuning (SSVideoClsDataset, TSN style): one random frame in each of
    num_segments equal segments; a video shorter than num_segments gives frame 0 throughout."""
    n = _check_length(n)
    length = n // num_segments
    if length == 0:  # the official `n > num_segments` branch cannot be reached here
        return np.zeros(num_segments, np.int64)
    return (np.arange(num_segments) * length + rng.integers(length, size=num_segments)).astype(np.int64)


def segment_test_indices(n: int, num_segments: int = 16) -> np.ndarray:
    """int [2, num_segments]: SSv2's two test views, the segments' starts and their middles
    (the official list of both, sorted, read every other frame; its test_num_segment is 2)."""
    n = _check_length(n)
    tick = n / float(num_segments)
    both = np.sort([int(tick / 2.0 + tick * x) for x in range(num_segments)]
                   + [int(tick * x) for x in range(num_segments)])
    return np.stack([both[0::2], both[1::2]]).astype(np.int64)


TEMPORAL = {"pretrain": pretrain_indices, "finetune": finetune_indices}


# ---- clip transforms: the same spatial operation on every frame ----

def _check_clip(clip) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"a clip is uint8 [T, H, W, 1 or 3], got {clip.dtype} {clip.shape}")
    return clip


def _map_frames(clip: np.ndarray, fn) -> np.ndarray:
    gray = clip.shape[-1] == 1
    out = np.stack([np.asarray(fn(Image.fromarray(f[..., 0] if gray else f))) for f in clip])
    return out[..., None] if gray else out


def to_channels(clip, channels: int) -> np.ndarray:
    """Colour becomes luminance (PIL's L) for 1 channel, gray is repeated for 3."""
    clip = _check_clip(clip)
    if clip.shape[-1] == channels:
        return clip
    if channels == 3:
        return np.repeat(clip, 3, axis=-1)
    return np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in clip])[..., None]


def _fixed_offsets(width: int, height: int, w: int, h: int) -> list[tuple[int, int]]:
    """The 13 crop positions of GroupMultiScaleCrop (fix_crop, more_fix_crop) on a 4x4 grid
    of steps: corners, centre, edge middles, then the four quarter points, in its order."""
    ws, hs = (width - w) // 4, (height - h) // 4
    grid = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
            (1, 1), (3, 1), (1, 3), (3, 3))
    return [(a * ws, b * hs) for a, b in grid]


def multi_scale_crop_box(width: int, height: int, size: int, rng: np.random.Generator,
                         scales=MULTI_SCALES, max_distort: int = 1) -> tuple[int, int, int, int]:
    """(left, top, w, h) as GroupMultiScaleCrop draws it: side lengths int(short side * scale)
    (snapped to `size` within 3 px), a (w, h) pair whose scale indices differ by at most
    max_distort, and one of 13 fixed positions, each uniformly."""
    sides = [int(min(width, height) * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    w, h = pairs[int(rng.integers(len(pairs)))]
    offsets = _fixed_offsets(width, height, w, h)
    left, top = offsets[int(rng.integers(len(offsets)))]
    return left, top, w, h


def crop_resize(clip, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop every frame to box (left, top, w, h), then resize it to size x size (bilinear)."""
    left, top, w, h = box
    return _map_frames(_check_clip(clip), lambda im: im.crop((left, top, left + w, top + h))
                       .resize((size, size), Image.BILINEAR))


def multi_scale_crop(clip, size: int, rng: np.random.Generator, flip: bool = False, scales=MULTI_SCALES):
    """VideoMAE's pre-training augmentation, plus a horizontal flip of the whole clip with
    probability 1/2 when flip is True (keep it False for direction-sensitive data)."""
    clip = _check_clip(clip)
    out = crop_resize(clip, multi_scale_crop_box(clip.shape[2], clip.shape[1], size, rng, scales), size)
    if flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def repeated_sample(clip, num_sample: int, rng: np.random.Generator, augment) -> np.ndarray:
    """[num_sample, ...]: num_sample augmentations augment(clip, rng) of one decoded clip
    (VideoMAE's repeated sampling: the video is read once per num_sample copies)."""
    return np.stack([augment(clip, rng) for _ in range(num_sample)])


def resize_short_side(clip, short: int) -> np.ndarray:
    """Short side to `short`, the long one to int(short * long / short side) (bilinear); a
    clip whose short side is already `short` is returned as is (as the official Resize does)."""
    clip = _check_clip(clip)
    h, w = clip.shape[1:3]
    if min(h, w) == short:
        return clip
    size = (short, int(short * h / w)) if w < h else (int(short * w / h), short)  # PIL's (width, height)
    return _map_frames(clip, lambda im: im.resize(size, Image.BILINEAR))


def center_crop(clip, size: int) -> np.ndarray:
    """The central size x size, placed at round((side - size) / 2) as the official CenterCrop."""
    clip = _check_clip(clip)
    h, w = clip.shape[1:3]
    if size > h or size > w:
        raise ValueError(f"a centre crop of {size} from frames of {w}x{h}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return clip[:, top:top + size, left:left + size]


def eval_views(clip, size: int, num_crops: int = 1, short_side: int | None = None) -> np.ndarray:
    """[num_crops, T, size, size, C]: short side to short_side (default: size, as the official
    scripts' short_side_size 224 for 224 crops). One crop: the centre (the validation
    transform); several: short_side squares at int(k * (long - short) / (num_crops - 1)) along
    the long side (left / centre / right for 3 on landscape video), then centre-cropped to
    size when short_side is larger (the official test stops at the squares)."""
    short = short_side or size
    clip = resize_short_side(clip, short)
    if num_crops == 1:
        return center_crop(clip, size)[None]
    h, w = clip.shape[1:3]
    step = (max(h, w) - short) / (num_crops - 1)
    views = []
    for k in range(num_crops):
        s = int(k * step)
        views.append(center_crop(clip[:, s:s + short] if h >= w else clip[:, :, s:s + short], size))
    return np.stack(views)


# ---- what the pipeline and the evaluators call ----

class VideoFile:
    """A video file as the clip samplers see a video: count() frames, frames(indices) decoded
    (uint8 [len(indices), H, W, 3]). Decoded videos of other stores (a TFDS record:
    mdistill.data.tfds_video.EncodedVideo) offer the same two methods, so the sampling and
    the crops below are the same whatever holds the frames."""

    def __init__(self, path: str, threads: int = 1):
        self.path, self.threads = path, threads

    def count(self) -> int:
        return frame_count(self.path, self.threads)

    def frames(self, indices) -> np.ndarray:
        return read_frames(self.path, indices, self.threads)


def as_video(video, threads: int = 1):
    """A path becomes a VideoFile; a decoder (count(), frames()) is used as it is."""
    return VideoFile(os.fspath(video), threads) if isinstance(video, (str, os.PathLike)) else video


class TrainClips:
    """video (a path or a VideoFile-like decoder), rng -> uint8 [num_sample, num_frames, size,
    size, channels]: frames sampled by `temporal` ('pretrain': VideoMAE pre-training, 'finetune':
    VideoClsDataset, 'segments': SSv2's one frame per segment, sampling_rate unused), decoded once, then num_sample
    multi-scale crops (and flips if `flip`). Picklable; all randomness from rng."""

    def __init__(self, size: int = 224, num_frames: int = 16, sampling_rate: int = 4, num_sample: int = 1,
                 flip: bool = False, temporal: str = "pretrain", channels: int = 3, scales=MULTI_SCALES,
                 threads: int = 1):
        if temporal not in (*TEMPORAL, "segments"):
            raise ValueError(f"temporal={temporal!r}: expected one of {(*TEMPORAL, 'segments')}")
        self.size, self.num_frames, self.sampling_rate, self.num_sample = size, num_frames, sampling_rate, num_sample
        self.flip, self.temporal, self.channels, self.scales, self.threads = flip, temporal, channels, scales, threads

    def indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.temporal == "segments":
            return segment_indices(n, rng, self.num_frames)
        return TEMPORAL[self.temporal](n, rng, self.num_frames, self.sampling_rate)

    def augment(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return multi_scale_crop(clip, self.size, rng, self.flip, self.scales)

    def __call__(self, video, rng: np.random.Generator) -> np.ndarray:
        """video: a file's path, or any decoder with count() and frames(indices) (VideoFile)."""
        video = as_video(video, self.threads)
        frames = video.frames(self.indices(video.count(), rng))
        return repeated_sample(to_channels(frames, self.channels), self.num_sample, rng, self.augment)


class EvalClips:
    """video (a path or a VideoFile-like decoder) -> uint8 [views, num_frames, size, size,
    channels], views = test_num_segment x test_num_crop in the official order (segment-major).
    temporal 'dense': Kinetics' test windows; 'segments': SSv2's two views (test_num_segment
    must be 2). Deterministic."""

    def __init__(self, size: int = 224, num_frames: int = 16, sampling_rate: int = 4, test_num_segment: int = 1,
                 test_num_crop: int = 1, short_side: int | None = None, temporal: str = "dense", channels: int = 3,
                 threads: int = 1):
        if temporal not in ("dense", "segments"):
            raise ValueError(f"temporal={temporal!r}: expected 'dense' or 'segments'")
        if temporal == "segments" and test_num_segment != 2:
            raise ValueError("SSv2's segment test has exactly 2 temporal views (test_num_segment=2)")
        self.size, self.num_frames, self.sampling_rate = size, num_frames, sampling_rate
        self.test_num_segment, self.test_num_crop, self.short_side = test_num_segment, test_num_crop, short_side
        self.temporal, self.channels, self.threads = temporal, channels, threads

    @property
    def views(self) -> int:
        return self.test_num_segment * self.test_num_crop

    def indices(self, n: int) -> np.ndarray:
        if self.temporal == "segments":
            return segment_test_indices(n, self.num_frames)
        return dense_test_indices(n, self.num_frames, self.sampling_rate, self.test_num_segment)

    def __call__(self, video) -> np.ndarray:
        video = as_video(video, self.threads)
        windows = self.indices(video.count())
        frames = to_channels(video.frames(windows.reshape(-1)), self.channels)
        frames = frames.reshape(*windows.shape, *frames.shape[1:])
        return np.concatenate([eval_views(clip, self.size, self.test_num_crop, self.short_side) for clip in frames])


# ---- sources: the interface of mdistill/data/image_folder.py ----

def _is_video(entry: os.DirEntry) -> bool:
    return (not entry.name.startswith(".") and entry.name.lower().endswith(VIDEO_EXTENSIONS)
            and (entry.is_symlink() or entry.is_file()) and not is_dir(entry))


def list_video_folder(split_dir: str) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """(class names, 'class/file' paths, labels), sorted. Dangling links are listed: reading
    them fails by name, and the pipeline skips them like corrupt files."""
    classes = class_folders(split_dir, "video folder", LAYOUT)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(e.name for e in os.scandir(os.path.join(split_dir, name)) if _is_video(e))
        paths += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    if not paths:
        loose = sorted(e.name for e in os.scandir(split_dir) if _is_video(e))[:3]
        raise FileNotFoundError(
            f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {split_dir!r}: expected {LAYOUT}, one subfolder per class"
            + (f"; found videos directly in it ({loose}): move them into class subfolders" if loose else ""))
    return tuple(classes), paths, np.asarray(labels, np.int32)


def read_video_list(list_file: str) -> tuple[list[str], np.ndarray]:
    """(paths as written, labels) of a VideoMAE list file; blank lines are ignored."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"video list {list_file!r} does not exist; expected {LIST_FORMAT}")
    paths, labels = [], []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not re.fullmatch(r"[0-9]+", fields[1]):
                raise DataError(f"{list_file}:{number}: expected '<path> <label>' (a path without spaces, "
                                f"an integer label >= 0), got {line.strip()[:200]!r}")
            paths.append(fields[0])
            labels.append(int(fields[1]))
    if not paths:
        raise DataError(f"video list {list_file!r} lists no videos; expected {LIST_FORMAT}")
    return paths, np.asarray(labels, np.int32)


class _VideoSource:
    """Random access to videos: raw(i) is the file's path (TrainClips decodes it in the
    pipeline's workers); clips(indices) is the evaluation view (EvalClips)."""

    def __init__(self, base: str, paths: list[str], labels: np.ndarray, evaluation: EvalClips | None):
        self.base, self._paths, self._labels = base, paths, labels
        self.evaluation = evaluation or EvalClips()

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.path.join(self.base, self._paths[int(index)])  # an absolute listed path stays as is

    raw = path
    describe = path

    @property
    def num_classes(self) -> int:
        return int(self._labels.max()) + 1

    def label(self, index: int) -> int:
        return int(self._labels[int(index)])

    def labels(self, indices) -> np.ndarray:
        return self._labels[np.asarray(indices, np.int64)]

    def _digest(self, with_labels: bool) -> str:
        text = "\n".join(self._paths).encode() + (self._labels.tobytes() if with_labels else b"")
        return hashlib.sha1(text).hexdigest()[:16]

    def clips(self, indices) -> np.ndarray:
        """uint8 [len(indices), views, T, size, size, C]. A video that cannot be decoded is an
        error here, naming it (training skips such videos instead)."""
        return np.stack([self.evaluation(self.path(i)) for i in indices])


class VideoFolderSource(_VideoSource):
    """<root>/<split>/<class>/<video>: labels are the indices of the sorted class folders."""

    def __init__(self, root: str, split: str, evaluation: EvalClips | None = None):
        self.root, self.split = root, split
        directory = split_dir(root, split)
        self.classes, paths, labels = list_video_folder(os.path.abspath(directory))
        super().__init__(directory, paths, labels, evaluation)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Changes when a video is added, removed or renamed (which would change the data order)."""
        return f"video_folder:{len(self)}:{self._digest(with_labels=False)}"


class VideoListSource(_VideoSource):
    """A VideoMAE list file (train.csv: '<path> <label>' lines); relative paths are taken
    from `root` (default: the list file's folder), absolute ones as they are."""

    def __init__(self, list_file: str, root: str | None = None, evaluation: EvalClips | None = None):
        self.list_file = list_file
        self.root = root if root is not None else os.path.dirname(os.path.abspath(list_file))
        paths, labels = read_video_list(list_file)
        super().__init__(self.root, paths, labels, evaluation)

    def fingerprint(self) -> str:
        """Changes when a listed path or label is added, removed, renamed or relabelled."""
        return f"video_list:{len(self)}:{self._digest(with_labels=True)}"
