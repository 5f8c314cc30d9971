"""PyTorch state dicts of ViT / MAE models: the files and what their shapes say.

The official MAE releases (mae_pretrain_vit_*.pth: encoder; mae_visualize_vit_*.pth:
encoder + decoder; state dict under 'model') and timm's MAE ViTs (vit_*_patch16_224.mae,
as .pth/.bin or .safetensors) share parameter names. Names match module for module
('blocks.3.attn.qkv' <-> 'block_3/attn/qkv'); only leaves change: a Linear weight [out, in]
is a Dense kernel [in, out], a Conv2d weight [D, C, p, p] a Conv kernel [p, p, C, D], a
LayerNorm weight a scale. The fused qkv keeps its (q, k, v) x heads layout, which Attention
splits the same way. MAE's position embedding is not a parameter in mdistill (fixed 2-D
sin-cos at the run's grid); any other table (timm's learned ones: DeiT, DINO, CLIP, fine-tuned
checkpoints) is, `pos_embed`, in the checkpoint's Layout (mdistill.models.vit), which the
tensors tell: infer_architecture reads it off them.

The tensor names and leaf layouts are mdistill.models.names'. Nothing here checks a
checkpoint against a model: mdistill.weights.loader does, once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pickle
import re
import struct

import numpy as np

from mdistill.models.names import canonical_names, flax_to_torch, to_torch_value
from mdistill.models.vit import SIZES, Layout, ViTSpec, posemb_sincos_2d


# ---- reading --------------------------------------------------------------------------
def read_state_dict(path: str, values=None) -> dict[str, np.ndarray]:
    """Float32 arrays by PyTorch name, from a .pth/.pt/.bin (torch pickle; the release's
    {'model': ...} wrapper and a DDP 'module.' prefix are removed) or a .safetensors file.

    values: the names whose data to read (None: all); every other tensor is a zero-memory
    placeholder of its shape, so a checkpoint's architecture is read without loading it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        sd = _read_safetensors(path, values) if path.endswith(".safetensors") else _read_torch(path, values)
    except ImportError:
        raise
    except Exception as e:
        if _refused_by_weights_only(e):  # a whole, readable pickle that names code to run
            torch_says = " ".join(str(e).split())
            named = re.search(r"GLOBAL ([\w.]+)|global: ?([\w.]+)", torch_says, re.IGNORECASE)
            what = f" ({next(g for g in named.groups() if g)})" if named else ""
            raise ValueError(f"{path!r} is not a plain state dict: it tried to run code when unpickled, calling or "
                             f"building Python objects beyond tensors{what}; mdistill's safe loading "
                             "(torch.load(weights_only=True)) refused it: load it only if you trust its source. "
                             f"torch: {torch_says}") from e
        # truncated zip, not a pickle, bad header: all mean a damaged file
        raise ValueError(f"could not read {path!r} as a checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                         "is the file complete? (a partial download is the usual cause)") from e
    if not sd or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise ValueError(f"{path!r} holds no state dict of tensors (top-level keys: {sorted(sd)[:10]})")
    return canonical_names({k.removeprefix("module."): v for k, v in sd.items()})


def _refused_by_weights_only(e: BaseException) -> bool:
    """torch.load(weights_only=True) refused a global the pickle names (a function to call,
    a class to build): the file was read whole, it is no damaged download."""
    return isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower()


def _placeholder(shape) -> np.ndarray:
    return np.broadcast_to(np.float32(0), tuple(shape))


def _read_torch(path: str, values=None) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path!r} needs PyTorch: pip install 'mdistill[torch]' "
                          "(or pip install torch)") from e
    # weights_only: no code runs from the file; the releases' training checkpoints also hold
    # an argparse 'args', allowed explicitly (torch >= 2.5 has safe_globals)
    safe = getattr(torch.serialization, "safe_globals", None)
    with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
        # memory-mapped where only some values are wanted (zip files; legacy ones are read whole)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=values is not None)
        except RuntimeError:
            if values is None:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        return {}

    def one(k, v):
        if not torch.is_tensor(v):
            return v
        wanted = values is None or k.removeprefix("module.") in values
        return v.detach().float().numpy() if wanted else _placeholder(v.shape)

    return {k: one(k, v) for k, v in obj.items()}


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _read_safetensors(path: str, values=None) -> dict:
    """The format is an 8-byte header length, a JSON header, then raw little-endian data:
    read it directly so timm's hub files need neither torch nor the safetensors package."""
    import ml_dtypes

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        start = f.tell()
        data = f.read() if values is None else b""
        size = os.path.getsize(path) - start
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if end > size:
                raise ValueError(f"tensor {name!r} ends at byte {end}, past the file's {size} data bytes")
            if values is not None:
                if name not in values:
                    out[name] = _placeholder(info["shape"])
                    continue
                f.seek(start + begin)
                out[name] = _decode_safetensor(f.read(end - begin), info, ml_dtypes)
            else:
                out[name] = _decode_safetensor(data[begin:end], info, ml_dtypes)
    return out


