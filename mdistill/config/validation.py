"""Check a config once, before anything compiles: one error naming the field, the value
and what is allowed."""

from __future__ import annotations

import math

import jax
import numpy as np

from mdistill import inputs, masking
from mdistill.config.errors import ConfigError, require as _require, variant as _variant  # noqa: F401 (re-exported)
from mdistill.data import SOURCES, VIDEO_SOURCES, gives_clips
from mdistill.data.fashion_mnist import FILES as FMNIST_SPLITS
from mdistill.data.transforms import AUGMENTS
from mdistill.models.vit import REMAT_POLICIES
from mdistill.objectives import OBJECTIVES
from mdistill.objectives.mae import DTYPES


def validate(config, num_devices: int | None = None) -> None:
    num_devices = num_devices or jax.device_count()
    _require_finite(config)  # nan passes no comparison it should fail, inf many; int(nan) raises
    _require(config.method in OBJECTIVES, "method", config.method, f"expected one of {sorted(OBJECTIVES)}")
    _require(config.dtype in DTYPES, "dtype", config.dtype, f"expected one of {sorted(DTYPES)}")
    _require(config.remat in REMAT_POLICIES, "remat", config.remat,
             f"expected one of {REMAT_POLICIES}")

    student = _variant("student.variant", config.student.variant)
    p = student.patch_size
    _require(config.image_size > 0 and config.image_size % p == 0, "image_size", config.image_size,
             f"must be a positive multiple of the student's patch size {p}")
    frames = inputs.num_frames(config)
    _require(frames >= 1, "num_frames", frames, "must be >= 1 (1: images)")
    if frames > 1:
        t = config.tubelet_size
        _require(t >= 1 and frames % t == 0, "tubelet_size", t, f"must be >= 1 and divide num_frames={frames}")
    num_patches = (config.image_size // p) ** 2  # per frame for clips, where the masks are drawn
    visible = (masking.num_visible_per_frame if frames > 1 else masking.num_visible)(num_patches, config.mask_ratio)
    # the loss is a mean over masked patches: none masked makes it 0/0
    _require(0.0 < config.mask_ratio < 1.0 and 1 <= visible < num_patches,
             "mask_ratio", config.mask_ratio,
             f"must be in (0, 1) and mask at least one of the {num_patches} patches while leaving one visible")
    dec = config.student
    _require(dec.decoder_width % 4 == 0 and dec.decoder_width % dec.decoder_heads == 0,
             "student.decoder_width", dec.decoder_width,
             f"must be divisible by 4 and by decoder_heads={dec.decoder_heads}")
    _require(dec.decoder_depth >= 1, "student.decoder_depth", dec.decoder_depth, "must be >= 1")

    _require(config.batch_size > 0 and config.batch_size % num_devices == 0, "batch_size", config.batch_size,
             f"must be a positive multiple of the device count ({num_devices})")
    mesh = dict(config.mesh)
    free = [k for k, v in mesh.items() if v == -1]
    fixed = [v for v in mesh.values() if v != -1]
    product = int(np.prod(fixed)) if fixed else 1
    _require(set(mesh) == {"data", "fsdp"} and all(v == -1 or v >= 1 for v in mesh.values()) and len(free) <= 1
             and num_devices % product == 0 and (free or product == num_devices), "mesh", mesh,
             f"axes 'data' and 'fsdp' with sizes >= 1 (one may be -1) whose product is the device count "
             f"({num_devices})")
    accum = config.optim.accum_steps
    _require(accum >= 1 and config.batch_size % accum == 0 and (config.batch_size // accum) % num_devices == 0,
             "optim.accum_steps", accum,
             f"must divide batch_size={config.batch_size} into micro-batches divisible by {num_devices} devices")
    _require(config.total_steps >= 0 or config.num_epochs > 0, "num_epochs", config.num_epochs,
             "must be > 0 when total_steps < 0")
    _require(config.warmup_steps >= 0 or config.warmup_epochs >= 0, "warmup_epochs",
             config.warmup_epochs, "must be >= 0 when warmup_steps < 0")
    _require(config.log_every >= 1, "log_every", config.log_every, "must be >= 1")
    _require(config.checkpoint_every >= 1, "checkpoint_every", config.checkpoint_every, "must be >= 1")
    # LatestN(0) keeps nothing: every checkpoint, old ones included, would be deleted
    _require(config.keep_checkpoints >= 1, "keep_checkpoints", config.keep_checkpoints, "must be >= 1")
    _validate_best_metric(config)
    # PRNGKey keeps only 32 bits (and the teacher's init uses seed + 1); grain needs seed >= 0
    _require(0 <= config.seed < 2 ** 31, "seed", config.seed, "must be in [0, 2**31)")
    _validate_optim(config.optim)

    d = config.data
    _require(d.source in SOURCES, "data.source", d.source, f"expected one of {SOURCES}")
    _require(d.channels in (1, 3), "data.channels", d.channels, "expected 1 (grayscale) or 3")
    _require(len(d.mean) == d.channels and len(d.std) == d.channels, "data.mean/std", (d.mean, d.std),
             f"need one value per channel ({d.channels})")
    if d.source == "fashion_mnist":
        _require(d.split in FMNIST_SPLITS, "data.split", d.split, f"expected one of {sorted(FMNIST_SPLITS)}")
        _require(config.image_size == 28, "image_size", config.image_size, "Fashion-MNIST images are 28x28")
    if d.source == "folder":
        _require(bool(d.path), "data.path", d.path,
                 "must name the image folder's root (<path>/<split>/<class>/<image>)")
    _validate_pipeline(d)
    num_sample = d.num_sample
    _require(isinstance(num_sample, int) and num_sample >= 1, "data.num_sample", num_sample,
             "must be an integer >= 1 (clips drawn from each video read: repeated sampling)")
    _require(num_sample == 1 or gives_clips(config), "data.num_sample", num_sample,
             f"repeated sampling is for clips (video sources {VIDEO_SOURCES}, or tfds with num_frames > 1), "
             f"not data.source={d.source!r} with num_frames={config.num_frames}")
    _require(config.batch_size % num_sample == 0, "batch_size", config.batch_size,
             f"counts clips, so it must be a multiple of data.num_sample={num_sample} (videos per step x clips each)")

    kind = masking.kind_of(config)
    _require(kind in masking.ORDERS, "masking.kind", kind, f"expected one of {sorted(masking.ORDERS)}")
    _validate_masking(masking.options_of(config), kind, num_patches)

    validate_eval(config, num_devices)

    OBJECTIVES[config.method].validate(config)  # the method's own fields


def _require_finite(node, prefix: str = "") -> None:
    """Every float of the config (nested, and inside tuples) is a finite number: no field
    means anything by nan or inf."""
    items = node.items() if hasattr(node, "items") else enumerate(node)
    for key, value in items:
        field = f"{prefix}.{key}" if hasattr(node, "items") else f"{prefix}[{key}]"
        field = field.removeprefix(".")
        if hasattr(value, "items") or isinstance(value, (tuple, list)):
            _require_finite(value, field)
        elif isinstance(value, (float, np.floating)):
            _require(math.isfinite(value), field, value, "must be a finite number")


def _validate_masking(o: dict, kind: str, num_patches: int) -> None:
    """The structured kinds' options (checked whatever the kind, so a typo never waits)."""
    _require(isinstance(o["block_min_patches"], int) and o["block_min_patches"] >= 1, "masking.block_min_patches",
             o["block_min_patches"], "must be an integer >= 1")
    _require(isinstance(o["block_max_patches"], int) and o["block_max_patches"] >= o["block_min_patches"],
             "masking.block_max_patches", o["block_max_patches"], "must be an integer >= masking.block_min_patches")
    _require(0.0 < o["block_aspect"] <= 1.0, "masking.block_aspect", o["block_aspect"], "must be in (0, 1]")
    grid = int(round(num_patches ** 0.5))
    _require(isinstance(o["block_square"], int) and 0 <= o["block_square"] <= grid, "masking.block_square",
             o["block_square"], f"must be 0 (BEiT rectangles) or a square side of 1..{grid} patches")
    if kind == "block" and not o["block_square"]:  # the rectangles' areas are drawn within the grid's
        _require(o["block_min_patches"] <= num_patches, "masking.block_min_patches", o["block_min_patches"],
                 f"must be in 1..{num_patches}: a rectangle's area, at most the {grid}x{grid} grid's {num_patches} "
                 "patches")
        _require(o["block_max_patches"] <= num_patches, "masking.block_max_patches", o["block_max_patches"],
                 f"must be in {o['block_min_patches']}..{num_patches} (masking.block_min_patches..the {grid}x{grid} "
                 f"grid's {num_patches} patches)")
    _require(o["noise_color"] in masking.NOISE_COLORS, "masking.noise_color", o["noise_color"],
             f"expected one of {masking.NOISE_COLORS}")
    sigma, color = o["noise_sigma"], o["noise_color"]
    _require(sigma > 0, "masking.noise_sigma", sigma, "must be > 0 (patches)")
    if not masking.noise_varies(grid, color, sigma):
        span = masking.noise_sigma_range(grid, color)
        allowed = ("no value works" if span is None else
                   f"must be in {_interval(*span)} patches for {color} noise on this grid")
        _require(False, "masking.noise_sigma", sigma,
                 f"the {color} filter passes no varying frequency on the {grid}x{grid} patch grid (the filtered "
                 f"noise would be constant: the same mask for every sample and step): {allowed}")


def _interval(low: float, high: float) -> str:
    """[low, high] for people: 3 significant digits, rounded inwards (every shown value is allowed)."""
    def rounded(x: float, up: bool) -> str:
        unit = 10.0 ** (math.floor(math.log10(x)) - 2)
        return f"{(math.ceil if up else math.floor)(x / unit) * unit:.3g}"
    return (("(0" if low == 0 else "[" + rounded(low, up=True)) + ", "
            + ("inf)" if math.isinf(high) else rounded(high, up=False) + "]"))


def _validate_optim(o) -> None:
    _require(o.lr > 0 or o.lr == -1, "optim.lr", o.lr,
             "must be > 0 (the peak learning rate), or -1 for optim.blr * batch_size / 256")
    _require(o.blr > 0, "optim.blr", o.blr, "must be > 0 (peak lr = blr * batch_size / 256 when optim.lr is -1)")
    _require(o.min_lr >= 0, "optim.min_lr", o.min_lr, "must be >= 0")
    for name in ("b1", "b2"):
        _require(0 <= o[name] < 1, f"optim.{name}", o[name], "must be in [0, 1) (Adam's decay rate)")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables clipping)")


BEST_METRIC_FORM = "'' (none), '<metric>' (lowest is best), 'min:<metric>' or 'max:<metric>'"


def _validate_best_metric(config) -> None:
    """Its form here; whether the run logs that metric is checked by train.check_best_metric."""
    value = config.best_metric
    mode, _, name = value.rpartition(":")
    _require(not value or (mode in ("", "min", "max") and name), "best_metric", value, f"expected {BEST_METRIC_FORM}")
    # the k-NN monitor's metrics exist only with the monitor on (mdistill.evaluate.knn)
    _require(not name.startswith("knn_") or config.eval.knn_every > 0, "best_metric", value,
             "needs the k-NN monitor (config.eval.knn_every > 0)")


def _validate_pipeline(d) -> None:
    """config.data's input-pipeline fields (mdistill/data/pipeline.py)."""
    _require(d.augment in AUGMENTS, "data.augment", d.augment, f"expected one of {AUGMENTS}")
    scale = tuple(d.crop_scale)
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "data.crop_scale", d.crop_scale,
             "expected (min, max) area fractions with 0 < min <= max <= 1")
    _require(d.workers >= -1, "data.workers", d.workers,
             "expected >= 0 processes (0: decode in the training process) or -1 (one per CPU core)")
    _require(d.threads >= 0, "data.threads", d.threads, "must be >= 0")
    _require(d.prefetch >= 1, "data.prefetch", d.prefetch, "must be >= 1")
    _require(0 <= d.max_bad_fraction < 1, "data.max_bad_fraction", d.max_bad_fraction,
             "must be in [0, 1): the fraction of the dataset that may be undecodable and skipped")


