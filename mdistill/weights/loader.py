"""Weights: the one way from a path to the parameters of a ViT encoder (and its decoder).

    encoder = loader.load_encoder("runs/mae_vitl", variant="L/16", channels=3, placement=mesh)
    w = loader.load("mae_visualize_vit_large.pth")  # w.params {'encoder', 'decoder'}, w.arch

A path is an mdistill workdir, its checkpoints/ folder, one step folder, a release converted
by `python -m mdistill.weights.convert`, or a PyTorch .pth/.bin/.safetensors file (official
MAE or timm names, mdistill.models.names; files, mdistill.weights.state_dict), converted in
memory. With a variant the weights are checked once, by shape_problems, against the model
that variant builds: one error names every parameter that does not fit, and both
architectures. `placement` puts them on devices: a Mesh (mdistill.sharding's partition
rules, as the train step expects), one Sharding for every array, or None (the default
device; a file's arrays stay on the host).

A run's student init and teacher (mdistill.weights.init), the evaluators (mdistill.evaluate),
load_pretrained and mdistill.weights.convert all read weights through here.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from mdistill.models.names import METHOD_HEAD_PREFIXES, method_head_to_flax, to_flax_value, torch_to_flax
from mdistill.models.vit import Layout, ViTSpec
from mdistill.weights import checkpoint
from mdistill.weights.state_dict import (CLASSIFIER_PREFIXES, POSEMB_ATOL, Architecture, architecture_of_params,
                                         expected_shapes, flatten, flax_shapes, infer_architecture, interpolate_posemb,
                                         read_state_dict, sincos_table, unflatten)


def mae_params(params: dict) -> dict:
    """{'encoder', 'decoder'?} out of a checkpoint's params: {'mae': {...}} for MAE, DMAE and
    AMD runs (and converted releases), {'encoder', 'head', ...} for fine-tuned ones, or a bare
    encoder."""
    if "mae" in params:
        return params["mae"]
    if "encoder" in params:
        return {k: params[k] for k in ("encoder", "decoder") if k in params}
    return {"encoder": params}


def encoder_of(params: dict) -> dict:
    """The ViT encoder inside a checkpoint's (or a training state's) params."""
    return mae_params(params)["encoder"]


# ---- the shape checker ----------------------------------------------------------------
def shape_problems(actual: dict, expected: dict, ignore=()) -> list[str]:
    """Lines naming the parameters ({name: shape}) that are of another shape, missing or
    unknown (at most 12 of each kind, so a whole extra stack of blocks does not bury the
    rest). Names starting with a prefix in `ignore` may be in `actual` only."""
    skip = lambda k: any(k.startswith(p) for p in ignore)  # noqa: E731
    kinds = [[f"  {k}: shape {tuple(actual[k])} in the checkpoint, {tuple(v)} expected"
              for k, v in expected.items() if k in actual and tuple(actual[k]) != tuple(v)],
             [f"  {k}: missing from the checkpoint (expected {tuple(v)})"
              for k, v in expected.items() if k not in actual],
             [f"  {k}: not in the model (shape {tuple(actual[k])})" for k in actual
              if k not in expected and not skip(k)]]
    return [line for lines in kinds
            for line in lines[:12] + ([f"  ... and {len(lines) - 12} more like the above"] if len(lines) > 12 else [])]


def _raise(header: str, lines: list[str]) -> None:
    raise ValueError(header + "\n" + "\n".join(lines))


def with_variant(spec: ViTSpec, variant: str) -> ViTSpec:
    """The size of `variant`, the layout of `spec` (which the tensors told)."""
    return dataclasses.replace(ViTSpec.parse(variant), layout=spec.layout)


def check_encoder(encoder: dict, variant: str, source: str, channels: int | None = None,
                  field: str = "variant") -> None:
    """Fail naming every parameter of an mdistill encoder that `variant` does not have."""
    # the channel count is the data's, not the variant's: take the checkpoint's unless given
    channels = channels or encoder["patch_embed"]["proj"]["kernel"].shape[2]
    found = architecture_of_params({"encoder": encoder})  # its layout and table grid: the variant gives the size
    arch = Architecture(with_variant(found.spec, variant), channels, found.grid)
    want = {"/".join(k[1:]): v for k, v in flax_shapes(arch, False).items()}
    have = {"/".join(k): tuple(v.shape) for k, v in flatten(encoder).items()}
    problems = shape_problems(have, want)
    if problems:
        found = _describe_encoder(encoder)
        _raise(f"checkpoint {source} ({found}) does not match {field}={variant!r} ({arch.describe()}):", problems)


def _describe_encoder(encoder: dict) -> str:
    try:
        sd_arch = architecture_of_params({"encoder": jax.tree.map(lambda x: np.empty(x.shape, np.int8), encoder)})
        return sd_arch.describe()
    except (ValueError, KeyError):
        return "an unknown layout"


def check_posemb(table: np.ndarray, width: int, grid: int, name: str, source: str) -> None:
    """The decoder's table must be the fixed sin-cos one mdistill computes (zero cls row)."""
    expected = sincos_table(width, grid)[0]
    err = float(np.max(np.abs(table.reshape(expected.shape) - expected)))
    if err > POSEMB_ATOL:
        raise ValueError(f"{source}: {name} is not the fixed 2-D sin-cos embedding MAE pre-training uses "
                         f"(max deviation {err:.3g} > {POSEMB_ATOL}); mdistill's MAE decoder has no learned "
                         "position embedding")


