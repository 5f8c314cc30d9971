"""Official PyTorch checkpoints in, PyTorch state dicts out.

Import: the official MAE releases (mae_pretrain_vit_*.pth: encoder; mae_visualize_vit_*.pth:
encoder + decoder; state dict under 'model') and timm's MAE ViTs (vit_*_patch16_224.mae, as
.pth/.bin or .safetensors) become mdistill parameters {'encoder', 'decoder'?}.
Export: an mdistill encoder becomes the state dict of timm's vit_*_patch16_224 / the official
fine-tuning models_vit.VisionTransformer, which share parameter names.

    python -m mdistill.convert --input mae_pretrain_vit_large.pth --output runs/mae_vitl
    python -m mdistill.convert --export --input runs/dmae_vitb --output student.pth [--global_pool]

Names match module for module ('blocks.3.attn.qkv' <-> 'block_3/attn/qkv'); only leaves
change: a Linear weight [out, in] is a Dense kernel [in, out], a Conv2d weight [D, C, p, p]
a Conv kernel [p, p, C, D], a LayerNorm weight a scale. The fused qkv keeps its (q, k, v) x
heads layout, which Attention splits the same way. Position embeddings are not parameters in
mdistill (fixed 2-D sin-cos at the run's grid), so an imported pos_embed is checked against
that table instead of copied, and an exported one is the table at the export's image size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import struct
import sys

import numpy as np

from mdistill.models.vit import SIZES, ViTSpec, posemb_sincos_2d

POSEMB_ATOL = 1e-4  # the releases store float32 sin-cos tables; a learned one is far off
_DECODER_PREFIXES = {"decoder_embed": "embed", "decoder_norm": "norm", "decoder_pred": "pred"}


# ---- names ----------------------------------------------------------------------------
def torch_to_flax(key: str, ndim: int) -> tuple[str, tuple[str, ...]] | None:
    """'blocks.3.attn.qkv.weight' -> ('encoder', ('block_3', 'attn', 'qkv', 'kernel')); None
    for names mdistill has no parameter for (pos_embed, heads, anything unknown)."""
    parts = key.split(".")
    if key in ("cls_token", "mask_token"):
        return ("encoder" if key == "cls_token" else "decoder"), (key,)
    if parts[-1] not in ("weight", "bias"):
        return None
    leaf = "bias" if parts[-1] == "bias" else ("kernel" if ndim in (2, 4) else "scale")
    m = re.fullmatch(r"(decoder_)?blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.\w+", key)
    if m:
        return ("decoder" if m[1] else "encoder"), (f"block_{m[2]}", *m[3].split("."), leaf)
    if parts[:-1] in (["patch_embed", "proj"], ["norm"]):
        return "encoder", (*parts[:-1], leaf)
    if len(parts) == 2 and parts[0] in _DECODER_PREFIXES:
        return "decoder", (_DECODER_PREFIXES[parts[0]], leaf)
    return None


def flax_to_torch(part: str, path: tuple[str, ...]) -> str:
    """Inverse of torch_to_flax."""
    head, *rest = path
    if head.startswith("block_"):
        head = f"{'decoder_' if part == 'decoder' else ''}blocks.{head[6:]}"
    elif part == "decoder" and head != "mask_token":
        head = {v: k for k, v in _DECODER_PREFIXES.items()}[head]
    rest = ["weight" if r in ("kernel", "scale") else r for r in rest]
    return ".".join([head, *rest])


def to_flax_value(x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        return x.transpose(2, 3, 1, 0)  # [D, C, p, p] -> [p, p, C, D]
    return x.T if x.ndim == 2 else x


def to_torch_value(x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x.T if x.ndim == 2 else x


# ---- reading --------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Float32 arrays by PyTorch name, from a .pth/.pt/.bin (torch pickle; the release's
    {'model': ...} wrapper and a DDP 'module.' prefix are removed) or a .safetensors file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        sd = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
    except ImportError:
        raise
    except Exception as e:  # truncated zip, not a pickle, bad header: all mean a damaged file
        raise ValueError(f"could not read {path!r} as a checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                         "is the file complete? (a partial download is the usual cause)") from e
    if not sd or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise ValueError(f"{path!r} holds no state dict of tensors (top-level keys: {sorted(sd)[:10]})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'mdistill[torch]' "
                          "(or pip install torch)") from e
    # weights_only: no code runs from the file; the releases' training checkpoints also hold
    # an argparse 'args', allowed explicitly (torch >= 2.5 has safe_globals)
    safe = getattr(torch.serialization, "safe_globals", None)
    with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        return {}
    return {k: v.detach().float().numpy() if torch.is_tensor(v) else v for k, v in obj.items()}


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _read_safetensors(path: str) -> dict:
    """The format is an 8-byte header length, a JSON header, then raw little-endian data:
    read it directly so timm's hub files need neither torch nor the safetensors package."""
    import ml_dtypes

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = ml_dtypes.bfloat16 if info["dtype"] == "BF16" else _SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if end > len(data):
            raise ValueError(f"tensor {name!r} ends at byte {end}, past the file's {len(data)} data bytes")
        out[name] = np.frombuffer(data[begin:end], dtype).reshape(info["shape"]).astype(np.float32)
    return out