def validate_eval(config, num_devices: int | None = None) -> None:
    """config.eval: the k-NN monitor and the feature extraction of the evaluators."""
    num_devices = num_devices or jax.device_count()
    _require_finite(config.eval, "eval")
    ev = config.eval
    _require(ev.knn_every >= 0, "eval.knn_every", ev.knn_every, "must be >= 0 (0 turns the k-NN monitor off)")
    _require(ev.knn_k >= 1, "eval.knn_k", ev.knn_k, "must be >= 1")
    _require(ev.knn_temperature > 0, "eval.knn_temperature", ev.knn_temperature, "must be > 0")
    for name in ("knn_train_examples", "knn_test_examples"):
        _require(ev[name] == -1 or ev[name] >= 1, f"eval.{name}", ev[name], "must be >= 1, or -1 for the whole split")
    _require(ev.knn_train_examples == -1 or ev.knn_train_examples >= ev.knn_k, "eval.knn_train_examples",
             ev.knn_train_examples, f"must be at least eval.knn_k={ev.knn_k}")
    _require(ev.pool in ("avg", "cls"), "eval.pool", ev.pool, "expected 'avg' (mean of patch tokens) or 'cls'")
    _require(ev.batch_size > 0 and ev.batch_size % num_devices == 0, "eval.batch_size", ev.batch_size,
             f"must be a positive multiple of the device count ({num_devices})")
    if config.data.source == "fashion_mnist":
        for name in ("train_split", "test_split"):
            _require(ev[name] in FMNIST_SPLITS, f"eval.{name}", ev[name], f"expected one of {sorted(FMNIST_SPLITS)}")
