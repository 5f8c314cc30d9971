"""What the evaluators share: the pre-trained encoder out of a checkpoint, labelled splits,
jitted feature extraction sharded over the mesh, and results as JSON plus a small table."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdistill import data, inputs, sharding
from mdistill import workdir as paths
from mdistill.data import transforms
from mdistill.config import base_config, upgrade
from mdistill.data.synthetic import SyntheticSource
from mdistill.metrics import log
from mdistill.models.vit import Encoder, ViTSpec, variant_name
from mdistill.objectives.common import normalize_images
from mdistill.weights import checkpoint, loader

POOLS = ("avg", "cls")
# Reference "encoders" printed beside every pre-trained one: the model's normalised input
# pixels, flattened, and a randomly initialised encoder of the evaluated architecture. A
# learned representation is worth something only where it beats both.
BASELINES = ("pixels", "random")
RANDOM_ENCODER_SEED = 0  # fixed, so every table's 'random' row is the same encoder
PROGRESS_SECONDS = 30.0  # feature extraction logs its progress this often


encoder_params = loader.encoder_of  # the ViT encoder inside a checkpoint's params


def to_host(x) -> np.ndarray:
    """A global array as numpy on every process (device_get alone needs it addressable)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def run_config(meta: dict) -> ml_collections.ConfigDict:
    """The config a checkpoint was trained with, as today's (mdistill.config.upgrade: fields
    added since get what those runs did). A converted checkpoint has no run config: its
    architecture sets the student variant and image size, the rest is base_config()'s
    (ImageNet, TFDS), so set config.data.* to evaluate it on something else."""
    if "config" in meta:
        return upgrade(meta["config"], "the checkpoint's config")
    config = base_config()
    if "architecture" in meta:
        a = meta["architecture"]
        config.student.variant = variant_name(a["width"], a["depth"], a["num_heads"], a["patch_size"])
        config.image_size, config.data.channels = a["image_size"], a["channels"]
    return config


def load_encoder(path: str, mesh, variant: str | None = None, image_size: int = 0, channels: int = 3):
    """-> (encoder params on the mesh, the run's config; see run_config). The parameters are
    placed by mdistill.sharding's partition rules as they are read (split over 'fsdp' as
    pre-training's and fine-tuning's): an encoder too big for one device is never whole on one.

    `path`: an mdistill workdir, its checkpoints/ folder, one step folder, or a release
    converted by `python -m mdistill.weights.convert`. With `variant`, the checkpoint must hold
    exactly that encoder: a width or depth that does not fit fails here, listing the
    mismatched parameters, before anything compiles."""
    loaded = loader.load(path, variant, image_size=image_size, channels=channels if variant else None,
                         placement=mesh, decoder=False, field="config.student.variant")
    return loaded.encoder, run_config(loaded.meta)


def random_encoder(variant: str, image_size: int, channels: int, mesh, seed: int = RANDOM_ENCODER_SEED,
                   config=None) -> dict:
    """Parameters of a freshly initialised encoder (the 'random' baseline), placed by the
    partition rules as load_encoder's; with `config`, of its inputs' layout (a video ViT for
    clips). The values do not depend on the placement (JAX's partitionable threefry)."""
    spec = inputs.spec_of(config, variant) if config is not None else ViTSpec.parse(variant)
    shape = inputs.sample_shape(config) if config is not None else (image_size, image_size, channels)
    args = (jax.random.PRNGKey(seed), jnp.zeros((1, *shape), jnp.float32))
    placed = sharding.tree_shardings(mesh, jax.eval_shape(Encoder(spec).init, *args))
    return jax.jit(Encoder(spec).init, out_shardings=placed)(*args)["params"]


