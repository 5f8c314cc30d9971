"""Pictures of what a masked autoencoder sees and predicts.

reconstruction_grid: one row per image under a header naming the columns, original |
masked (what the student sees) | reconstruction | reconstruction + visible (the visible
patches pasted back), as in the MAE paper's figures. For AMD a fifth column shows both
masks: patches only the teacher sees are tinted blue, patches nobody sees are dark. For
clips (config.num_frames > 1) each row is one clip and each column a strip of its frames
side by side (at most MAX_FRAMES, evenly spaced): original | masked | reconstruction (and
AMD's masks).

With norm_pix_loss the model predicts each hidden patch standardised by its own mean and
variance (a clip's: each tubelet and channel by its own, VideoMAE's target); to draw it we
put back the original patch's statistics, as the MAE demos do (so the pictures show the
predicted structure, not the predicted brightness).

ReconstructionWriter writes the grid to <workdir>/visualizations/recon_<step>.png and to
TensorBoard; it is one of pre-training's monitors (mdistill.loop), run every
config.visualize_every steps and at the last step, on a fixed set of training samples
spread over the dataset and its classes (sample_indices), with a fixed mask, so the
pictures compare across steps. It draws from its own rng and only reads the parameters:
training is the same with or without it.
"""

from __future__ import annotations

import os

import einops
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mdistill import inputs
from mdistill import workdir as paths
from mdistill.models.mae import patchify, unpatchify

HIDDEN_SHADE = 0.15  # brightness of hidden patches in the "masked" column (0 black, 1 original)
TEACHER_TINT = np.array([0.35, 0.55, 1.0])  # RGB multiplier for teacher-only patches (AMD)
COLUMNS = {"original": "original", "masked": "masked", "reconstruction": "reconstruction",
           "pasted": "reconstruction + visible", "masks": "masks (blue: teacher only)"}
VIDEO_COLUMNS = ("original", "masked", "reconstruction", "masks")  # frame strips are wide: no pasted column
MAX_FRAMES = 8  # frames drawn per clip
CELL = 112  # pixels a sample is drawn at, about: smaller images enlarged, larger frames of clips reduced
GAP = 4  # pixels between columns (and between a strip's frames: 1)
ROWS, CLIP_ROWS = 8, 4  # samples drawn: images, clips


def _masks(objective, rng, batch_size):
    """(student mask, [B, L] 1.0 where only the teacher sees a patch, or None)."""
    masks = objective.sample_masks(rng, batch_size)
    if not masks.diff_ids.shape[1]:  # the teacher, if any, sees the student's patches
        return masks.student, None
    teacher_only = jnp.zeros((batch_size, objective.num_patches)).at[  # AMD: nested student / teacher masks
        jnp.arange(batch_size)[:, None], masks.diff_ids].set(1.0)
    return masks.student, teacher_only


def _pixel_patches(objective, x, pred):
    """(target, prediction) patches in [0, 1] pixel units, and the inverse of patchify."""
    config, p, channels = objective.config, objective.spec.patch_size, x.shape[-1]
    mean = jnp.asarray(config.data.mean, jnp.float32)
    std = jnp.asarray(config.data.std, jnp.float32)
    pixels = x * std + mean
    pred = pred.astype(jnp.float32)
    tubelet = objective.spec.layout.tubelet
    if tubelet:  # VideoMAE: the decoder predicts pixels, per tubelet and channel standardised with norm_pix
        grid = x.shape[2] // p
        target = patchify(pixels, p, tubelet)
        if config.norm_pix_loss:
            per_channel = target.reshape(target.shape[:-1] + (-1, channels))
            pred = pred.reshape(per_channel.shape) * (jnp.sqrt(per_channel.var(-2, keepdims=True, ddof=1)) + 1e-6) \
                + per_channel.mean(-2, keepdims=True)
            pred = pred.reshape(target.shape)

        def to_image(patches):
            return einops.rearrange(patches, "b (n h w) (u p q c) -> b (n u) (h p) (w q) c", h=grid, w=grid,
                                    u=tubelet, p=p, q=p, c=channels)
        return target, pred, to_image
    target = patchify(x, p)  # MAE: standardised pixels, per patch with norm_pix
    if config.norm_pix_loss:
        pred = pred * jnp.sqrt(target.var(-1, keepdims=True) + 1e-6) + target.mean(-1, keepdims=True)
    scale = jnp.tile(std, p * p)  # (row, col, channel) layout
    shift = jnp.tile(mean, p * p)
    return target * scale + shift, pred * scale + shift, lambda patches: unpatchify(patches, p, channels)


