"""Orbax checkpoints of a training run: items 'params', 'opt_state' and 'meta' (step and
config as JSON) under <workdir>/checkpoints/<step>/. Saves are asynchronous and atomic:
Orbax writes to a temporary directory and renames it when complete, so a partial save is
never visible."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(directory: str, keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
    handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, meta: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            opt_state=ocp.args.StandardSave(opt_state),
                                            meta=ocp.args.JsonSave(meta)))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state):
    """-> (params, opt_state, meta), placed with the shardings of the abstract targets."""
    out = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return out["params"], out["opt_state"], out["meta"]


def _resolve(path: str) -> tuple[str, int]:
    """Accept a workdir, its checkpoints/ folder or one step folder -> (manager dir, step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
        return os.path.dirname(path), int(base)
    directory = checkpoint_dir(path) if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = manager(directory, create=False).all_steps()
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory!r} (expected <step>/params inside)")
    return directory, max(steps)


def load_params(path: str, sharding) -> tuple[dict, dict]:
    """Parameters of the latest checkpoint at `path`, each placed with `sharding`,
    and the run's meta (step, config)."""
    directory, step = _resolve(path)
    mngr = manager(directory, create=False)
    metadata = mngr.item_metadata(step)
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            metadata["params"])
    out = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return out["params"], out["meta"]