def baseline_params(name: str, config, mesh):
    """What FeatureExtractor.extract takes for baseline `name`: None (pixels) or the random
    encoder of config.student.variant."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r}: expected one of {BASELINES}")
    if name == "pixels":
        return None
    return random_encoder(config.student.variant, config.image_size, config.data.channels, mesh, config=config)


def labelled_source(config, split: str):
    """A data source for `split` that has labels, or a clear error."""
    d = config.data
    if d.source == "synthetic":  # no named splits: the test split is the same generator, other seed
        seed = config.seed + (0 if split == config.eval.train_split else 1)
        source = SyntheticSource(d.synthetic_size, config.image_size, d.channels, seed=seed,
                                 frames=inputs.num_frames(config))
    else:
        try:
            source = data.build_source(config, split)
        except FileNotFoundError as e:  # name the field that picks this split, not the pre-training's
            field = next((f"config.eval.{name}" for name in ("test_split", "train_split")
                          if config.eval[name] == split), "the split")
            raise FileNotFoundError(f"{field}={split!r}: {e}") from e
    error = ValueError(f"data source {d.source!r} (split {split!r}) has no labels; k-NN, linear probing and "
                       "fine-tuning need a labelled dataset")
    if not callable(getattr(source, "labels", None)):
        raise error
    try:
        source.labels(np.zeros(1, np.int64))  # e.g. a TFDS dataset without a 'label' feature
    except (KeyError, TypeError) as e:
        raise error from e
    return source


def count_classes(source, labels: np.ndarray | None = None) -> int:
    """The class count of a labelled source: what it declares (its class folders, its
    metadata), else the largest label seen in `labels` (or all its labels) plus one."""
    declared = getattr(source, "num_classes", None)
    if declared:
        return int(declared)
    if labels is None:
        labels = source.labels(np.arange(len(source)))
    return int(np.max(labels)) + 1


def with_top5(num_classes: int) -> bool:
    """Top-5 accuracy means something only with more than 5 classes (with 5 or fewer it is
    100%, and top_k cannot take k above the class count)."""
    return num_classes > 5


def data_record(config, splits: dict, num_classes: int | None = None) -> dict:
    """What an evaluation was computed on, for its result JSON: the source and where it is,
    each split's name and example count, and the class count (and names, where known)."""
    d = config.data
    out = {"source": d.source}
    if d.source == "tfds":
        out.update(name=d.name, data_dir=d.data_dir or "~/tensorflow_datasets")
    elif d.source != "synthetic":
        out["path"] = paths.resolve(d.path)
    for role, split in splits.items():
        source = split.source
        folder = getattr(source, "directory", None) or getattr(source, "base", None)
        name = config.eval[f"{role}_split"]
        out[role] = dict(split=name, examples=len(split), **({"folder": paths.resolve(folder)} if folder else {}))
    num_classes = num_classes or config.num_classes
    if num_classes:
        out["num_classes"] = int(num_classes)
    first = next(iter(splits.values()), None)
    classes = getattr(getattr(first, "source", None), "classes", None)
    if classes is not None:
        out["classes"] = list(classes)
    return out


def subset(size: int, n: int, seed: int = 0) -> np.ndarray:
    """n indices drawn once with a fixed seed (all of them for n < 0), sorted for locality."""
    if n < 0 or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


class SubsetSource:
    """Records `indices` of a source, as a source of their own (for data.Pipeline)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int):
        return self.source.raw(int(self.indices[int(index)]))

    def label(self, index: int) -> int:
        return self.source.label(int(self.indices[int(index)]))

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[int(index)]))

    def fingerprint(self) -> str:
        digest = hashlib.sha1(self.indices.tobytes()).hexdigest()[:12]
        return f"{self.source.fingerprint()}:subset-{len(self)}-{digest}"

    def images(self, indices) -> np.ndarray:
        return self.source.images(self.indices[np.asarray(indices)])

    def labels(self, indices) -> np.ndarray:
        return self.source.labels(self.indices[np.asarray(indices)])


class Split:
    """A labelled subset of a source. Images are read per batch; labels all at once on
    first use of .labels (k-NN, linear probe) or per batch with labels_at (fine-tuning)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices, self._labels = source, np.asarray(indices), None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self.source.labels(self.indices).astype(np.int32)
        return self._labels

    def labels_at(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        if self._labels is not None:
            return self._labels[rows]
        return self.source.labels(self.indices[rows]).astype(np.int32)

    def images(self, rows) -> np.ndarray:
        return self.source.images(self.indices[np.asarray(rows)])

    def as_source(self):
        """The split as a data source (the whole source when it is all of it)."""
        if len(self.indices) == len(self.source) and np.array_equal(self.indices, np.arange(len(self.source))):
            return self.source
        return SubsetSource(self.source, self.indices)


def load_split(config, split: str, n: int = -1, num_classes: int | None = None, eager: bool = True) -> Split:
    """n examples (-1: all) of a labelled split. eager reads all labels now; those outside
    [0, num_classes) fail here."""
    source = labelled_source(config, split)
    out = Split(source, subset(len(source), n))
    if eager:
        check_labels(out.labels, num_classes, split)
    return out


def check_labels(labels: np.ndarray, num_classes: int | None, split: str) -> None:
    if num_classes and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"split {split!r} has labels in [{labels.min()}, {labels.max()}], "
                         f"outside [0, config.num_classes={num_classes})")