def fit_image_size(params: dict, arch: Architecture, image_size: int | None, source: str
                   ) -> tuple[dict, Architecture]:
    """The weights for a run at `image_size`. MAE's sin-cos table is a function of patch
    position, so at another grid it is recomputed, exactly as mdistill's encoder does for any
    input size; a learned table is resized bicubically as timm does when it loads a checkpoint
    at another size (resample_abs_pos_embed, antialiased). `params` are host arrays."""
    if not image_size or image_size == arch.image_size or not arch.grid:
        return params, arch
    p = arch.spec.patch_size
    if image_size % p:
        raise ValueError(f"image size {image_size} is not a multiple of the checkpoint's patch size {p}")
    grid = image_size // p
    learned = arch.spec.layout.posemb == "learned"
    print(f"{source}: trained at {arch.image_size}px ({arch.grid}x{arch.grid} patches), used at {image_size}px: "
          + (f"its learned position embedding is resized bicubically to {grid}x{grid}" if learned else
             f"position embeddings are the sin-cos table of the {grid}x{grid} grid"), file=sys.stderr)
    if learned:
        encoder = {**params["encoder"], "pos_embed": interpolate_posemb(np.asarray(params["encoder"]["pos_embed"]),
                                                                        grid, antialias=True)}
        params = {**params, "encoder": encoder}
    return params, dataclasses.replace(arch, grid=grid)


# ---- PyTorch state dicts --------------------------------------------------------------
def state_dict_to_params(sd: dict, source: str, variant: str | None = None, channels: int | None = None,
                         with_decoder: bool = True, ignore=(), decoder_heads: int | None = None
                         ) -> tuple[dict, Architecture]:
    """-> ({'encoder': ..., 'decoder': ...}, architecture). With `variant` (e.g. 'L/16'), a
    checkpoint of another width, depth or patch size fails naming every mismatched tensor."""
    arch = infer_architecture(sd, source, decoder_heads=decoder_heads)
    if variant:
        arch = dataclasses.replace(arch, spec=with_variant(arch.spec, variant))
    if channels:
        arch = dataclasses.replace(arch, channels=channels)
    with_decoder = with_decoder and arch.decoder is not None
    expected = expected_shapes(arch, with_decoder)
    if not with_decoder:  # an encoder only: a decoder's, a classifier's or a method's heads may be there
        ignore = (*ignore, "decoder_", "mask_token", *CLASSIFIER_PREFIXES, *METHOD_HEAD_PREFIXES)
    problems = shape_problems({k: v.shape for k, v in sd.items()}, expected, ignore)
    if "pos_embed" not in sd and arch.spec.layout.posemb != "sincos_1d":  # VideoMAE stores no table
        problems.append("  pos_embed: missing from the checkpoint (it tells the grid and is checked)")
    if problems:
        found = infer_architecture(sd, source, decoder_heads=decoder_heads)
        want = (f"; {variant!r} is {arch.describe()}" if variant else
                f"; the config wants {channels} channel(s)" if channels else "")
        _raise(f"{source} holds a ViT of {found.describe()}{want}. Tensors that do not fit:", problems)
    if with_decoder and "decoder_pos_embed" in sd:
        check_posemb(sd["decoder_pos_embed"], arch.decoder[0], arch.grid, "decoder_pos_embed", source)
    learned = arch.spec.layout.posemb == "learned"  # else the table is MAE's, recomputed, not a parameter
    flat = {}
    for key, value in sd.items():
        target = torch_to_flax(key, value.ndim)
        if target and (with_decoder or target[0] == "encoder") and key in expected and (
                learned or key != "pos_embed"):
            flat[(target[0], *target[1])] = np.ascontiguousarray(to_flax_value(value), np.float32)
    return unflatten(flat), (arch if with_decoder else dataclasses.replace(arch, decoder=None))


