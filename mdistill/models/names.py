"""Our parameter names <-> the tensor names of the PyTorch models mdistill reads and writes.

The official MAE releases and timm's ViTs name tensors module for module ('blocks.3.attn.qkv'
<-> 'block_3/attn/qkv'); only leaves change (a Linear weight [out, in] is a Dense kernel
[in, out], a Conv weight [D, C, p, p] a Conv kernel [p, p, C, D], a LayerNorm weight a scale).
VideoMAE's pre-training model is renamed to the MAE release's first; DMAE's and AMD's heads
map onto models/heads.py. mdistill.weights.state_dict reads the files these names are in.
"""

from __future__ import annotations

import re

import numpy as np

_DECODER_PREFIXES = {"decoder_embed": "embed", "decoder_norm": "norm", "decoder_pred": "pred"}


# ---- names ----------------------------------------------------------------------------
def torch_to_flax(key: str, ndim: int) -> tuple[str, tuple[str, ...]] | None:
    """'blocks.3.attn.qkv.weight' -> ('encoder', ('block_3', 'attn', 'qkv', 'kernel')); None
    for names mdistill has no parameter for (pos_embed, heads, anything unknown)."""
    parts = key.split(".")
    if key in ("cls_token", "mask_token", "pos_embed"):  # pos_embed: a parameter in learned layouts only
        return ("decoder" if key == "mask_token" else "encoder"), (key,)
    m = re.fullmatch(r"(decoder_)?blocks\.(\d+)\.attn\.(q_bias|v_bias)", key)  # VideoMAE's q / v biases
    if m:
        return ("decoder" if m[1] else "encoder"), (f"block_{m[2]}", "attn", m[3])
    if parts[-1] not in ("weight", "bias"):
        return None
    leaf = "bias" if parts[-1] == "bias" else ("kernel" if ndim in (2, 4, 5) else "scale")
    m = re.fullmatch(r"(decoder_)?blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.\w+", key)
    if m:
        return ("decoder" if m[1] else "encoder"), (f"block_{m[2]}", *m[3].split("."), leaf)
    if parts[:-1] in (["patch_embed", "proj"], ["norm"], ["norm_pre"]):
        return "encoder", (*parts[:-1], leaf)
    if len(parts) == 2 and parts[0] in _DECODER_PREFIXES:
        return "decoder", (_DECODER_PREFIXES[parts[0]], leaf)
    return None


def flax_to_torch(part: str, path: tuple[str, ...]) -> str:
    """Inverse of torch_to_flax."""
    head, *rest = path
    if head == "pos_embed":
        return head
    if head.startswith("block_"):
        head = f"{'decoder_' if part == 'decoder' else ''}blocks.{head[6:]}"
    elif part == "decoder" and head != "mask_token":
        head = {v: k for k, v in _DECODER_PREFIXES.items()}[head]
    rest = ["weight" if r in ("kernel", "scale") else r for r in rest]
    return ".".join([head, *rest])


# VideoMAE's pre-training model (PretrainVisionTransformer, as AMD's teachers are stored):
# its names -> the MAE release's, which the rest of this module reads
_VIDEOMAE_NAMES = ((r"encoder\.", ""), (r"encoder_to_decoder\.", "decoder_embed."),
                   (r"decoder\.blocks\.", "decoder_blocks."), (r"decoder\.norm\.", "decoder_norm."),
                   (r"decoder\.head\.", "decoder_pred."))


def canonical_names(sd: dict) -> dict:
    """A state dict under the MAE release's names: VideoMAE's pre-training layout (every
    encoder tensor under 'encoder.') renamed, any other returned as it is."""
    if not any(k.startswith("encoder.patch_embed.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        for pattern, new in _VIDEOMAE_NAMES:
            if re.match(pattern, k):
                k = new + k[re.match(pattern, k).end():]
                break
        out[k] = v
    return out


# ---- method heads ----------------------------------------------------------------------
# The distillation heads the official releases store beside their students: DMAE's
# aligned_feature_projection_heads.<i> (models_mae_distill.py: a Linear for 'fc-1layer',
# timm's Mlp fc1 -> GELU -> fc2 for 'mlp-1layer', two Mlps for 'mlp-2layer'), AMD's
# encoder.projection_heads.<i> (bias-free Linears; 'encoder.' is dropped as for every
# VideoMAE encoder tensor) and generators.<i> (VideoMAE blocks at the teacher's width, and a
# `norm` its forward never uses; its mask tokens are a plain list, stored nowhere). Head i
# belongs to the i-th aligned student block, in block order.
METHOD_HEAD_PREFIXES = ("aligned_feature_projection_heads.", "projection_heads.", "generators.")


def method_head_to_flax(key: str, ndim: int) -> tuple[str, int, tuple[str, ...]] | None:
    """'aligned_feature_projection_heads.0.weight' -> ('heads', 0, ('out', 'kernel')),
    'generators.1.blocks.0.attn.q_bias' -> ('generators', 1, ('block_0', 'attn', 'q_bias')):
    mdistill's ProjectionHead ('linear': out; 'mlp': fc1, out) and Generator names; None for a
    head tensor they have no place for."""
    m = re.fullmatch(r"(?:aligned_feature_)?projection_heads\.(\d+)\.(?:(fc1|fc2)\.)?(weight|bias)", key)
    if m:
        layer = "fc1" if m[2] == "fc1" else "out"
        return "heads", int(m[1]), (layer, "kernel" if m[3] == "weight" else "bias")
    m = re.fullmatch(r"generators\.(\d+)\.(blocks\..+)", key)
    target = torch_to_flax(m[2], ndim) if m else None
    if target and target[0] == "encoder":
        return "generators", int(m[1]), target[1]
    return None


def to_flax_value(x: np.ndarray) -> np.ndarray:
    if x.ndim == 5:
        return x.transpose(2, 3, 4, 1, 0)  # Conv3d [D, C, t, p, p] -> [t, p, p, C, D]
    if x.ndim == 4:
        return x.transpose(2, 3, 1, 0)  # [D, C, p, p] -> [p, p, C, D]
    return x.T if x.ndim == 2 else x


def to_torch_value(x: np.ndarray) -> np.ndarray:
    if x.ndim == 5:
        return x.transpose(4, 3, 0, 1, 2)
    if x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x.T if x.ndim == 2 else x
