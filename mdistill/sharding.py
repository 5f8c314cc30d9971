"""Device mesh and shardings, in one place.

The mesh has two named axes, 'data' and 'fsdp' (config.mesh, -1 = all remaining devices).
The batch is split over both. Parameters, optimizer state and the frozen teacher are split
over 'fsdp' by PARTITION_RULES; with fsdp=1 everything but the batch is replicated.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every device

# Arrays smaller than this stay replicated: splitting them saves little and costs a gather.
MIN_SHARDED_SIZE = 2 ** 14

# (regex on the parameter path, rule). Rules: 'replicate', or 'fsdp' = split the largest
# dimension divisible by the fsdp axis size. The first matching rule wins.
PARTITION_RULES = (
    (r".*\['(cls_token|mask_token)'\]", "replicate"),  # tiny, read by every token
    (r".*", "fsdp"),
)


def make_mesh(devices=None, shape: dict | None = None) -> Mesh:
    """Mesh of `devices` (default: all) with axes ('data', 'fsdp') of sizes `shape`."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    sizes = {"data": -1, "fsdp": 1, **(shape or {})}
    if set(sizes) != set(MESH_AXES):
        raise ValueError(f"mesh axes {sorted(sizes)}: expected {list(MESH_AXES)}")
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1 or devices.size % known or (not free and known != devices.size):
        raise ValueError(f"mesh {sizes} does not fit {devices.size} devices")
    for k in free:
        sizes[k] = devices.size // known
    return Mesh(devices.reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def partition_spec(path: str, shape: tuple[int, ...], fsdp_size: int) -> P:
    rule = next(r for pattern, r in PARTITION_RULES if re.fullmatch(pattern, path))
    if rule == "replicate" or fsdp_size == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return P()
    divisible = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: shape[i])
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def tree_shardings(mesh: Mesh, tree):
    """NamedSharding for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    fsdp_size = mesh.shape["fsdp"]

    def one(path, leaf):
        return NamedSharding(mesh, partition_spec(jax.tree_util.keystr(path), tuple(leaf.shape), fsdp_size))

    return jax.tree_util.tree_map_with_path(one, tree)


def bytes_per_device(tree, shardings) -> int:
    """Bytes of `tree` held by one device under `shardings`."""
    total = 0
    for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        total += int(np.prod(s.shard_shape(tuple(leaf.shape)))) * np.dtype(leaf.dtype).itemsize
    return total