def _decode_safetensor(raw: bytes, info: dict, ml_dtypes) -> np.ndarray:
    dtype = ml_dtypes.bfloat16 if info["dtype"] == "BF16" else _SAFETENSORS_DTYPES[info["dtype"]]
    return np.frombuffer(raw, dtype).reshape(info["shape"]).astype(np.float32)


# ---- architecture ---------------------------------------------------------------------
POSEMB_ATOL = 1e-4  # the releases store float32 sin-cos tables; a learned one is far off

# Parts of timm ViTs that mdistill's encoder does not have: a checkpoint with one is refused,
# naming it, rather than loaded into a model that would compute something else.
UNSUPPORTED = (
    (r"blocks\.\d+\.(ls\d\.gamma|gamma_\d)", "LayerScale (DeiT III, CaiT, DINOv2)"),
    (r"reg_token", "register tokens"),
    (r"dist_token", "a distillation token (distilled DeiT)"),
    (r"blocks\.\d+\.attn\.(q_norm|k_norm)\.", "qk normalisation"),
    (r"blocks\.\d+\.attn\.relative_position", "relative position biases"),
    (r"blocks\.\d+\.mlp\.(fc1_g|fc1_x|w12|norm)\.", "a gated or normalised MLP (SwiGLU)"),
    (r"patch_embed\.norm\.", "a LayerNorm in the patch embedding"),
)
# A classifier's parts: not the encoder, dropped where only an encoder is read (a teacher).
CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "head_drop.", "pre_logits.", "attn_pool.")


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
        layout = s.layout.describe()
        return (f"width {s.width}, depth {s.depth}, patch {s.patch_size}, {self.channels} channel(s)"
                f"{', ' + layout if layout else ''}{dec}")

    def to_json(self) -> dict:
        d = dict(width=self.spec.width, depth=self.spec.depth, num_heads=self.spec.num_heads,
                 patch_size=self.spec.patch_size, channels=self.channels, image_size=self.image_size)
        if self.spec.layout != Layout():
            d["layout"] = dataclasses.asdict(self.spec.layout)
        if self.decoder:
            d.update(decoder_width=self.decoder[0], decoder_depth=self.decoder[1], decoder_heads=self.decoder[2])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Architecture":
        spec = ViTSpec(d["width"], d["depth"], d["num_heads"], d["patch_size"], Layout(**d.get("layout", {})))
        decoder = (d["decoder_width"], d["decoder_depth"], d["decoder_heads"]) if "decoder_width" in d else None
        return cls(spec, d["channels"], d["image_size"] // d["patch_size"], decoder)


def default_heads(width: int, depth: int) -> int:
    """Heads of a standard size with this width and depth, else 64-wide heads (ViT's rule)."""
    return next((h for w, d, h in SIZES.values() if (w, d) == (width, depth)), max(1, width // 64))


def default_decoder_heads(width: int, video: bool = False) -> int:
    """32-wide heads, as the official 512-wide, 16-head decoder; 64-wide for VideoMAE's
    decoders (192 / 3, 384 / 6, 512 / 8)."""
    return max(1, width // (64 if video else 32))


def _count_blocks(sd: dict, prefix: str) -> int:
    ids = {int(m[1]) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_architecture(sd: dict, source: str, heads: int | None = None,
                       decoder_heads: int | None = None) -> Architecture:
    if "patch_embed.proj.weight" not in sd:
        raise ValueError(f"{source}: not a ViT/MAE state dict: no 'patch_embed.proj.weight' "
                         f"(keys start with {sorted(sd)[:8]})")
    kernel = sd["patch_embed.proj.weight"].shape
    if len(kernel) == 5:  # VideoMAE's Conv3d: [D, C, tubelet, p, p]
        width, channels, tubelet, patch, patch_w = kernel
    else:
        (width, channels, patch, patch_w), tubelet = kernel, 0
    depth = _count_blocks(sd, "blocks")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.shape[0] != 4 * width:
        raise ValueError(f"{source}: MLP hidden width {fc1.shape[0]} is not 4 x width {width}; "
                         "mdistill's blocks use MLP ratio 4")
    if patch != patch_w:
        raise ValueError(f"{source}: non-square patches {patch}x{patch_w} are not supported")
    check_supported(sd, source)
    layout, grid = infer_layout(sd, source)
    if tubelet:  # VideoMAE's fixed 1-D table is stored nowhere; a learned one would be in pos_embed
        layout = dataclasses.replace(layout, tubelet=int(tubelet),
                                     posemb="learned" if "pos_embed" in sd else "sincos_1d")
    decoder = None
    if "decoder_embed.weight" in sd:
        dw = sd["decoder_embed.weight"].shape[0]
        decoder = (dw, _count_blocks(sd, "decoder_blocks"), decoder_heads or default_decoder_heads(dw, bool(tubelet)))
    spec = ViTSpec(width, depth, heads or default_heads(width, depth), patch, layout)
    return Architecture(spec, channels, grid, decoder)


def check_supported(sd: dict, source: str) -> None:
    """One line naming the first part of the checkpoint mdistill's ViT cannot express."""
    for pattern, what in UNSUPPORTED:
        key = next((k for k in sorted(sd) if re.match(pattern, k)), None)
        if key:
            raise ValueError(f"{source}: {what} ({key}) cannot be expressed by mdistill's ViT, which supports "
                             "timm-layout ViTs with or without cls token, qkv bias, norm_pre and final norm, "
                             "and sin-cos or learned position embeddings")


def infer_layout(sd: dict, source: str) -> tuple[Layout, int]:
    """(layout, grid of the position table; 0 without one) from the tensors: a pos_embed
    equal to MAE's sin-cos table (zero cls row) is MAE's fixed embedding, anything else a
    learned one."""
    class_token = "cls_token" in sd
    qv = "blocks.0.attn.q_bias" in sd  # VideoMAE / BEiT: q and v biases, none for k
    flags = dict(class_token=class_token, norm_pre="norm_pre.weight" in sd,
                 qkv_bias="blocks.0.attn.qkv.bias" in sd or qv or "blocks.0.attn.qkv.weight" not in sd,
                 k_bias=not qv, final_norm="norm.weight" in sd or "fc_norm.weight" not in sd,
                 patch_bias="patch_embed.proj.bias" in sd or "patch_embed.proj.weight" not in sd)
    if "pos_embed" not in sd:
        return Layout(**flags), 0
    table = sd["pos_embed"]
    tokens = table.shape[-2]
    grid = int(round(tokens ** 0.5))
    with_cls_row = grid * grid != tokens
    if with_cls_row:
        grid = int(round((tokens - 1) ** 0.5))
    if table.ndim != 3 or table.shape[0] != 1 or grid * grid != tokens - with_cls_row or (
            with_cls_row and not class_token):
        raise ValueError(f"{source}: pos_embed of shape {table.shape} is not [1, (1 +) grid^2, width] "
                         f"{'with' if class_token else 'without'} a cls row: mdistill needs a square grid")
    if with_cls_row and class_token:  # MAE's fixed table?
        expected = sincos_table(table.shape[-1], grid)
        if table.shape[-1] % 4 == 0 and float(np.max(np.abs(table - expected))) <= POSEMB_ATOL:
            return Layout(**flags), grid
    return Layout(**flags, posemb="learned", posemb_cls=with_cls_row), grid


def architecture_of_params(params: dict, decoder_heads: int | None = None) -> Architecture:
    """The architecture of mdistill parameters {'encoder', 'decoder'?}, from shapes only:
    heads follow default_heads / default_decoder_heads."""
    sd = {flax_to_torch(k[0], k[1:]): to_torch_value(np.empty(v.shape, np.int8)) for k, v in flatten(params).items()}
    return infer_architecture(sd, "checkpoint", decoder_heads=decoder_heads)


def flax_shapes(arch: Architecture, with_decoder: bool) -> dict[tuple[str, ...], tuple[int, ...]]:
    """('encoder' | 'decoder', *path) -> shape of every parameter of the Flax model for this
    architecture, from the model itself (so the checks can never drift from it)."""
    import jax
    import jax.numpy as jnp

    from mdistill.models.mae import MAE
    from mdistill.models.vit import Encoder

    size = arch.image_size or arch.spec.patch_size
    tubelet = arch.spec.layout.tubelet
    images = jnp.zeros((1, *((tubelet,) if tubelet else ()), size, size, arch.channels), jnp.float32)
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
        layout = arch.spec.layout
        rows = layout.num_positions(arch.grid) if layout.posemb == "learned" else 1 + arch.grid ** 2
        out["pos_embed"] = (1, rows, arch.spec.width)
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


def _cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with PyTorch's a = -0.75."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0


def bicubic_matrix(size_in: int, size_out: int, antialias: bool = False) -> np.ndarray:
    """[size_out, size_in] weights of torch.nn.functional.interpolate(mode='bicubic',
    align_corners=False, antialias=antialias) along one axis. Without antialias: source
    x = (j + 0.5) * in / out - 0.5, four taps of Keys' kernel (a = -0.75), indices clamped at
    the border. With it (PIL's filter, as PyTorch implements it): a = -0.5, the kernel widened
    by in / out when shrinking, taps inside the image only, weights normalised to sum 1."""
    m = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for j in range(size_out):
        if not antialias:
            src = (j + 0.5) * scale - 0.5
            x0 = int(np.floor(src))
            for k in range(-1, 3):
                m[j, min(max(x0 + k, 0), size_in - 1)] += _cubic(src - (x0 + k))
            continue
        support, inv = 2.0 * max(scale, 1.0), 1.0 / max(scale, 1.0)
        center = scale * (j + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        w = np.array([_cubic((k - center + 0.5) * inv, a=-0.5) for k in range(lo, hi)])
        m[j, lo:hi] = w / w.sum()
    return m


def interpolate_posemb(table: np.ndarray, grid: int, antialias: bool = False) -> np.ndarray:
    """A [1, (1 +) g^2, D] position table resized to `grid` x `grid` patches: a cls row kept,
    the patch rows resized bicubically as a g x g image with D channels. Without antialias as
    the official fine-tuning's interpolate_pos_embed (DeiT's) does; with it as timm's
    resample_abs_pos_embed (its default, used when timm loads a checkpoint at another size)."""
    rows = table.shape[1]
    prefix = 0 if int(round(rows ** 0.5)) ** 2 == rows else 1
    old = int(round((rows - prefix) ** 0.5))
    patches = table[0, prefix:].reshape(old, old, -1).astype(np.float64)
    if old != grid:
        m = bicubic_matrix(old, grid, antialias)
        patches = np.einsum("ij,jkd,lk->ild", m, patches, m)
    return np.concatenate([table[0, :prefix], patches.reshape(grid * grid, -1)])[None].astype(np.float32)



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
