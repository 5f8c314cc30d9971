"""What the evaluators share: the pre-trained encoder out of a checkpoint, labelled splits,
jitted feature extraction sharded over the mesh, and results as JSON plus a small table."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdistill import checkpoint, data, sharding
from mdistill.config_base import base_config
from mdistill.data.synthetic import SyntheticSource
from mdistill.metrics import log
from mdistill.models.vit import Encoder, ViTSpec
from mdistill.objectives.common import normalize_images

POOLS = ("avg", "cls")


def encoder_params(params: dict) -> dict:
    """The ViT encoder inside a checkpoint's params: {'mae': {'encoder'}} for MAE, DMAE and
    AMD runs, {'encoder'} or a bare encoder for converted ones."""
    if "mae" in params:
        return params["mae"]["encoder"]
    return params.get("encoder", params)


def with_eval_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run config saved before config.eval existed gets the defaults."""
    config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    if "eval" not in config:
        config.eval = base_config().eval
        if config.data.source == "fashion_mnist":
            config.eval.update(train_split="train", test_split="test")
    return config


def abstract_encoder(variant: str, image_size: int, channels: int):
    enc = Encoder(ViTSpec.parse(variant))
    images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    return jax.eval_shape(lambda x: enc.init(jax.random.PRNGKey(0), x), images)["params"]


def load_encoder(path: str, mesh, variant: str | None = None, image_size: int = 0, channels: int = 3):
    """-> (encoder params replicated on the mesh, the run's saved config).

    With `variant`, the checkpoint must hold exactly that encoder: a width or depth that does
    not fit fails here, listing the mismatched parameters, before anything compiles."""
    params, meta = checkpoint.load_params(path, sharding.replicated(mesh))
    enc = encoder_params(params)
    if variant:
        from mdistill.train import check_same_shapes

        check_same_shapes(enc, abstract_encoder(variant, image_size, channels), f"checkpoint {path}",
                          f"the encoder variant {variant!r}")
    return enc, with_eval_defaults(meta.get("config", {}))


def labelled_source(config, split: str):
    """A data source for `split` that has labels, or a clear error."""
    d = config.data
    if d.source == "synthetic":  # no named splits: the test split is the same generator, other seed
        seed = config.seed + (0 if split == config.eval.train_split else 1)
        source = SyntheticSource(d.synthetic_size, config.image_size, d.channels, seed=seed)
    else:
        source = data.build_source(config, split)
    if not callable(getattr(source, "labels", None)):
        raise ValueError(f"data source {d.source!r} (split {split!r}) has no labels; k-NN, linear probing and "
                         "fine-tuning need a labelled dataset")
    return source


def subset(size: int, n: int, seed: int = 0) -> np.ndarray:
    """n indices drawn once with a fixed seed (all of them for n < 0), sorted for locality."""
    if n < 0 or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


def load_split(config, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    source = labelled_source(config, split)
    idx = subset(len(source), n)
    return source.images(idx), source.labels(idx).astype(np.int32)


class FeatureExtractor:
    """Frozen encoder -> pooled features [N, width], jitted, batches sharded over the mesh.

    pool 'avg' is the mean of the patch tokens, 'cls' the cls token, both after the final
    norm. extract() pads the last batch (static shapes: one compilation) and returns the
    padded features as a global array sharded over examples; `valid` marks real rows."""

    def __init__(self, config, mesh, pool: str | None = None):
        if (pool or config.eval.pool) not in POOLS:
            raise ValueError(f"pool {pool or config.eval.pool!r}: expected one of {POOLS}")
        self.config, self.pool = config, pool or config.eval.pool
        self.encoder = Encoder(ViTSpec.parse(config.student.variant))
        self.batch_size = config.eval.batch_size
        self.batch_sharding = sharding.batch_sharding(mesh)
        self._fn = jax.jit(self._features, in_shardings=(sharding.replicated(mesh), self.batch_sharding),
                           out_shardings=self.batch_sharding)

    def _features(self, params, images):
        x = normalize_images(images, self.config.data.mean, self.config.data.std)
        tokens, _ = self.encoder.apply({"params": params}, x)
        return tokens[:, 1:].mean(axis=1) if self.pool == "avg" else tokens[:, 0]

    def extract(self, params, images: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        n, b = len(images), self.batch_size
        per_process = b // jax.process_count()
        out = []
        for start in range(0, n, b):
            idx = np.minimum(np.arange(start, start + b), n - 1)  # pad with the last image
            local = idx[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
            batch = jax.make_array_from_process_local_data(self.batch_sharding, images[local])
            out.append(self._fn(params, batch))
        padded = len(out) * b
        return jnp.concatenate(out), np.arange(padded) < n


def write_results(workdir: str, name: str, results: dict) -> str:
    """<workdir>/<name>.json, and the same as a two-column table on the console."""
    path = os.path.join(workdir, f"{name}.json")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        cells = {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in results.items()}
        w1, w2 = max(map(len, cells)), max(map(len, cells.values()))
        rows = [f"| {'metric':<{w1}} | {'value':>{w2}} |", f"|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|"]
        rows += [f"| {k:<{w1}} | {v:>{w2}} |" for k, v in cells.items()]
        log("\n".join([f"{name} results ({path})"] + rows))
    return path