def ordered_batches(config, split: Split, batch_size: int, batch_sharding, transform=None) -> data.Pipeline:
    """(images, labels) of `split` in order, every example once, as global arrays through the
    input pipeline (config.data's workers and threads; each host reads its share) with the
    evaluation transform. The last batch is padded by repeating the final example, with
    label -1 (static shapes: one compilation). `transform` replaces the evaluation transform."""
    steps = -(-len(split) // batch_size)
    transform = transform if transform is not None else transforms.from_config(config, train=False)
    return data.Pipeline.from_config(config, batch_sharding, 0, steps, source=split.as_source(),
                                     transform=transform, batch_size=batch_size,
                                     labels=True, shuffle=False)


class FeatureExtractor:
    """Frozen encoder -> pooled features [N, width], jitted, batches sharded over the mesh.

    pool 'avg' is the mean of the patch tokens, 'cls' the cls token, both after the final
    norm. The parameters keep whatever sharding they have (a training state's included);
    params None gives the raw-pixel baseline: the normalised images, flattened (every pool).
    extract() returns the features of all batches, padding rows included, as one global
    array sharded over examples, and their labels (-1 for padding); with all_pools=True the
    features are a dict {pool: array} of every pooling from the same forward pass."""

    def __init__(self, config, mesh, pool: str | None = None):
        self.config, self.pool = config, pool or config.eval.pool
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r}: expected one of {POOLS}")
        spec = inputs.student_spec(config)
        self.cls = int(spec.layout.class_token)
        if not self.cls and self.pool == "cls":
            raise ValueError(f"pool 'cls': {config.student.variant} has no cls token here (a video ViT); "
                             "use config.eval.pool='avg'")
        self.encoder = Encoder(spec)
        self.batch_size = config.eval.batch_size
        self.batch_sharding = sharding.batch_sharding(mesh)
        self._one = jax.jit(lambda params, images: self.pooled(params, images)[self.pool],
                            out_shardings=self.batch_sharding)
        self._all = jax.jit(self.pooled, out_shardings=self.batch_sharding)

    def pooled(self, params, images) -> dict:
        """uint8 images [B, H, W, C] (clips [B, T, H, W, C]) -> {pool: [B, width]}; traceable, so a jitted step can
        call it (the linear probe on augmented images does)."""
        x = normalize_images(images, self.config.data.mean, self.config.data.std)
        if params is None:
            flat = x.reshape(x.shape[0], -1)
            return {"avg": flat, "cls": flat}
        tokens, _ = self.encoder.apply({"params": params}, x)
        avg = tokens[:, self.cls:].mean(axis=1)
        return {"avg": avg, "cls": tokens[:, 0] if self.cls else avg}

    def extract(self, params, split: Split, all_pools: bool = False):
        fn = self._all if all_pools else self._one
        feats, labels = [], []
        progress = Progress(len(split), "features")
        with ordered_batches(self.config, split, self.batch_size, self.batch_sharding) as batches:
            for images, y in batches:
                feats.append(fn(params, images))
                labels.append(y)
                progress.update(len(feats) * self.batch_size, feats[-1])
        return jax.tree.map(lambda *f: jnp.concatenate(f), *feats), jnp.concatenate(labels)


