"""The video data layer (mdistill/data/video.py) and scripts/make_moving_fmnist.py, on tiny
clips written with PyAV in tmp_path. The sampling cases are the official VideoMAE rules
worked out by hand for long and short videos (kinetics.py / ssv2.py of MCG-NJU/VideoMAE)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mdistill.data import video
from mdistill.data.errors import DataError
from mdistill.data.fashion_mnist import DEFAULT_DIR

av = pytest.importorskip("av")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gray_ramp(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Uniform frames whose gray level 3 * t names the frame: any crop keeps it readable."""
    return np.broadcast_to((3 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3)).copy()


def frame_ids(clip: np.ndarray) -> np.ndarray:
    """The frame numbers of a clip of gray_ramp frames (each frame's mean level / 3)."""
    return np.round(clip.reshape(*clip.shape[:-3], -1).mean(-1) / 3).astype(np.int64)


def textured(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Colour blocks on the 2x2 chroma grid (so 4:2:0 keeps them) that change every frame."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (n, h // 4, w // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ramp") / "ramp.mp4")
    video.write_video(path, gray_ramp(80), options={"g": "8"})  # key frames every 8: the seek path is used
    return path


# ---- decoding ----

def test_decoding_returns_the_drawn_frames(tmp_path):
    frames = textured(12)
    path = str(tmp_path / "t.mp4")
    video.write_video(path, frames, pix_fmt="yuv444p")  # lossless YUV, full colour: RGB <-> YUV rounding only
    assert video.frame_count(path) == 12
    got = video.read_frames(path, [5, 0, 11, 5])  # any order, repeats allowed
    assert got.shape == (4, 32, 48, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - frames[[5, 0, 11, 5]]).max() <= 2
    gray = np.repeat(frames[..., :1], 3, axis=-1)  # the default 4:2:0 keeps luminance losslessly
    video.write_video(path, gray)
    assert np.abs(video.read_frames(path, range(12)).astype(int) - gray).max() <= 1


def test_webm_is_counted_by_decoding(tmp_path):
    frames = gray_ramp(10)
    path = str(tmp_path / "t.webm")
    video.write_video(path, frames, codec="libvpx-vp9", options={"lossless": "1"})
    with av.open(path) as c:
        assert c.streams.video[0].frames == 0  # no count in the header
    assert video.frame_count(path) == 10
    assert np.abs(video.read_frames(path, range(10)).astype(int) - frames).max() <= 1


def test_seeking_gives_the_frames_of_a_full_decode(ramp_video, monkeypatch):
    with av.open(ramp_video) as c:
        full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    wanted = [77, 41, 45, 49, 53, 79, 40]  # first wanted >= SEEK_FROM, between and on key frames
    assert min(wanted) >= video.SEEK_FROM
    with monkeypatch.context() as m:  # prove that the seek served them
        m.setattr(video, "_decode_from_start", lambda *a: pytest.fail("decoded from the start"))
        np.testing.assert_array_equal(video.read_frames(ramp_video, wanted), full[wanted])
    np.testing.assert_array_equal(video.read_frames(ramp_video, [3, 2]), full[[3, 2]])  # early: from the start
    np.testing.assert_array_equal(frame_ids(full), np.arange(80))


