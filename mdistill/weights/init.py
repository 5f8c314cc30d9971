"""A run's starting weights: the student's config.student.init and the frozen teacher's
config.teacher.checkpoint, read by mdistill.weights.loader, checked against the run's model
and placed by its shardings (mdistill.train.Trainer calls these)."""

from __future__ import annotations

import jax
import numpy as np

from mdistill import inputs
from mdistill.loop import TrainState
from mdistill.metrics import log
from mdistill.weights import checkpoint, loader


def student(config, objective, state: TrainState, path: str, state_sharding, tx) -> TrainState:
    """The student's encoder (and decoder, if the checkpoint has one) from `path`, checked
    against config.student: a video student (config.num_frames > 1) from a video
    checkpoint, an image student from an image one. Method heads (an mdistill run's by
    name, an official DMAE / AMD release's by position) load where they fit, the others
    are logged and keep their random init, as does every part the checkpoint lacks. The
    optimizer state is that of the new parameters (Adam's moments are zeros either way)."""
    c = config
    drop = loader.prefixes(c.student.init_ignore)
    try:
        loaded = loader.load(path, c.student.variant, image_size=c.image_size, channels=c.data.channels,
                             decoder_heads=c.student.decoder_heads, field="config.student.variant",
                             drop=drop, method_heads=True)
    except (ValueError, ImportError) as e:
        raise checkpoint.CheckpointError(f"config.student.init: {e}") from e
    have, want = loaded.arch.spec.layout, inputs.student_spec(c).layout
    if have.tubelet != want.tubelet:
        kind = lambda t: f"a video ViT ({t}-frame tubelets)" if t else "an image ViT"  # noqa: E731
        raise checkpoint.CheckpointError(
            f"config.student.init: {path} holds {kind(have.tubelet)} but the student is {kind(want.tubelet)} "
            f"(config.num_frames={inputs.num_frames(c)}, config.tubelet_size={c.tubelet_size}): a video student "
            "starts from a video checkpoint, an image student from an image one")
    if have != want:
        raise checkpoint.CheckpointError(
            f"config.student.init: {path} is a ViT with {have.describe() or 'MAE layout'}; the student is "
            f"{want.describe() or 'an MAE ViT (fixed sin-cos position embedding, cls token, qkv bias, final norm)'}"
            ", so it cannot start from it (as a teacher, config.teacher.checkpoint, it can be used)")
    mae = state.params["mae"]
    parts = {k: loaded.params[k] for k in ("encoder", "decoder") if k in loaded.params and k in mae}
    unused = [k for k in ("decoder",) if k in loaded.params and k not in mae]  # e.g. a TinyMIM student: no decoder
    want_shapes = {"/".join(p): tuple(v.shape) for p, v in loader.flatten({k: mae[k] for k in parts}).items()}
    have_shapes = {"/".join(p): tuple(np.shape(v)) for p, v in loader.flatten(parts).items()}
    problems = loader.shape_problems(have_shapes, want_shapes)
    if problems:
        s = c.student
        raise checkpoint.CheckpointError(
            f"config.student.init: {path} does not fit the student ({s.variant}, decoder width "
            f"{s.decoder_width} depth {s.decoder_depth}):\n" + "\n".join(problems))
    placed = loader.place(jax.device_get(parts), {k: state_sharding.params["mae"][k] for k in parts})
    params = {**state.params, "mae": {**mae, **placed}}
    params, heads, skipped = method_heads(config, objective, params, loaded, state_sharding)
    log(f"student initialised from {path}: {' and '.join(parts)}"
        + ("" if "decoder" in parts or "decoder" not in mae else " (the decoder keeps its random init)")
        + (f"; its {', '.join(unused)} left out (the student has none)" if unused else "")
        + (f"; heads {', '.join(heads)}" if heads else ""))
    if skipped:
        log(f"config.student.init: not loaded from {path} (kept at their random init):\n" + "\n".join(skipped))
    opt_state = jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params)
    return TrainState(state.step, params, opt_state)