def predict(objective, params, images, rng):
    """Images (uint8 NHWC, or NTHWC clips) -> dict of float arrays in [0, 1] of the same
    layout: original, masked, reconstruction, pasted, and for AMD masks (student and teacher
    visibility)."""
    x = objective.prepare_images(images)
    mask, teacher_only = _masks(objective, rng, x.shape[0])
    pred, _, _ = objective.student_forward(params, x, mask)
    target, pred, to_image = _pixel_patches(objective, x, pred)
    hidden = mask.mask[..., None]

    def draw(patches):
        return jnp.clip(to_image(patches), 0.0, 1.0)

    out = {"original": draw(target),
           "masked": draw(target) * to_image(jnp.broadcast_to(1.0 - hidden * (1 - HIDDEN_SHADE), target.shape)),
           "reconstruction": draw(pred),
           "pasted": draw(target * (1.0 - hidden) + pred * hidden)}
    if teacher_only is not None:
        only = to_image(jnp.broadcast_to(teacher_only[..., None], target.shape))
        shade = to_image(jnp.broadcast_to(hidden, target.shape))
        tint = jnp.where(only[..., :1] > 0, jnp.asarray(TEACHER_TINT), 1.0)
        dark = jnp.where((shade[..., :1] > 0) & (only[..., :1] == 0), HIDDEN_SHADE, 1.0)
        out["masks"] = _rgb(out["original"]) * tint * dark
    return out


def _rgb(images):
    return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _resize(images: np.ndarray, size: int, reduce: bool) -> np.ndarray:
    """[..., H, W, 3] enlarged (pixel repeat) by an integer factor towards `size`, or with
    `reduce` (frame strips, which are wide) reduced by taking every k-th pixel."""
    h = images.shape[-3]
    if h < size:
        factor = size // h
        return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)
    stride = h // size
    return images[..., ::stride, ::stride, :] if reduce and stride > 1 else images