def test_bad_videos_raise_naming_the_file(tmp_path, ramp_video):
    data = open(ramp_video, "rb").read()
    cut = tmp_path / "cut.mp4"  # index (moov) at the end: the cut file cannot even be opened
    cut.write_bytes(data[:len(data) // 2])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    missing = tmp_path / "missing.mp4"
    for path in (cut, junk, missing):
        for read in (video.frame_count, lambda p: video.read_frames(p, [0])):
            with pytest.raises(DataError, match=str(path)) as e:
                read(str(path))
            assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=f"{ramp_video}.*holds 80 frames, frame 80"):
        video.read_frames(ramp_video, [3, 80])


def test_truncated_faststart_and_empty_videos(tmp_path):
    path = str(tmp_path / "fast.mp4")  # index first: the header still says 40 frames
    with av.open(path, "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for f in textured(40):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) * 2 // 3])
    assert video.frame_count(path) == 40
    with pytest.raises(DataError, match=path):
        video.read_frames(path, [0, 39])
    empty = str(tmp_path / "empty.avi")  # a video stream without frames
    with av.open(empty, "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
    with pytest.raises(DataError, match=f"{empty}.*has no frames"):
        video.frame_count(empty)


# ---- sampling: the official rules, cases worked out by hand ----

def test_pretrain_sampling_long_videos():
    # n >= 16 * 4: start uniform in [0, n - 64], then 16 frames 4 apart
    starts = set()
    for seed in range(300):
        idx = video.pretrain_indices(100, np.random.default_rng(seed))
        assert np.array_equal(np.diff(idx), np.full(15, 4)) and 0 <= idx[0] <= 36
        starts.add(int(idx[0]))
    assert starts == set(range(37))
    assert video.pretrain_indices(64, np.random.default_rng(0)).tolist() == list(range(0, 64, 4))
    # SSv2-style rate 2: a window of 32
    idx = video.pretrain_indices(40, np.random.default_rng(3), sampling_rate=2)
    assert np.array_equal(np.diff(idx), np.full(15, 2)) and idx[-1] <= 39


def test_pretrain_sampling_short_videos():
    # from 0, stepping while the next frame is <= n - 2, then the last repeated
    rng = np.random.default_rng(0)
    assert video.pretrain_indices(30, rng).tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8
    assert video.pretrain_indices(62, rng).tolist() == list(range(0, 64, 4))  # 60 <= 62 - 2: all 16, from 0
    assert video.pretrain_indices(61, rng).tolist() == list(range(0, 60, 4)) + [56]  # 60 > 61 - 2
    assert video.pretrain_indices(10, rng).tolist() == [0, 4, 8] + [8] * 13
    assert video.pretrain_indices(5, rng).tolist() == [0] * 16  # frame 4 exists, the bound never takes it
    assert video.pretrain_indices(1, rng).tolist() == [0] * 16
    with pytest.raises(ValueError):
        video.pretrain_indices(0, rng)


def test_finetune_sampling():
    # long: 16 points of linspace(end - 64, end) clipped to end - 1, end uniform in [64, n - 1]
    for seed in range(50):
        idx = video.finetune_indices(100, np.random.default_rng(seed))
        start = int(idx[0])
        expect = np.clip(np.linspace(start, start + 64, 16), start, start + 63).astype(int)
        assert 0 <= start <= 35 and idx.tolist() == expect.tolist()
    # short: n // 4 points of linspace(0, n), then n - 1 (all clipped to n - 1)
    assert video.finetune_indices(30, None).tolist() == [0, 5, 10, 15, 20, 25, 29] + [29] * 9
    assert video.finetune_indices(64, None).tolist() == np.clip(np.linspace(0, 64, 16), 0, 63).astype(int).tolist()
    assert video.finetune_indices(3, None).tolist() == [2] * 16


def test_dense_test_windows():
    # every 4th frame (75 of them for 300), 5 windows of 16 at int(k * (75 - 16) / 4) = 0, 14, 29, 44, 59
    windows = video.dense_test_indices(300, 16, 4, 5)
    assert windows.shape == (5, 16)
    assert (windows[:, 0] // 4).tolist() == [0, 14, 29, 44, 59]
    assert all(np.array_equal(np.diff(w), np.full(15, 4)) for w in windows)
    # short: 0, 4, ..., 28 padded with 28; every window the same
    assert (video.dense_test_indices(30, 16, 4, 5) == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8).all()
    assert video.dense_test_indices(300, 16, 4, 1).tolist() == [list(range(0, 64, 4))]


def test_ssv2_segment_sampling():
    for seed in range(20):
        idx = video.segment_indices(160, np.random.default_rng(seed))
        assert ((idx // 10) == np.arange(16)).all()  # one frame in each segment of 10
    assert video.segment_indices(30, np.random.default_rng(0)).tolist() == list(range(16))  # segments of 1
    assert video.segment_indices(10, np.random.default_rng(0)).tolist() == [0] * 16
    views = video.segment_test_indices(30)  # tick 1.875: starts int(1.875 x), middles int(0.9375 + 1.875 x)
    assert views[0].tolist() == [int(1.875 * x) for x in range(16)]
    assert views[1].tolist() == [int(0.9375 + 1.875 * x) for x in range(16)]
    assert video.segment_test_indices(8).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]] * 2


# ---- transforms ----

def test_multi_scale_crop_boxes():
    # 320x240 to 224: sides int(240 * s) = 240, 210, 180, 158; pairs one scale step apart; 13 positions
    sides = [240, 210, 180, 158]
    pairs = {(sides[j], sides[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    seen = set()
    for seed in range(400):
        left, top, w, h = video.multi_scale_crop_box(320, 240, 224, np.random.default_rng(seed))
        assert (w, h) in pairs
        ws, hs = (320 - w) // 4, (240 - h) // 4
        assert left % max(ws, 1) == 0 and top % max(hs, 1) == 0 and left + w <= 320 and top + h <= 240
        seen.add((w, h))
    assert seen == pairs
    # a side within 3 px of the crop size snaps to it
    assert {video.multi_scale_crop_box(226, 226, 224, np.random.default_rng(s))[2] for s in range(100)} <= {
        224, 197, 169, 149}


def test_the_same_crop_on_every_frame():
    frame = textured(1, 48, 64)[0]
    clip = np.stack([frame] * 6)
    out = video.multi_scale_crop(clip, 32, np.random.default_rng(0), flip=True)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[t], out[0]) for t in range(6))
    box = video.multi_scale_crop_box(64, 48, 32, np.random.default_rng(5))
    np.testing.assert_array_equal(video.multi_scale_crop(clip, 32, np.random.default_rng(5)),
                                  video.crop_resize(clip, box, 32))
    gray = clip[..., :1]
    assert video.multi_scale_crop(gray, 16, np.random.default_rng(0)).shape == (6, 16, 16, 1)


def moving_texture(frames: int = 6, step: int = 3) -> np.ndarray:
    """Blocks of 8 px sliding right by `step` px a frame (wrapping round)."""
    base = textured(1, 48, 64)[0]
    base = np.repeat(np.repeat(base[::8, ::8], 8, axis=0), 8, axis=1)
    return np.stack([np.roll(base, step * t, axis=1) for t in range(frames)])


def horizontal_motion(clip: np.ndarray) -> int:
    """The shift s (px, + is right) that best maps frame 0 onto frame 1: frame1(x) = frame0(x - s)."""
    a, b = clip[0].astype(float), clip[1].astype(float)
    errors = {s: np.abs(b[:, s:] - a[:, :-s]).mean() if s > 0 else np.abs(b[:, :s] - a[:, -s:]).mean()
              for s in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)}
    return min(errors, key=errors.get)


def test_flip_off_keeps_the_direction():
    clip = moving_texture()
    assert horizontal_motion(clip) == 3
    kept = [horizontal_motion(video.multi_scale_crop(clip, 48, np.random.default_rng(s))) for s in range(30)]
    assert all(m > 0 for m in kept)
    flipped = [horizontal_motion(video.multi_scale_crop(clip, 48, np.random.default_rng(s), flip=True))
               for s in range(30)]
    assert any(m < 0 for m in flipped) and any(m > 0 for m in flipped)


def test_evaluation_views():
    clip = textured(4, 240, 320)
    resized = video.resize_short_side(clip, 224)
    assert resized.shape == (4, 224, 298, 3)  # int(224 * 320 / 240)
    assert video.resize_short_side(clip[:, :, :200], 224).shape == (4, 268, 224, 3)  # portrait: int(224 * 240 / 200)
    assert video.resize_short_side(resized, 224) is resized  # short side already right: untouched
    three = video.eval_views(clip, 224, num_crops=3)
    assert three.shape == (3, 4, 224, 224, 3)
    for k, left in enumerate((0, 37, 74)):  # int(k * (298 - 224) / 2)
        np.testing.assert_array_equal(three[k], resized[:, :, left:left + 224])
    one = video.eval_views(clip, 224)
    np.testing.assert_array_equal(one[0], resized[:, :, 37:261])  # round(74 / 2)
    larger = video.eval_views(clip, 224, short_side=256)  # short side 256, then the centre 224
    assert larger.shape == (1, 4, 224, 224, 3)


def test_train_clips_sample_once_and_augment_each_copy(ramp_video):
    clips = video.TrainClips(size=16, num_sample=3, flip=True)
    out = clips(ramp_video, np.random.default_rng(7))
    assert out.shape == (3, 16, 16, 16, 3) and out.dtype == np.uint8
    expect = video.pretrain_indices(80, np.random.default_rng(7))  # the first draw is the temporal one
    assert all(frame_ids(copy).tolist() == expect.tolist() for copy in out)  # one temporal sample for all copies
    np.testing.assert_array_equal(out, clips(ramp_video, np.random.default_rng(7)))  # a function of (rng, video)
    tex = textured(16, 48, 64)
    copies = video.repeated_sample(tex, 4, np.random.default_rng(0), clips.augment)
    assert len({c.tobytes() for c in copies}) > 1  # each copy draws its own crop
    assert video.TrainClips(size=16, channels=1)(ramp_video, np.random.default_rng(0)).shape == (1, 16, 16, 16, 1)


def test_eval_clips_views_in_official_order(ramp_video):
    clips = video.EvalClips(size=16, num_frames=8, sampling_rate=2, test_num_segment=3, test_num_crop=3)
    out = clips(ramp_video)
    assert out.shape == (9, 8, 16, 16, 3)
    windows = video.dense_test_indices(80, 8, 2, 3)
    for view in range(9):  # segment-major, as the official test list (ck, cp)
        assert frame_ids(out[view]).tolist() == windows[view // 3].tolist()
    ssv2 = video.EvalClips(size=16, test_num_segment=2, test_num_crop=3, temporal="segments")(ramp_video)
    assert frame_ids(ssv2[3]).tolist() == video.segment_test_indices(80)[1].tolist()


# ---- sources ----

def make_tree(root, names: dict[str, list[str]], real: str | None = None) -> None:
    for cls, files in names.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for f in files:
            with open(os.path.join(root, cls, f), "wb") as out:
                out.write(open(real, "rb").read() if real else b"")


def test_folder_source(tmp_path, ramp_video):
    make_tree(tmp_path / "train", {"b_walk": ["2.mp4", "1.webm", "notes.txt", ".hidden.mp4"], "a_run": ["x.AVI"],
                                   "c_empty": []}, real=ramp_video)
    (tmp_path / "train" / ".cache").mkdir()
    src = video.VideoFolderSource(str(tmp_path), "train", video.EvalClips(size=16, test_num_crop=3))
    assert src.classes == ("a_run", "b_walk", "c_empty") and src.num_classes == 3
    assert len(src) == 3 and [src.label(i) for i in range(3)] == [0, 1, 1]
    assert src.path(2) == os.path.join(str(tmp_path), "train", "b_walk", "2.mp4") == src.raw(2) == src.describe(2)
    assert src.labels([2, 0]).tolist() == [1, 0]
    assert src.clips([0, 2]).shape == (2, 3, 16, 16, 16, 3)
    first = src.fingerprint()
    assert video.VideoFolderSource(str(tmp_path), "train").fingerprint() == first
    os.rename(tmp_path / "train" / "b_walk" / "2.mp4", tmp_path / "train" / "b_walk" / "3.mp4")
    renamed = video.VideoFolderSource(str(tmp_path), "train").fingerprint()
    (tmp_path / "train" / "c_empty" / "new.mkv").write_bytes(b"")
    added = video.VideoFolderSource(str(tmp_path), "train").fingerprint()
    assert len({first, renamed, added}) == 3


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.*does not exist") as e:
        video.VideoFolderSource(str(tmp_path), "val")
    assert "\n" not in str(e.value)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.mp4").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no videos.*\['loose.mp4'\].*class subfolders") as e:
        video.VideoFolderSource(str(tmp_path), "train")
    assert "\n" not in str(e.value)


def test_list_source(tmp_path, ramp_video):
    absolute = str(tmp_path / "elsewhere.mp4")
    os.link(ramp_video, absolute)
    (tmp_path / "videos").mkdir()
    os.link(ramp_video, tmp_path / "videos" / "a.mp4")
    listing = tmp_path / "train.csv"
    listing.write_text(f"videos/a.mp4 3\n\n{absolute} 0\n")
    src = video.VideoListSource(str(listing), evaluation=video.EvalClips(size=16))
    assert len(src) == 2 and src.labels([0, 1]).tolist() == [3, 0] and src.num_classes == 4
    assert src.path(0) == os.path.join(str(tmp_path), "videos/a.mp4") and src.path(1) == absolute
    assert src.clips([1]).shape == (1, 1, 16, 16, 16, 3)
    assert video.VideoListSource(str(listing), root="/data").path(0) == "/data/videos/a.mp4"
    first = src.fingerprint()
    listing.write_text(f"videos/a.mp4 2\n{absolute} 0\n")  # relabelled
    relabelled = video.VideoListSource(str(listing)).fingerprint()
    listing.write_text(f"videos/a.mp4 3\n{absolute} 0\nvideos/b.mp4 1\n")  # added
    assert len({first, relabelled, video.VideoListSource(str(listing)).fingerprint()}) == 3


@pytest.mark.parametrize("line", ["videos/a.mp4", "videos/a.mp4 x", "videos/a.mp4 300 3", "videos/a.mp4 -1"])
def test_bad_list_lines_fail_in_one_line(tmp_path, line):
    listing = tmp_path / "train.csv"
    listing.write_text(f"videos/ok.mp4 1\n{line}\n")
    with pytest.raises(DataError, match=f"{listing}:2: expected") as e:
        video.VideoListSource(str(listing))
    assert "\n" not in str(e.value)


def test_missing_or_empty_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        video.VideoListSource(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DataError, match="lists no videos"):
        video.VideoListSource(str(tmp_path / "empty.csv"))


def test_a_corrupt_video_in_a_source_is_named(tmp_path):
    make_tree(tmp_path / "test", {"a": ["bad.mp4"]})
    src = video.VideoFolderSource(str(tmp_path), "test", video.EvalClips(size=16))
    with pytest.raises(DataError, match="bad.mp4"):
        src.clips([0])


# ---- scripts/make_moving_fmnist.py ----

fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(DEFAULT_DIR, "t10k-labels-idx1-ubyte.gz"))
                            and not os.path.exists(os.path.join(DEFAULT_DIR, "t10k-labels-idx1-ubyte")),
                            reason="Fashion-MNIST IDX files not installed (Debian's dataset-fashion-mnist)")


def load_script():
    from scripts import make_moving_fmnist

    return make_moving_fmnist


@fmnist
@pytest.mark.slow
def test_moving_fmnist_directions_are_read_back_from_the_frames(tmp_path):
    out = str(tmp_path / "mf")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_moving_fmnist.py"), f"--out={out}",
                          "--train_clips=16", "--test_clips=8", "--directions=8", "--seed=3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["splits"]["train"]["round_trip_max_abs_error"] <= 1
    from mdistill.data.fashion_mnist import FashionMNISTSource

    labels = FashionMNISTSource("train").labels([c["object"] for c in meta["splits"]["train"]["clips"]])
    by_list = video.VideoListSource(os.path.join(out, "direction", "train.csv"))
    by_folder = video.VideoFolderSource(os.path.join(out, "direction"), "train")
    by_class = video.VideoListSource(os.path.join(out, "class", "train.csv"))
    assert len(by_list) == len(by_folder) == len(by_class) == 16
    assert sorted(by_list.labels(range(16)).tolist()) == sorted(by_folder.labels(range(16)).tolist()) == [
        d for d in range(8) for _ in range(2)]  # balanced
    assert by_class.labels(range(16)).tolist() == labels.tolist()
    assert by_folder.classes == tuple(meta["directions"]) and by_folder.classes[2] == "2_north"
    for i in range(16):
        frames = video.read_frames(by_list.path(i), range(16))
        assert frames.shape == (16, 64, 64, 3)
        mass = frames[..., 0].astype(float)
        ys, xs = np.arange(64)[None, :, None], np.arange(64)[None, None, :]
        cx, cy = (mass * xs).sum((1, 2)) / mass.sum((1, 2)), (mass * ys).sum((1, 2)) / mass.sum((1, 2))
        angle = math.atan2(-(cy[-1] - cy[0]), cx[-1] - cx[0])  # image y points down
        assert round(angle / (2 * math.pi / 8)) % 8 == by_list.label(i)
        assert os.path.samefile(by_list.path(i), by_class.path(i))  # one file, two labellings
    assert video.frame_count(video.VideoFolderSource(os.path.join(out, "class"), "test").path(0)) == 16


@fmnist
def test_moving_fmnist_is_deterministic_and_checks_its_flags(tmp_path):
    script = load_script()
    a = script.build(str(tmp_path / "a"), train_clips=3, test_clips=2, directions=4, seed=5)
    b = script.build(str(tmp_path / "b"), train_clips=3, test_clips=2, directions=4, seed=5)
    assert a == b
    for clip in a["splits"]["train"]["clips"]:
        assert open(tmp_path / "a" / "direction" / clip["file"], "rb").read() == \
            open(tmp_path / "b" / "direction" / clip["file"], "rb").read()
    with pytest.raises(FileExistsError, match="exists"):
        script.build(str(tmp_path / "a"), train_clips=1, test_clips=1)
    with pytest.raises(ValueError, match="travels"):
        script.build(str(tmp_path / "c"), speed=5.0)


# ---- repeated sampling (config.data.num_sample) through the pipeline ----

def ramp_list(tmp_path, count: int, length: int = 20) -> str:
    """`count` gray-ramp videos whose first frame level names the video (frame ids offset by
    10 * i), listed with label i."""
    lines = []
    for i in range(count):
        frames = gray_ramp(length) + np.uint8(30 * i)
        video.write_video(str(tmp_path / f"r{i}.mp4"), frames)
        lines.append(f"r{i}.mp4 {i}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "train.csv")


def repeated_config(path: str, num_sample: int, batch_size: int):
    from mdistill.config import apply_smoke, base_config

    c = base_config()
    c.method, c.num_frames = "mae", 16
    apply_smoke(c)
    c.data.update(source="video_list", path=path, root="", sampling_rate=2, flip=False, size=0,
                  num_sample=num_sample)
    c.update(batch_size=batch_size, num_epochs=2.0, total_steps=-1, warmup_steps=0)
    return c


def test_repeated_sampling_gives_each_video_num_sample_adjacent_clips(tmp_path):
    """VideoMAE's num_sample: a step reads batch / num_sample videos, each decoded once, and
    lays out num_sample independently cropped clips of the same frames as adjacent rows with
    the video's label; epochs count videos; the batches are a function of (seed, step)."""
    from mdistill import train
    from mdistill.data import Pipeline, transforms

    c = repeated_config(ramp_list(tmp_path, 6), num_sample=3, batch_size=6)
    assert train.plan_steps(c).steps_per_epoch == 3  # 6 videos, 2 per step
    tf = transforms.from_config(c)
    assert tf.repeats == 3 and tf.sample_shape == (3, 4, 32, 32, 3)
    pipe = Pipeline.from_config(c, labels=True, workers=0)
    assert pipe.layout.global_batch == 2 and pipe.steps_per_epoch == 3
    batch = pipe.local_batch(1)
    assert batch["image"].shape == (6, 4, 32, 32, 3) and batch["skipped"].shape[0] == 2
    labels = batch["label"].tolist()
    assert labels[:3] == [labels[0]] * 3 and labels[3:] == [labels[3]] * 3 and labels[0] != labels[3]
    ids = frame_ids(batch["image"])  # [6, 4]: frame ids (+ 10 x the video's index)
    for video_rows in (ids[:3], ids[3:]):
        assert (video_rows == video_rows[0]).all()  # one temporal sample per video
    for row in (0, 3):  # the frames are the labelled video's: ids 10 * label + [0, 20)
        assert ((ids[row] - 10 * labels[row] >= 0) & (ids[row] - 10 * labels[row] < 20)).all()
    again = Pipeline.from_config(c, labels=True, workers=0).local_batch(1)
    np.testing.assert_array_equal(batch["image"], again["image"])
    seen = {int(label) for step in range(3) for label in pipe.local_batch(step)["label"][::3]}
    assert seen == set(range(6))  # an epoch reads every video once


def test_repeated_sampling_is_refused_where_it_cannot_apply(tmp_path):
    from mdistill.config import validation

    c = repeated_config(ramp_list(tmp_path, 2), num_sample=4, batch_size=6)
    with pytest.raises(validation.ConfigError, match="batch_size.*multiple of data.num_sample=4") as e:
        validation.validate(c, 1)
    assert "\n" not in str(e.value)
    c.batch_size = 8
    validation.validate(c, 1)
    c.data.source = "synthetic"
    with pytest.raises(validation.ConfigError, match="data.num_sample.*video sources"):
        validation.validate(c, 1)
    c.data.update(source="video_list", num_sample=0)
    with pytest.raises(validation.ConfigError, match="data.num_sample.*integer >= 1"):
        validation.validate(c, 1)