# ---- architecture ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint's shapes say, plus the head counts (not stored in any tensor)."""

    spec: ViTSpec
    channels: int
    grid: int  # patches per side the position embedding was made for
    decoder: tuple[int, int, int] | None = None  # (width, depth, heads)

    @property
    def image_size(self) -> int:
        return self.grid * self.spec.patch_size

    def describe(self) -> str:
        s = self.spec
        dec = f", decoder width {self.decoder[0]} depth {self.decoder[1]}" if self.decoder else ""
        return f"width {s.width}, depth {s.depth}, patch {s.patch_size}, {self.channels} channel(s){dec}"

    def to_json(self) -> dict:
        d = dict(width=self.spec.width, depth=self.spec.depth, num_heads=self.spec.num_heads,
                 patch_size=self.spec.patch_size, channels=self.channels, image_size=self.image_size)
        if self.decoder:
            d.update(decoder_width=self.decoder[0], decoder_depth=self.decoder[1], decoder_heads=self.decoder[2])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Architecture":
        spec = ViTSpec(d["width"], d["depth"], d["num_heads"], d["patch_size"])
        decoder = (d["decoder_width"], d["decoder_depth"], d["decoder_heads"]) if "decoder_width" in d else None
        return cls(spec, d["channels"], d["image_size"] // d["patch_size"], decoder)


def default_heads(width: int, depth: int) -> int:
    """Heads of a standard size with this width and depth, else 64-wide heads (ViT's rule)."""
    return next((h for w, d, h in SIZES.values() if (w, d) == (width, depth)), max(1, width // 64))


def default_decoder_heads(width: int) -> int:
    """32-wide heads, as the official 512-wide, 16-head decoder."""
    return max(1, width // 32)


def _count_blocks(sd: dict, prefix: str) -> int:
    ids = {int(m[1]) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_architecture(sd: dict, source: str, heads: int | None = None,
                       decoder_heads: int | None = None) -> Architecture:
    if "patch_embed.proj.weight" not in sd:
        raise ValueError(f"{source}: not a ViT/MAE state dict: no 'patch_embed.proj.weight' "
                         f"(keys start with {sorted(sd)[:8]})")
    width, channels, patch, patch_w = sd["patch_embed.proj.weight"].shape
    depth = _count_blocks(sd, "blocks")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.shape[0] != 4 * width:
        raise ValueError(f"{source}: MLP hidden width {fc1.shape[0]} is not 4 x width {width}; "
                         "mdistill's blocks use MLP ratio 4")
    if patch != patch_w:
        raise ValueError(f"{source}: non-square patches {patch}x{patch_w} are not supported")
    grid = _grid(sd, "pos_embed", source) if "pos_embed" in sd else 0
    decoder = None
    if "decoder_embed.weight" in sd:
        dw = sd["decoder_embed.weight"].shape[0]
        decoder = (dw, _count_blocks(sd, "decoder_blocks"), decoder_heads or default_decoder_heads(dw))
    spec = ViTSpec(width, depth, heads or default_heads(width, depth), patch)
    return Architecture(spec, channels, grid, decoder)


def _grid(sd: dict, name: str, source: str) -> int:
    tokens = sd[name].shape[-2]
    grid = int(round((tokens - 1) ** 0.5))
    if sd[name].ndim != 3 or grid * grid != tokens - 1:
        raise ValueError(f"{source}: {name} of shape {sd[name].shape} is not [1, 1 + grid^2, width]: "
                         "mdistill needs one cls position followed by a square grid")
    return grid


def flax_shapes(arch: Architecture, with_decoder: bool) -> dict[tuple[str, ...], tuple[int, ...]]:
    """('encoder' | 'decoder', *path) -> shape of every parameter of the Flax model for this
    architecture, from the model itself (so the checks can never drift from it)."""
    import jax
    import jax.numpy as jnp

    from mdistill.models.mae import MAE
    from mdistill.models.vit import Encoder

    size = arch.image_size or arch.spec.patch_size
    images = jnp.zeros((1, size, size, arch.channels), jnp.float32)
    rng = jax.random.PRNGKey(0)
    if with_decoder and arch.decoder:
        ids_restore = jnp.zeros((1, (size // arch.spec.patch_size) ** 2), jnp.int32)
        model = MAE(arch.spec, *arch.decoder, channels=arch.channels)
        tree = jax.eval_shape(model.init, rng, images, ids_restore[:, :1], ids_restore)["params"]
    else:
        tree = {"encoder": jax.eval_shape(Encoder(arch.spec).init, rng, images)["params"]}
    return {path: tuple(leaf.shape) for path, leaf in _flatten(tree).items()}


def expected_shapes(arch: Architecture, with_decoder: bool) -> dict[str, tuple[int, ...]]:
    """PyTorch name -> shape of every tensor a checkpoint of this architecture holds."""
    out = {flax_to_torch(path[0], path[1:]): to_torch_value(np.empty(shape, np.int8)).shape
           for path, shape in flax_shapes(arch, with_decoder).items()}
    if arch.grid:
        out["pos_embed"] = (1, 1 + arch.grid ** 2, arch.spec.width)
        if with_decoder and arch.decoder:
            out["decoder_pos_embed"] = (1, 1 + arch.grid ** 2, arch.decoder[0])
    return dict(sorted(out.items(), key=lambda kv: _release_order(kv[0])))


def _release_order(key: str) -> tuple:
    """Encoder before decoder, embeddings, then blocks by number, then the final norm."""
    m = re.match(r"(?:decoder_)?blocks\.(\d+)\.", key)
    rank = int(m[1]) if m else (10**6 if "norm" in key or "pred" in key else -1)
    return key.startswith(("decoder_", "mask_token")), rank, key


def shape_problems(actual: dict, expected: dict, ignore=()) -> list[str]:
    """Lines naming the tensors that are of another shape, missing or unknown (at most 12 of
    each kind, so a whole extra stack of blocks does not bury the rest)."""
    skip = lambda k: any(k.startswith(p) for p in ignore)  # noqa: E731
    kinds = [[f"  {k}: shape {tuple(actual[k])} in the checkpoint, {tuple(v)} expected"
              for k, v in expected.items() if k in actual and tuple(actual[k]) != tuple(v)],
             [f"  {k}: missing from the checkpoint (expected {tuple(v)})" for k, v in expected.items() if k not in actual],
             [f"  {k}: not in the model (shape {tuple(actual[k])})" for k in actual
              if k not in expected and not skip(k)]]
    return [line for lines in kinds
            for line in lines[:12] + ([f"  ... and {len(lines) - 12} more like the above"] if len(lines) > 12 else [])]


def _raise(header: str, lines: list[str]) -> None:
    raise ValueError(header + "\n" + "\n".join(lines))


def check_posemb(table: np.ndarray, width: int, grid: int, name: str, source: str) -> None:
    """The checkpoint's table must be the fixed sin-cos one mdistill computes (zero cls row)."""
    expected = sincos_table(width, grid)[0]
    err = float(np.max(np.abs(table.reshape(expected.shape) - expected)))
    if err > POSEMB_ATOL:
        raise ValueError(f"{source}: {name} is not the fixed 2-D sin-cos embedding MAE pre-training uses "
                         f"(max deviation {err:.3g} > {POSEMB_ATOL}); mdistill's ViT has no learned position "
                         "embedding, so fine-tuned checkpoints cannot be imported")


# ---- import ---------------------------------------------------------------------------
def state_dict_to_params(sd: dict, source: str, variant: str | None = None, channels: int | None = None,
                         with_decoder: bool = True, ignore=(), decoder_heads: int | None = None
                         ) -> tuple[dict, Architecture]:
    """-> ({'encoder': ..., 'decoder': ...}, architecture). With `variant` (e.g. 'L/16'), a
    checkpoint of another width, depth or patch size fails naming every mismatched tensor."""
    arch = infer_architecture(sd, source, decoder_heads=decoder_heads)
    if variant:
        arch = dataclasses.replace(arch, spec=ViTSpec.parse(variant))
    if channels:
        arch = dataclasses.replace(arch, channels=channels)
    with_decoder = with_decoder and arch.decoder is not None
    expected = expected_shapes(arch, with_decoder)
    if not with_decoder:
        ignore = (*ignore, "decoder_", "mask_token")
    problems = shape_problems({k: v.shape for k, v in sd.items()}, expected, ignore)
    if "pos_embed" not in sd:
        problems.append("  pos_embed: missing from the checkpoint (it tells the grid and is checked)")
    if problems:
        found = infer_architecture(sd, source, decoder_heads=decoder_heads)
        want = (f"; {variant!r} is {arch.describe()}" if variant else
                f"; the config wants {channels} channel(s)" if channels else "")
        _raise(f"{source} holds a ViT of {found.describe()}{want}. Tensors that do not fit:", problems)
    check_posemb(sd["pos_embed"], arch.spec.width, arch.grid, "pos_embed", source)
    if with_decoder:
        check_posemb(sd["decoder_pos_embed"], arch.decoder[0], arch.grid, "decoder_pos_embed", source)
    flat = {}
    for key, value in sd.items():
        target = torch_to_flax(key, value.ndim)
        if target and (with_decoder or target[0] == "encoder") and key in expected:
            flat[(target[0], *target[1])] = np.ascontiguousarray(to_flax_value(value), np.float32)
    return _unflatten(flat), (arch if with_decoder else dataclasses.replace(arch, decoder=None))


def check_image_size(arch: Architecture, image_size: int | None, source: str) -> None:
    """A run at another image size gets the sin-cos table of its own grid: the embedding is a
    function of patch position, so it is recomputed rather than interpolated, exactly as
    mdistill's encoder does for any input size."""
    if not image_size or image_size == arch.image_size:
        return
    p = arch.spec.patch_size
    if image_size % p:
        raise ValueError(f"image size {image_size} is not a multiple of the checkpoint's patch size {p}")
    print(f"{source}: trained at {arch.image_size}px ({arch.grid}x{arch.grid} patches), used at {image_size}px: "
          f"position embeddings are the sin-cos table of the {image_size // p}x{image_size // p} grid",
          file=sys.stderr)


def load_teacher_params(path: str, sharding=None, variant: str | None = None, image_size: int | None = None,
                        channels: int | None = None) -> dict:
    """Encoder parameters from a .pth/.safetensors file (converted in memory) or an Orbax
    checkpoint (an mdistill run or a converted one), placed with `sharding`. With `variant`,
    a checkpoint of another architecture fails naming every mismatched tensor."""
    import jax

    if os.path.isfile(path):
        params, arch = state_dict_to_params(read_state_dict(path), path, variant, channels, with_decoder=False)
        check_image_size(arch, image_size, path)
        encoder = params["encoder"]
    else:
        from mdistill import checkpoint

        where = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params, _ = checkpoint.load_params(path, where)
        encoder = params["mae"]["encoder"] if "mae" in params else params.get("encoder", params)
        if variant:
            check_encoder_shapes(encoder, variant, path, channels)
    return jax.device_put(encoder, sharding) if sharding is not None else encoder


def place(tree, shardings):
    """Host arrays -> global jax.Arrays, leaf by leaf with `shardings` (a tree like `tree`).
    Each process fills its own devices' shards from its copy, so this also works when the
    mesh spans processes (each must have read the same checkpoint)."""
    import jax

    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def check_encoder_shapes(encoder: dict, variant: str, source: str, channels: int | None = None) -> None:
    """Fail naming every parameter of an mdistill encoder that `variant` does not have."""
    # the channel count is the data's, not the variant's: take the checkpoint's unless given
    channels = channels or encoder["patch_embed"]["proj"]["kernel"].shape[2]
    arch = Architecture(ViTSpec.parse(variant), channels, 0)
    want = {"/".join(k[1:]): v for k, v in flax_shapes(arch, False).items()}
    problems = shape_problems({"/".join(k): tuple(v.shape) for k, v in _flatten(encoder).items()}, want)
    if problems:
        _raise(f"checkpoint {source} does not match variant {variant!r} ({arch.describe()}):", problems)


def convert_to_orbax(src: str, out: str, variant: str | None = None, ignore=(), decoder_heads=None) -> Architecture:
    """Write a .pth/.safetensors checkpoint as an Orbax checkpoint (step 0) in mdistill's
    layout {'mae': {'encoder', 'decoder'?}}: it loads as config.teacher.checkpoint and with
    checkpoint.load_params / load_pretrained."""
    import orbax.checkpoint as ocp

    from mdistill import checkpoint

    params, arch = state_dict_to_params(read_state_dict(src), src, variant, ignore=ignore,
                                        decoder_heads=decoder_heads)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"output {out!r} already exists and is not an empty directory: remove it or choose "
                         "another --output (a conversion never writes over files)")
    mngr = checkpoint.manager(os.path.abspath(out))
    meta = {"step": 0, "converted_from": os.path.abspath(src), "architecture": arch.to_json()}
    # no optimizer state to save: a converted checkpoint is weights only
    mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave({"mae": params}),
                                         meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    return arch


# ---- export ---------------------------------------------------------------------------
POSEMB_MODES = ("interpolate", "sincos")


def sincos_table(width: int, grid: int) -> np.ndarray:
    """[1, 1 + grid^2, width]: the release's pos_embed, a zero cls row then the sin-cos table."""
    return np.concatenate([np.zeros((1, width), np.float32), posemb_sincos_2d(width, grid)])[None]


def _cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with PyTorch's a = -0.75."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of torch.nn.functional.interpolate(mode='bicubic',
    align_corners=False) along one axis: source x = (j + 0.5) * in / out - 0.5, four taps,
    indices clamped at the border."""
    m = np.zeros((size_out, size_in), np.float64)
    for j in range(size_out):
        src = (j + 0.5) * size_in / size_out - 0.5
        x0 = int(np.floor(src))
        for k in range(-1, 3):
            m[j, min(max(x0 + k, 0), size_in - 1)] += _cubic(src - (x0 + k))
    return m


def interpolate_posemb(table: np.ndarray, grid: int) -> np.ndarray:
    """A [1, 1 + g^2, D] position table resized to `grid` x `grid` patches as the official
    fine-tuning's interpolate_pos_embed (DeiT's) does: the cls row kept, the patch rows
    resized bicubically as a g x g image with D channels."""
    old = int(round((table.shape[1] - 1) ** 0.5))
    patches = table[0, 1:].reshape(old, old, -1).astype(np.float64)
    if old != grid:
        m = bicubic_matrix(old, grid)
        patches = np.einsum("ij,jkd,lk->ild", m, patches, m)
    return np.concatenate([table[0, :1], patches.reshape(grid * grid, -1)])[None].astype(np.float32)


def export_state_dict(encoder: dict, image_size: int, global_pool: bool = False, num_classes: int = 1000,
                      trained_image_size: int | None = None, posemb: str = "interpolate") -> dict[str, np.ndarray]:
    """The state dict of timm's VisionTransformer (global_pool 'token' or 'avg') and of the
    official models_vit.VisionTransformer (global_pool False/True) for this encoder.

    pos_embed is the sin-cos table of the trained grid (trained_image_size, default
    image_size). For another image_size it is, with posemb='interpolate', that table
    resized bicubically as the official fine-tuning does (exporting at the trained size and
    letting main_finetune.py interpolate gives the same), or with posemb='sincos' the
    sin-cos table of the new grid.
    With global pooling the final norm becomes fc_norm, freshly initialised (ones, zeros) as
    the official fine-tuning starts it, since it normalises the pooled feature, not tokens.
    The classifier head.* is zeros ([num_classes, width]); num_classes=0 writes none, which is
    also the layout of the MAE pre-training release.
    """
    if posemb not in POSEMB_MODES:
        raise ValueError(f"posemb {posemb!r}: expected one of {POSEMB_MODES}")
    sd = {flax_to_torch("encoder", path): np.array(to_torch_value(np.asarray(v, np.float32)), order="C")
          for path, v in _flatten(encoder).items()}
    width, p = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    trained_image_size = trained_image_size or image_size
    for size in {image_size, trained_image_size}:
        if size % p:
            raise ValueError(f"image size {size} is not a multiple of the patch size {p}")
    grid, trained = image_size // p, trained_image_size // p
    if posemb == "sincos" or grid == trained:
        sd["pos_embed"] = sincos_table(width, grid)
    else:
        sd["pos_embed"] = interpolate_posemb(sincos_table(width, trained), grid)
    if global_pool:
        del sd["norm.weight"], sd["norm.bias"]
        sd["fc_norm.weight"], sd["fc_norm.bias"] = np.ones(width, np.float32), np.zeros(width, np.float32)
    if num_classes:
        sd["head.weight"] = np.zeros((num_classes, width), np.float32)
        sd["head.bias"] = np.zeros(num_classes, np.float32)
    return sd


def export_to_torch(src: str, out: str, image_size: int | None = None, global_pool: bool = False,
                    num_classes: int = 1000, posemb: str = "interpolate") -> dict:
    """Write the student encoder of an mdistill checkpoint as {'model': state_dict} (.pth),
    pos_embed for `image_size` (default: the run's; see export_state_dict)."""
    if os.path.isdir(out):  # checked first: torch.save would fail on it only after the reading
        raise ValueError(f"--output {out!r} is a folder: name the file to write, e.g. "
                         f"{os.path.join(out, 'student.pth')}")
    import jax
    import torch

    from mdistill import checkpoint

    params, meta = checkpoint.load_params(src, jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0]))
    encoder = params["mae"]["encoder"] if "mae" in params else params.get("encoder", params)
    trained = _meta_image_size(meta)
    image_size = image_size or trained
    if not image_size:
        raise ValueError(f"{src}: no image size in the checkpoint's meta; pass --image_size")
    sd = export_state_dict(jax.device_get(encoder), image_size, global_pool, num_classes, trained, posemb)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, out)
    return sd


def _meta_image_size(meta: dict) -> int | None:
    if "architecture" in meta:
        return meta["architecture"]["image_size"]
    return meta.get("config", {}).get("image_size")


# ---- helpers --------------------------------------------------------------------------
def _flatten(tree: dict, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mdistill.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="import: .pth/.bin/.safetensors; export: mdistill checkpoint")
    ap.add_argument("--output", required=True, help="import: Orbax directory; export: .pth file")
    ap.add_argument("--variant", help="import: fail unless the checkpoint is this ViT, e.g. L/16 (sets heads)")
    ap.add_argument("--decoder_heads", type=int, help="import: decoder heads (default width / 32)")
    ap.add_argument("--ignore", nargs="*", default=(), help="import: drop tensors whose names start so")
    ap.add_argument("--export", action="store_true", help="mdistill student -> PyTorch state dict")
    ap.add_argument("--image_size", type=int, help="export: image size of pos_embed (default: the run's)")
    ap.add_argument("--posemb", choices=POSEMB_MODES, default="interpolate",
                    help="export at another --image_size than the run's: resize the trained table bicubically "
                         "as the official fine-tuning does (interpolate), or recompute sin-cos (sincos)")
    ap.add_argument("--global_pool", action="store_true", help="export: fc_norm for average pooling")
    ap.add_argument("--num_classes", type=int, default=1000, help="export: zero head rows (0: no head)")
    args = ap.parse_args(argv)
    from mdistill.checkpoint import CheckpointError

    try:
        if args.export:
            sd = export_to_torch(args.input, args.output, args.image_size, args.global_pool, args.num_classes,
                                 args.posemb)
            print(f"wrote {args.output}: {len(sd)} tensors, pos_embed {tuple(sd['pos_embed'].shape)}")
        else:
            arch = convert_to_orbax(args.input, args.output, args.variant, args.ignore, args.decoder_heads)
            print(f"wrote {args.output}: {arch.describe()}, {arch.spec.num_heads} heads, {arch.image_size}px")
    except (ValueError, OSError, ImportError, CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