# ---- placement ------------------------------------------------------------------------
def _is_mesh(placement) -> bool:
    return isinstance(placement, jax.sharding.Mesh)


def place(tree, placement):
    """Host arrays -> global jax.Arrays: by the partition rules on a Mesh, with one Sharding,
    or with a tree of shardings like `tree`. Each process fills its own devices' shards from
    its copy, so this also works when the mesh spans processes (each must have read the same
    checkpoint). None leaves the arrays where they are."""
    if placement is None:
        return tree
    from mdistill import sharding

    if _is_mesh(placement):
        placement = sharding.tree_shardings(placement, tree)
    elif isinstance(placement, jax.sharding.Sharding):
        placement = jax.tree.map(lambda _: placement, tree)

    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(one, tree, placement)


def _restore_placement(placement):
    """What checkpoint.load_params takes: a Sharding, or (key, shape) -> Sharding."""
    if placement is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if _is_mesh(placement):
        from jax.sharding import NamedSharding

        from mdistill import sharding

        fsdp = placement.shape["fsdp"]
        return lambda key, shape: NamedSharding(placement, sharding.partition_spec(key, shape, fsdp))
    return placement


# ---- loading --------------------------------------------------------------------------
METHOD_PARTS = ("heads", "generators")  # an mdistill run's method heads (DMAE, AMD), beside 'mae'
CLASSIFIER_PARTS = ("fc_norm", "head")  # a fine-tuned run's classifier, beside 'encoder'


@dataclasses.dataclass
class Weights:
    """Parameters {'encoder', 'decoder'?}, their architecture, and the checkpoint's meta
    (step, the run's config or a conversion's architecture; {} for a PyTorch file).

    classifier: a fine-tuned run's {'fc_norm'? (global pooling), 'head'} ({} otherwise).
    method (with load(method_heads=True)): distillation heads {'heads' | 'generators': {key:
    params}}, keyed by name for an mdistill run (proj_s8_t17, ...), by index for an official
    release's file (head i of the i-th aligned student block); unused: lines naming the head
    tensors of a file that no mdistill head has a place for."""

    params: dict
    arch: Architecture
    meta: dict
    classifier: dict = dataclasses.field(default_factory=dict)
    method: dict = dataclasses.field(default_factory=dict)
    unused: tuple[str, ...] = ()

    @property
    def encoder(self) -> dict:
        return self.params["encoder"]