def _strip(clip: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> the chosen frames side by side, 1 white pixel apart: [H, n * (W + 1) - 1, 3]."""
    h = clip.shape[1]
    parts = []
    for i, t in enumerate(frames):
        if i:
            parts.append(np.ones((h, 1, 3), clip.dtype))
        parts.append(clip[t])
    return np.concatenate(parts, axis=1)


def frame_choice(num_frames: int) -> np.ndarray:
    """The frames a strip shows: all, or MAX_FRAMES evenly spaced."""
    if num_frames <= MAX_FRAMES:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, MAX_FRAMES).round().astype(int)


def _header(titles: list[str], widths: list[int]) -> np.ndarray:
    """White band with each title centred over its column (PIL's default font, wrapped to
    the column's width), columns GAP apart: uint8 [h, sum(widths) + GAP * (n - 1), 3]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = []
    for title, width in zip(titles, widths):
        lines, line = [], ""
        for word in title.split():
            candidate = f"{line} {word}".strip()
            if line and measure.textlength(candidate, font=font) > width - 4:
                lines.append(line)
                candidate = word
            line = candidate
        wrapped.append(lines + [line])
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (10, 2)
    line_height = ascent + descent + 2
    height = 4 + line_height * max(len(lines) for lines in wrapped)
    band = Image.new("RGB", (sum(widths) + GAP * (len(widths) - 1), height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    left = 0
    for lines, width in zip(wrapped, widths):
        for i, line in enumerate(lines):
            x = left + max(0, (width - measure.textlength(line, font=font)) / 2)
            draw.text((x, 2 + i * line_height), line, fill=(0, 0, 0), font=font)
        left += width + GAP
    return np.asarray(band)


def assemble(parts: dict, scale: int | None = None, header: bool = True) -> np.ndarray:
    """predict()'s output -> uint8 picture [header + rows * (cell + 1) - 1, columns * (cell +
    GAP) - GAP, 3]: a row per sample, a column per part (for clips, a strip of frames), titled
    in a header; white between them.
    `scale` enlarges images by that factor (None: towards CELL pixels)."""
    video = parts["original"].ndim == 5
    keys = [k for k in (VIDEO_COLUMNS if video else COLUMNS) if k in parts]
    frames = frame_choice(parts["original"].shape[1]) if video else None
    size = CELL if scale is None else parts["original"].shape[-3] * scale
    cells = []
    for k in keys:
        images = np.asarray(parts[k], np.float32)
        images = _resize(np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images, size, video)
        rows = [_strip(c, frames) if video else c for c in images]
        gap = np.ones((1, rows[0].shape[1], 3), np.float32)  # 1 white pixel between rows
        cells.append(np.concatenate([piece for r in rows for piece in (gap, r)][1:], axis=0))
    gap = np.ones((cells[0].shape[0], GAP, 3), np.float32)
    body = np.concatenate([piece for c in cells for piece in (gap, c)][1:], axis=1)
    body = (body * 255.0 + 0.5).astype(np.uint8)
    if not header:
        return body
    titles = [COLUMNS[k] for k in keys]
    if video:
        count = parts["original"].shape[1]
        shown = f"{len(frames)} of {count} frames" if len(frames) < count else f"{count} frames"
        titles = [f"{t} ({shown})" for t in titles]
    return np.concatenate([_header(titles, [c.shape[1] for c in cells]), body], axis=0)


def reconstruction_grid(objective, params, images, rng, scale: int | None = None, header: bool = True) -> np.ndarray:
    """The picture described in the module docstring, for uint8 NHWC `images` (NTHWC clips)."""
    return assemble(jax.device_get(predict(objective, params, images, rng)), scale, header)


def sample_indices(source, rows: int, candidates_per_row: int = 8) -> np.ndarray:
    """`rows` indices spread over the dataset and, where the source has labels, over its
    classes: candidates evenly spaced over the dataset; the first of each label, evenly
    spaced among them when there are more labels than rows, else every label's first, then
    its second, ...; sorted by label. Deterministic, and only the candidates' labels are read."""
    n = len(source)
    candidates = np.unique(np.linspace(0, n - 1, min(n, rows * candidates_per_row)).round().astype(np.int64))
    try:
        labels = np.asarray(source.labels(candidates))
    except (AttributeError, NotImplementedError, KeyError, TypeError):
        labels = None
    if labels is None or labels.shape != candidates.shape:
        return np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(np.int64))
    groups: dict[int, list[int]] = {}
    for index, label in zip(candidates.tolist(), labels.tolist()):
        groups.setdefault(label, []).append(index)
    firsts = [groups[label][0] for label in sorted(groups)]
    if len(firsts) >= rows:
        chosen = [firsts[i] for i in np.linspace(0, len(firsts) - 1, rows).round().astype(int)]
    else:
        rounds = max(len(g) for g in groups.values())
        chosen = [g[r] for r in range(rounds) for g in groups.values() if r < len(g)][:rows]
    label_of = dict(zip(candidates.tolist(), labels.tolist()))
    return np.asarray(sorted(chosen, key=lambda i: (label_of[i], i)), np.int64)


def samples(config, rows: int | None = None) -> np.ndarray:
    """The training samples the pictures show: uint8 [rows, H, W, C], or [rows, T, H, W, C]
    clips (ROWS images, CLIP_ROWS clips by default), spread over the data (sample_indices),
    in the evaluation view (centre crop). A sample that cannot be decoded is left out (the
    run skips it too), with a warning."""
    from mdistill import data
    from mdistill.metrics import log

    video = inputs.is_video(config)
    source = data.build_source(config)

    def read(indices):
        if video and hasattr(source, "clips"):  # video files: the evaluation clip's first view
            return np.asarray(source.clips(indices))[:, 0]
        return np.asarray(source.images(indices))

    indices = sample_indices(source, rows or (CLIP_ROWS if video else ROWS))
    try:
        return read(indices)
    except Exception:  # one bad file: read the others one by one
        pass
    good = []
    for i in indices:
        try:
            good.append(read([i])[0])
        except Exception as e:
            log(f"WARNING: reconstruction pictures leave out sample {i} ({type(e).__name__}: {e})")
    return np.stack(good) if good else np.zeros((0, *inputs.sample_shape(config)), np.uint8)


def save_png(path: str, picture: np.ndarray) -> None:
    from PIL import Image

    if paths.is_url(path):  # one object, uploaded whole
        paths.write_bytes(path, paths.png_bytes(picture))
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    Image.fromarray(picture).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


class ReconstructionWriter:
    """A monitor of pre-training (mdistill.loop.Monitor): every `every` steps
    (config.visualize_every) and at the last, a reconstruction grid of a fixed set of samples
    (`images`, e.g. samples(config)) with a fixed mask rng, so pictures compare across steps.
    It returns no metrics."""

    def __init__(self, trainer, workdir: str, images: np.ndarray, rows: int | None = None, tensorboard=None,
                 every: int = 0):
        self.objective, self.every = trainer.objective, every
        images = np.asarray(images[:rows] if rows else images)
        self.rng = jax.random.PRNGKey(trainer.config.seed + 7)
        self.dir = paths.join(workdir, "visualizations")
        self.tensorboard = tensorboard
        # every process runs it on the (possibly sharded) parameters, the same samples
        # replicated over the mesh; the result is replicated
        replicated = NamedSharding(trainer.mesh, PartitionSpec())
        self.images = jax.make_array_from_process_local_data(replicated, images) if len(images) else None
        self._predict = jax.jit(lambda params, images: predict(self.objective, params, images, self.rng),
                                out_shardings=replicated)

    def metric_names(self) -> set[str]:
        return set()

    def due(self, step: int, is_last: bool = False, saving: bool = False) -> bool:
        return bool(self.every) and (step % self.every == 0 or is_last)

    def maybe_run(self, step: int, params, is_last: bool = False, saving: bool = False) -> dict:
        """Draws the grid when due at `step` (see due); no metrics."""
        if self.due(step, is_last, saving):
            self(step, params)
        return {}

    def __call__(self, step: int, params) -> str | None:
        """Draws the grid of the trained parameters `params` at `step` -> the PNG's path (None
        on processes other than 0, or without samples)."""
        if self.images is None:  # no sample could be read
            return None
        parts = self._predict(params, self.images)
        if jax.process_index() != 0:
            return None
        picture = assemble(jax.device_get(parts))
        path = paths.join(self.dir, f"recon_{step:06d}.png")
        save_png(path, picture)
        if self.tensorboard is not None:
            self.tensorboard.add_image("reconstructions", picture, step, dataformats="HWC")
        return path
