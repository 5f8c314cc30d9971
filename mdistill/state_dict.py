"""PyTorch state dicts of ViT / MAE models: the files, the names, and what their shapes say.

The official MAE releases (mae_pretrain_vit_*.pth: encoder; mae_visualize_vit_*.pth:
encoder + decoder; state dict under 'model') and timm's MAE ViTs (vit_*_patch16_224.mae,
as .pth/.bin or .safetensors) share parameter names. Names match module for module
('blocks.3.attn.qkv' <-> 'block_3/attn/qkv'); only leaves change: a Linear weight [out, in]
is a Dense kernel [in, out], a Conv2d weight [D, C, p, p] a Conv kernel [p, p, C, D], a
LayerNorm weight a scale. The fused qkv keeps its (q, k, v) x heads layout, which Attention
splits the same way. Position embeddings are not parameters in mdistill (fixed 2-D sin-cos
at the run's grid).

Nothing here checks a checkpoint against a model: mdistill.weights does, once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import struct

import numpy as np

from mdistill.models.vit import SIZES, ViTSpec, posemb_sincos_2d

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


def architecture_of_params(params: dict, decoder_heads: int | None = None) -> Architecture:
    """The architecture of mdistill parameters {'encoder', 'decoder'?}, from shapes only:
    heads follow default_heads / default_decoder_heads."""
    sd = {flax_to_torch(k[0], k[1:]): to_torch_value(np.empty(v.shape, np.int8)) for k, v in flatten(params).items()}
    return infer_architecture(sd, "checkpoint", decoder_heads=decoder_heads)


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
    return {path: tuple(leaf.shape) for path, leaf in flatten(tree).items()}


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


# ---- position embeddings -----------------------------------------------------------
def sincos_table(width: int, grid: int) -> np.ndarray:
    """[1, 1 + grid^2, width]: the release's pos_embed, a zero cls row then the sin-cos table."""
    return np.concatenate([np.zeros((1, width), np.float32), posemb_sincos_2d(width, grid)])[None]



# ---- trees ----------------------------------------------------------------------------
def flatten(tree: dict, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out