def load(path: str, variant: str | None = None, *, image_size: int | None = None, channels: int | None = None,
         placement=None, decoder: bool = True, decoder_heads: int | None = None, ignore=(),
         field: str = "variant", drop=(), method_heads: bool = False) -> Weights:
    """The weights at `path` (see the module's docstring), checked against `variant` (which
    also sets the head count, stored in no tensor) and `channels` where given. `field` names
    the setting the variant came from in errors, e.g. 'config.teacher.variant'. Without
    `decoder`, only the encoder is kept. `ignore`: prefixes of a PyTorch file's tensors that
    may be dropped (its heads, say). `drop`: prefixes of tensors left out before anything is
    read from them (a file's PyTorch names; '/'-joined parameter paths of an mdistill
    checkpoint, 'decoder/', 'heads/'). `method_heads`: also read the distillation heads
    (Weights.method) instead of refusing a file that holds them."""
    drop = tuple(drop)
    if os.path.isfile(path):
        sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith(drop)}
        method, unused = ({}, ())
        if method_heads:
            sd, method, unused = split_method_heads(sd)
        params, arch = state_dict_to_params(sd, path, variant, channels, with_decoder=decoder,
                                            ignore=ignore, decoder_heads=decoder_heads)
        params, arch = fit_image_size(params, arch, image_size, path)
        return Weights(place(params, placement), arch, {}, method=method, unused=unused)
    early = architecture(path)  # a learned table at another grid is resized on the host, then placed
    resize = bool(image_size and early.grid and early.image_size != image_size
                  and early.spec.layout.posemb == "learned")
    params, meta = checkpoint.load_params(path, None if resize else _restore_placement(placement))
    classifier = {k: params[k] for k in CLASSIFIER_PARTS if k in params and "encoder" in params}
    method = {k: params[k] for k in METHOD_PARTS if k in params and "mae" in params} if method_heads else {}
    params = mae_params(params)
    if drop:
        params, method = (_drop(tree, drop) for tree in (params, method))
        if "encoder" not in params:
            raise ValueError(f"{path}: dropping {list(drop)} leaves no encoder")
    if not decoder:
        params = {"encoder": params["encoder"]}
    arch = _arch_from_meta(meta) or architecture_of_params(params, decoder_heads)
    if decoder_heads and arch.decoder:
        arch = dataclasses.replace(arch, decoder=(*arch.decoder[:2], decoder_heads))
    if "decoder" not in params:
        arch = dataclasses.replace(arch, decoder=None)
    if resize:
        params, arch = fit_image_size(jax.device_get(params), arch, image_size, path)
        params = place(params, placement if placement is not None else _restore_placement(None))
    if variant:
        check_encoder(params["encoder"], variant, path, channels, field)
        spec = with_variant(arch.spec, variant)
        recorded = "config" in meta or "architecture" in meta  # a run's or a conversion's head count
        if recorded and arch.spec.num_heads != spec.num_heads:  # same shapes, other heads
            raise ValueError(f"checkpoint {path} has {arch.spec.num_heads} heads, {field}={variant!r} "
                             f"has {spec.num_heads}")
        arch = dataclasses.replace(arch, spec=spec)
    return Weights(params, arch, meta, classifier, method)


def prefixes(value) -> tuple[str, ...]:
    """Key prefixes from a comma-separated string ('decoder_,heads/') or a sequence of them."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(p.strip() for p in items if p.strip())


def _drop(tree: dict, prefixes: tuple[str, ...]) -> dict:
    """`tree` without the leaves whose '/'-joined path starts with one of `prefixes`."""
    kept = {p: v for p, v in flatten(tree).items() if not "/".join(p).startswith(prefixes)}
    return unflatten(kept)


def split_method_heads(sd: dict) -> tuple[dict, dict, tuple[str, ...]]:
    """A release's state dict -> (the rest, its distillation heads {'heads' | 'generators':
    {index: params}} in mdistill's names and layouts, lines naming the head tensors mdistill's
    heads have no place for). See models.names.METHOD_HEAD_PREFIXES."""
    rest, flat, unused = {}, {}, []
    for key, value in sd.items():
        if not key.startswith(METHOD_HEAD_PREFIXES):
            rest[key] = value
            continue
        target = method_head_to_flax(key, value.ndim)
        if target is None:
            unused.append(f"  {key} {tuple(value.shape)}: no counterpart in mdistill's projection heads or generators")
            continue
        kind, index, path = target
        flat[(kind, index, *path)] = np.ascontiguousarray(to_flax_value(value), np.float32)
    return rest, unflatten(flat), tuple(unused)


def architecture(path: str) -> Architecture:
    """The architecture of the weights at `path` (its layout included), read without loading
    them: a file's header and position table, a checkpoint's metadata."""
    if os.path.isfile(path):
        return infer_architecture(read_state_dict(path, values={"pos_embed", "decoder_pos_embed"}), path)
    shapes, meta = checkpoint.load_shapes(path)
    return _arch_from_meta(meta) or architecture_of_params(mae_params(shapes))


def load_encoder(path: str, variant: str | None = None, **kwargs) -> dict:
    """The encoder's parameters at `path`; the arguments as load()'s."""
    return load(path, variant, decoder=False, **kwargs).encoder


def _arch_from_meta(meta: dict) -> Architecture | None:
    if "architecture" in meta:  # written by mdistill.weights.convert
        return Architecture.from_json(meta["architecture"])
    if not meta.get("config"):
        return None
    from mdistill.config import upgrade

    config = upgrade(meta["config"], "the checkpoint's config")
    s = config.student
    spec = ViTSpec.parse(s.variant)
    if config.num_frames > 1:  # a video run's student: VideoMAE's layout
        spec = dataclasses.replace(spec, layout=Layout.video(config.tubelet_size))
    return Architecture(spec, config.data.channels, config.image_size // spec.patch_size,
                        (s.decoder_width, s.decoder_depth, s.decoder_heads))