class Progress:
    """A line every `every` seconds while a long pass runs: done / total, images/s, ETA."""

    def __init__(self, total: int, what: str, every: float = PROGRESS_SECONDS):
        self.total, self.what, self.every = total, what, every
        self.t0 = self.last = time.time()

    def update(self, done: int, pending=None) -> None:
        now = time.time()
        if now - self.last < self.every or done >= self.total:
            return
        if pending is not None:
            jax.block_until_ready(pending)  # count what is computed, not what is queued
            now = time.time()
        done = min(done, self.total)
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        log(f"{self.what}: {done}/{self.total} images | {rate:.0f} img/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        self.last = now


def topk_correct(logits, labels, k: int):
    """Number of rows whose label is among the k highest logits (labels < 0: padding, never)."""
    top = jax.lax.top_k(logits, k)[1]
    return jnp.sum(jnp.any(top == labels[:, None], axis=1) & (labels >= 0))


def validate_downstream(config, num_devices: int) -> None:
    """The linear-probe and fine-tuning configs: the shared fields as for pre-training, then
    their own."""
    from mdistill.config.validation import ConfigError, validate

    validate(config, num_devices)
    # a video ViT on images (or the reverse) would fail deep in the encoder: refused here, named
    check_model_fits_data(config, f"config.pretrained {config.pretrained}" if config.pretrained else
                          f"config.student.variant={config.student.variant!r}")
    if config.num_classes != 0 and config.num_classes < 2:
        raise ConfigError(f"config.num_classes={config.num_classes} is invalid: must be >= 2, or 0 for the data's "
                          "class count")
    for name in ("train_examples", "test_examples"):
        if config[name] != -1 and config[name] < 1:
            raise ConfigError(f"config.{name}={config[name]} is invalid: must be >= 1, or -1 for the whole split")


def comparison_table(rows: dict, columns: tuple) -> str:
    """Markdown table: one row per encoder ({name: results}), the given result columns."""
    lines = ["| encoder | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in columns) + " |")
    return "\n".join(lines)


def write_results(workdir: str, name: str, results: dict) -> str:
    """<workdir>/<name>.json, and the same as a two-column table on the console (with a
    'baselines' entry, {baseline: results}, also a table of the encoder beside them).
    Written to a temporary file beside it and renamed, so a reader, a full disk or a crash
    never leaves half a file (an earlier one stays whole until the new one is complete);
    a non-finite number is refused, naming its key, before anything is written."""
    path = paths.join(workdir, f"{name}.json")
    if jax.process_index() == 0:
        bad = non_finite(results)
        if bad:
            raise FloatingPointError(f"{name} results: non-finite {', '.join(bad)}; {path} not written")
        paths.makedirs(workdir)
        checkpoint.write_atomically(path, json.dumps(results, indent=2, allow_nan=False).encode())
        baselines = results.get("baselines", {})
        results = {k: v for k, v in results.items() if not isinstance(v, dict)}  # nested: in the JSON only
        cells = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in results.items()}
        w1, w2 = max(map(len, cells)), max(map(len, cells.values()))
        rows = [f"| {'metric':<{w1}} | {'value':>{w2}} |", f"|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|"]
        rows += [f"| {k:<{w1}} | {v:>{w2}} |" for k, v in cells.items()]
        log("\n".join([f"{name} results ({path})"] + rows))
        if baselines:
            columns = tuple(k for k in ("knn_top1", "top1") if k in results)
            log("beside the baselines:\n" + comparison_table({"encoder": results, **baselines}, columns))
    return path


def non_finite(tree, prefix: str = "") -> list[str]:
    """Dotted keys of the NaN / inf floats in a nested dict (lists included)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    out = []
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            out += non_finite(v, f"{prefix}{k}.")
        elif isinstance(v, (float, np.floating)) and not math.isfinite(v):
            out.append(f"{prefix}{k}={v}")
    return out


@contextlib.contextmanager
def hold_workdir(workdir: str, *folders: str):
    """What pre-training does before its work, for an evaluation writing into `workdir`: the
    workdir (and its sub-`folders`) checked writable, then held with the workdir lock
    (mdistill.weights.checkpoint.workdir_lock) while the block runs, so a second process on the same
    workdir is refused at once instead of mixing its results into this one's."""
    checkpoint.ensure_writable(workdir)
    for folder in folders:
        checkpoint.ensure_writable(paths.join(workdir, folder), f"workdir {workdir!r}: folder")
    with checkpoint.workdir_lock(workdir):
        yield


# What a source gives: clips (video files) or images; synthetic data follows config.num_frames, and
# tfds its dataset's features (a Video feature read as clips, else images: checked when it is opened).
IMAGE_SOURCES = ("fashion_mnist", "folder", "prepared")


def check_model_fits_data(config, model: str, tubelet: int | None = None) -> None:
    """The model takes what the data gives, refused in one line naming what disagrees:
    `tubelet`, the evaluated checkpoint's (0: an image ViT; None: not known), against
    config.num_frames / tubelet_size; then config.num_frames (> 1: a video ViT) against
    config.data.source (video files give clips, image sources images). `model` names the
    checkpoint in the message."""
    from mdistill.config.validation import ConfigError

    frames = inputs.num_frames(config)
    wanted = int(config.tubelet_size) if frames > 1 else 0
    if tubelet is not None and tubelet != wanted:
        if tubelet:
            raise ConfigError(f"{model} is a video ViT (tubelets of {tubelet} frames) but config.num_frames={frames}"
                              + (f", config.tubelet_size={wanted}" if frames > 1 else " asks for images")
                              + ": set --config.num_frames to the clips' frame count and --config.tubelet_size="
                              f"{tubelet}, or evaluate an image model")
        raise ConfigError(f"{model} is an image ViT but config.num_frames={frames} asks for clips: set "
                          "--config.num_frames=1, or evaluate a video model")
    source = config.data.source
    if frames > 1 and source in IMAGE_SOURCES:
        raise ConfigError(f"{model} is a video ViT (config.num_frames={frames}) but config.data.source={source!r} "
                          f"gives images: evaluate it on clips (config.data.source in {data.VIDEO_SOURCES}, or "
                          "tfds with a Video feature)")
    if frames == 1 and source in data.VIDEO_SOURCES:
        raise ConfigError(f"{model} is an image ViT (config.num_frames=1) but config.data.source={source!r} gives "
                          f"clips: evaluate it on images (config.data.source in {(*IMAGE_SOURCES, 'tfds')}), or a "
                          "video model")