def method_heads(config, objective, params: dict, loaded: loader.Weights,
                 state_sharding) -> tuple[dict, list[str], list[str]]:
    """params with the checkpoint's method heads where they fit -> (params, 'name <- source'
    of each head loaded, lines naming what was not). A head loads when every tensor the
    checkpoint has for it fits (name and shape); tensors it lacks (AMD's generator mask
    token, stored nowhere by the release) keep their init. An official release's head i
    is that of the i-th aligned student block (its order)."""
    from mdistill.objectives.amd import generator_name
    from mdistill.objectives.distill import head_name

    pairs = sorted(getattr(objective, "pairs", ()))
    by_index = {"heads": [head_name(s, t) for s, t in pairs],
                "generators": [generator_name(s, t) for s, t in pairs]}
    release = {"heads": "projection head", "generators": "generator"}
    params, done, skipped = dict(params), [], list(loaded.unused)
    for kind, trees in loaded.method.items():
        for key, tree in trees.items():
            by_position = isinstance(key, int)  # an official release's; an mdistill run's are named
            source = f"{release[kind]} {key}" if by_position else f"{kind}/{key}"
            name = (by_index[kind][key] if key < len(pairs) else None) if by_position else key
            target = params.get(kind, {}).get(name) if name else None
            if target is None:
                method = config.method
                why = (f"this {method} run has {len(pairs)} aligned pair(s) with {kind}" if by_position
                       else f"this {method} run has no {kind[:-1]} {key!r}")
                skipped.append(f"  {source}: {why}")
                continue
            have = {"/".join(p): tuple(np.shape(v)) for p, v in loader.flatten(tree).items()}
            want = {"/".join(p): tuple(v.shape) for p, v in loader.flatten(target).items()}
            problems = [line for line in loader.shape_problems(have, want) if "missing from" not in line]
            if problems:
                skipped += [f"  {source} -> {kind}/{name}:"] + [f"  {line}" for line in problems]
                continue
            sharding_tree = loader.flatten(state_sharding.params[kind][name])
            flat = loader.flatten(target)
            for p, v in loader.flatten(tree).items():
                flat[p] = loader.place(np.asarray(jax.device_get(v), np.float32), sharding_tree[p])
            params[kind] = {**params[kind], name: loader.unflatten(flat)}
            lacking = sorted(set(want) - set(have))
            done.append(f"{kind}/{name} <- {source}" + (f" ({', '.join(lacking)} keep their init)" if lacking
                                                        else ""))
    return params, done, skipped


def teacher_architecture(config):
    """config.teacher.checkpoint's architecture (its layout is the teacher model's), read without
    loading the weights."""
    try:
        return loader.architecture(config.teacher.checkpoint)
    except (ValueError, ImportError, OSError) as e:  # unreadable, unsupported, no torch for a .pth
        raise checkpoint.CheckpointError(f"config.teacher.checkpoint: {e}") from e


def teacher(config, objective, mesh, random_init):
    """Frozen teacher parameters, placed by the partition rules (None for methods without a
    teacher); random_init(rng) gives placed random ones where config.teacher.checkpoint is empty."""
    if not objective.uses_teacher:
        return None
    teacher, path = objective.teacher, config.teacher.checkpoint
    if not path:
        log("WARNING: config.teacher.checkpoint is empty: distilling from a randomly "
            "initialised teacher (only meaningful for smoke tests)")
        return random_init(jax.random.PRNGKey(config.seed + 1))
    try:  # checked against config.teacher.variant, placed by the partition rules
        encoder = loader.load_encoder(path, config.teacher.variant, image_size=config.image_size,
                                      channels=config.data.channels, placement=mesh,
                                      field="config.teacher.variant")
    except (ValueError, ImportError) as e:  # wrong architecture, unreadable file, no torch for a .pth
        raise checkpoint.CheckpointError(str(e)) from e
    return teacher.prepare(encoder)
