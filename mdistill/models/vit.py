"""Vision Transformer encoder as in MAE: patch embedding, cls token, fixed 2-D sin-cos
position embeddings, pre-norm blocks. A Layout describes the other timm-style ViTs a teacher
may be (DeiT, DINO, MoCo v3, CLIP, fine-tuned checkpoints): a learned position table, no
cls token, a LayerNorm before the blocks (CLIP's norm_pre), no qkv bias, no final norm; and
the video ViTs of VideoMAE / AMD (Layout.video): tubelets of `tubelet` frames x p x p
embedded by a 3-D convolution, no cls token, a fixed 1-D sinusoid table over the T*H*W
tokens, and q / v biases without a k bias.

The encoder can run on a subset of patches (only the visible tokens enter the blocks),
return the outputs of chosen blocks, and stop after a given block: blocks past it are
never called, so they cost nothing (DMAE's teacher runs only its first blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# name -> (width, depth, heads). Ti/S/B/L/H are the standard ViT sizes; mu and xs are
# small models for tests and the Fashion-MNIST runs.
SIZES = {
    "mu": (64, 4, 4),
    "xs": (128, 6, 4),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


def variant_name(width: int, depth: int, heads: int, patch: int) -> str:
    """The variant ('B/16') of a ViT of these sizes, as ViTSpec.parse takes it."""
    for name, size in SIZES.items():
        if size == (width, depth, heads):
            return f"{name}/{patch}"
    raise ValueError(f"no ViT variant has width {width}, depth {depth}, {heads} heads; known: {SIZES}")


POSEMB_KINDS = ("sincos", "learned", "sincos_1d")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a ViT's pieces are arranged, beyond its size; the default is MAE's. A checkpoint's
    tensors say which layout it has (mdistill.weights.state_dict.infer_architecture).

    posemb: 'sincos' (MAE's fixed 2-D table, not a parameter), 'learned' (a `pos_embed`
      parameter, as timm's ViTs have; also a fixed table of another formula, e.g. MoCo v3's)
      or 'sincos_1d' (VideoMAE's fixed table over the token index, sin / cos interleaved).
    posemb_cls: a learned table has a row for the cls token (timm's default; False is timm's
      `no_embed_class`).
    k_bias: with qkv_bias, the k part of the fused bias is a parameter too (timm, MAE);
      False: only `q_bias` and `v_bias` are, k's is zero (VideoMAE, BEiT).
    tubelet: 0 for images (NHWC, p x p patches); t > 0 for clips (NTHWC, t x p x p tubelets).
    """

    class_token: bool = True
    posemb: str = "sincos"
    posemb_cls: bool = True
    norm_pre: bool = False
    qkv_bias: bool = True
    final_norm: bool = True
    k_bias: bool = True
    tubelet: int = 0
    patch_bias: bool = True  # False: CLIP's bias-free patch embedding (timm's pre_norm ViTs)

    @classmethod
    def video(cls, tubelet: int = 2) -> "Layout":
        """VideoMAE's (and AMD's) video ViT."""
        return cls(class_token=False, posemb="sincos_1d", k_bias=False, tubelet=tubelet)

    def __post_init__(self):
        if self.posemb not in POSEMB_KINDS:
            raise ValueError(f"posemb={self.posemb!r}: expected one of {POSEMB_KINDS}")

    def num_positions(self, grid: int) -> int:
        """Rows of a learned table for a grid x grid input."""
        return grid * grid + int(self.class_token and self.posemb_cls)

    def describe(self) -> str:
        """What differs from MAE's layout, e.g. 'learned position embedding, norm_pre'; '' for MAE's."""
        parts = []
        if self.tubelet:
            parts.append(f"video ({self.tubelet}-frame tubelets)")
        if self.posemb == "sincos_1d":
            parts.append("1-D sin-cos position table")
        if self.posemb == "learned":
            parts.append("learned position embedding" + ("" if self.posemb_cls or not self.class_token
                                                         else " without a cls row"))
        parts += [text for flag, text in ((not self.class_token, "no cls token"), (self.norm_pre, "norm_pre"),
                                          (not self.qkv_bias, "no qkv bias"), (not self.final_norm, "no final norm"),
                                          (self.qkv_bias and not self.k_bias, "q/v biases"),
                                          (not self.patch_bias, "no patch embedding bias"))
                  if flag]
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """Architecture of a ViT, parsed from a variant name such as 'B/16' (MAE's layout)."""

    width: int
    depth: int
    num_heads: int
    patch_size: int
    layout: Layout = Layout()

    @classmethod
    def parse(cls, variant: str) -> "ViTSpec":
        name, sep, patch = variant.partition("/")
        if name not in SIZES or not sep or not patch.isdigit():
            raise ValueError(
                f"model variant {variant!r}: expected '<size>/<patch>' with size one of "
                f"{sorted(SIZES)} and an integer patch size, e.g. 'B/16'"
            )
        width, depth, heads = SIZES[name]
        return cls(width, depth, heads, int(patch))


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim] embedding: sin of the first dim/2 frequencies, then cos."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def posemb_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """[grid*grid, dim] fixed position embedding in row-major patch order.

    Matches the official MAE layout: the first half of the channels encodes the patch's
    column, the second half its row, so converted checkpoints line up exactly.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def posemb_sincos_1d(dim: int, num_tokens: int) -> np.ndarray:
    """[num_tokens, dim] VideoMAE's table over the token index: channel j holds
    pos / 10000^(2 floor(j/2) / dim), sin on even channels, cos on odd ones."""
    pos = np.arange(num_tokens, dtype=np.float64)[:, None]
    angles = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None]
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


def token_grid(spec: ViTSpec, image_size: int, num_frames: int = 1) -> tuple[int, int]:
    """(tokens along time, tokens per frame): (1, (H/p)^2) for images, (T/t, (H/p)^2) for
    clips; tokens are ordered time-major, t * S + s, as VideoMAE's Conv3d flattens them."""
    per_frame = (image_size // spec.patch_size) ** 2
    t = spec.layout.tubelet
    return (num_frames // t if t else 1), per_frame


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
    """x[b, ids[b, k]] for tokens x [B, L, D] and indices [B, K]."""
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)


dense = nn.Dense
xavier = nn.initializers.xavier_uniform()


def multi_head_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v per head, for fused qkv [B, T, 3 * width] laid out
    (q|k|v, head, channel) -> [B, T, width]. Logits and softmax in float32.

    On GPU and TPU this is jax.nn.dot_product_attention (cuDNN's flash attention on NVIDIA
    GPUs for bf16/f16). XLA:CPU runs the same two products about twice as fast with the
    heads moved in front of the tokens first, so there it is written out in that layout, and
    the softmax is normalised after the product with v, as flash attention does: the
    division then touches [T, d] per head instead of [T, T], and the backward pass needs no
    row sum over the [T, T] gradient (benchmarks/attention.py times both).
    """
    backend = jax.default_backend()
    if backend != "cpu":
        q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b t h d", three=3, h=num_heads)
        out = None
        if backend in ("gpu", "cuda") and q.dtype in (jnp.bfloat16, jnp.float16):
            try:
                out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
            except Exception:  # no cuDNN attention for this shape or GPU: XLA's below
                out = None
        if out is None:
            out = jax.nn.dot_product_attention(q, k, v)
        return einops.rearrange(out, "b t h d -> b t (h d)")
    q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=num_heads)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * np.float32(q.shape[-1] ** -0.5)
    # Softmax does not change when a row is shifted, so the row max needs no gradient.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = (out / weights.sum(axis=-1, keepdims=True)).astype(v.dtype)
    return einops.rearrange(out, "b h t d -> b t (h d)")


def relation_logits(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array]:
    """TinyMIM's token relations before their softmax, per head, for fused qkv [B, T, 3 *
    width]: (q k^T, v v^T), each scaled by head_dim^-0.5 -> two [B, heads, T, T] in float32."""
    q, k, v = einops.rearrange(qkv, "b t (three h d) -> three b h t d", three=3, h=num_heads)
    scale = np.float32(q.shape[-1] ** -0.5)
    qk = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    vv = jnp.einsum("bhqd,bhkd->bhqk", v, v, preferred_element_type=jnp.float32) * scale
    return qk, vv


class Attention(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32
    qkv_bias: bool = True
    k_bias: bool = True  # False: VideoMAE's q_bias and v_bias, with a zero k bias

    @nn.compact
    def __call__(self, x, relations: bool = False):
        """-> [B, T, width]; with `relations`, the (q k^T, v v^T) logits of relation_logits
        instead (the output projection is not called)."""
        width = x.shape[-1]
        # One fused qkv projection, laid out like the PyTorch releases' qkv Linear.
        fused_bias = self.qkv_bias and self.k_bias
        qkv = dense(3 * width, kernel_init=xavier, use_bias=fused_bias, dtype=self.dtype, name="qkv")(x)
        if self.qkv_bias and not self.k_bias:
            q_bias = self.param("q_bias", nn.initializers.zeros, (width,))
            v_bias = self.param("v_bias", nn.initializers.zeros, (width,))
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        if relations:
            return relation_logits(qkv, self.num_heads)
        out = multi_head_attention(qkv, self.num_heads)
        return dense(width, kernel_init=xavier, dtype=self.dtype, name="proj")(out)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2, as PyTorch's nn.GELU computes it. Equal
    to jax.nn.gelu(x, approximate=False) within float32 rounding; that one goes through
    erfc, which XLA:CPU evaluates about twice as slowly."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.asarray(0.5 ** 0.5, x.dtype)))


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = dense(self.hidden, kernel_init=xavier, dtype=self.dtype, name="fc1")(x)
        x = gelu(x)
        return dense(width, kernel_init=xavier, dtype=self.dtype, name="fc2")(x)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero a residual branch for a random subset of samples and rescale
    the rest by 1/(1-rate), so its expected value is unchanged."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, MLP ratio 4, qkv bias).

    drop_path > 0 drops each residual branch per sample while training (deterministic=False,
    rng collection 'dropout'); it adds no parameters, so pretrained names are unchanged.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    drop_path: float = 0.0
    qkv_bias: bool = True
    k_bias: bool = True

    @nn.compact
    def __call__(self, x, deterministic: bool = True, relations: bool = False):
        """-> [B, T, width]; with `relations`, the relation logits of its attention on
        norm1(x) (Attention's), and nothing after them is called."""
        norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)  # noqa: E731
        if relations:
            return Attention(self.num_heads, self.dtype, self.qkv_bias, self.k_bias, name="attn")(
                norm("norm1")(x), relations=True)
        branch = lambda y: y if deterministic or self.drop_path == 0.0 else drop_path(  # noqa: E731
            y, self.drop_path, self.make_rng("dropout"))
        x = x + branch(Attention(self.num_heads, self.dtype, self.qkv_bias, self.k_bias, name="attn")(norm("norm1")(x)))
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + branch(Mlp(hidden, self.dtype, name="mlp")(norm("norm2")(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, L, width] (a strided conv, as in ViT); with
    tubelet t > 0, clips [B, T, H, W, C] -> t x p x p tubelets (a strided 3-D conv, as
    VideoMAE's), tokens time-major."""

    patch_size: int
    width: int
    dtype: Any = jnp.float32
    tubelet: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, images, ids_keep=None):
        """-> [B, L, width]; with ids_keep [B, K], only those patches: [B, K, width]."""
        p, t = self.patch_size, self.tubelet
        window = (t, p, p) if t else (p, p)
        conv = nn.Conv(self.width, window, strides=window, padding="VALID", kernel_init=xavier,
                       use_bias=self.use_bias, dtype=self.dtype, name="proj")
        if ids_keep is None:
            return conv(images).reshape(images.shape[0], -1, self.width)
        # Gather the visible patches' pixels first and embed only those: K/L of the work,
        # and the backward pass needs no scatter into the hidden patches.
        if t:
            patches = einops.rearrange(images, "b (n u) (h p) (w q) c -> b (n h w) u p q c", u=t, p=p, q=p)
        else:
            patches = einops.rearrange(images, "b (h p) (w q) c -> b (h w) p q c", p=p, q=p)
        ids = ids_keep.reshape(ids_keep.shape + (1,) * (patches.ndim - 2))
        patches = jnp.take_along_axis(patches, ids, axis=1)
        batch, keep = ids_keep.shape
        x = conv(patches.reshape((batch * keep,) + patches.shape[2:]))
        return x.reshape(batch, keep, self.width)


REMAT_POLICIES = ("none", "full", "dots")


def block_class(remat: str = "none"):
    """Block, or Block rematerialised in the backward pass to save activation memory:
    'full' keeps only each block's input and recomputes the rest, 'dots' also keeps the
    outputs of its matrix products (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    Parameter names are unchanged."""
    if remat == "none":
        return Block
    policies = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    if remat not in policies:
        raise ValueError(f"remat={remat!r}: expected one of {REMAT_POLICIES}")
    return nn.remat(Block, policy=policies[remat], static_argnums=(2,))


class Encoder(nn.Module):
    """ViT encoder on NHWC images (NTHWC clips for a video layout).

    __call__(images, ids_keep, return_blocks, stop_after) -> (tokens, {block: features})
      ids_keep: [B, K] indices of the patches that enter the blocks (None: all), in the
        order given; the cls token is prepended (where the layout has one).
      return_blocks: 0-based blocks whose outputs to return ([B, 1+K, width], cls first;
        [B, K, width] for a layout without cls).
      stop_after: last block to run (0-based). None runs all blocks and the final norm;
        otherwise the returned tokens are that block's raw output.
      deterministic: False enables drop path (fine-tuning); its rate rises linearly from 0
        at the first block to `drop_path` at the last, as in MAE / timm (drop_path_uniform:
        `drop_path` in every block but the last, as TinyMIM's student).
      relations_at: a block (0-based) whose token relations to return instead of tokens:
        blocks before it run, then its norm1 and qkv; the first output is then its (q k^T,
        v v^T) logits, each [B, heads, 1+K, 1+K] (see relation_logits). Not with stop_after.
    last_heads: heads of the last block (0: spec.num_heads), e.g. TinyMIM's student's, whose
      relations have the teacher's head count; no parameter's shape depends on it.
    remat: 'none' | 'full' | 'dots', see block_class.
    """

    spec: ViTSpec
    dtype: Any = jnp.float32
    drop_path: float = 0.0
    remat: str = "none"
    last_heads: int = 0
    drop_path_uniform: bool = False

    def heads_of(self, block: int) -> int:
        """Attention heads of a block (0-based)."""
        return (self.last_heads or self.spec.num_heads) if block == self.spec.depth - 1 else self.spec.num_heads

    @nn.compact
    def __call__(self, images, ids_keep=None, return_blocks: Sequence[int] = (), stop_after=None,
                 deterministic: bool = True, relations_at: int | None = None):
        spec, layout = self.spec, self.spec.layout
        x = PatchEmbed(spec.patch_size, spec.width, self.dtype, layout.tubelet, layout.patch_bias,
                       name="patch_embed")(images, ids_keep)
        grid = images.shape[-3] // spec.patch_size
        cls_pos = None
        if layout.posemb == "sincos_1d":
            frames = images.shape[1] // layout.tubelet if layout.tubelet else 1
            pos = jnp.asarray(posemb_sincos_1d(spec.width, frames * grid * grid), x.dtype)
        elif layout.posemb == "learned":  # at the input's grid: a loaded table is resized to it first
            table = self.param("pos_embed", nn.initializers.normal(0.02),
                               (1, layout.num_positions(grid), spec.width))[0].astype(x.dtype)
            pos, cls_pos = table[-grid * grid:], (table[:1] if layout.num_positions(grid) > grid * grid else None)
        else:
            pos = jnp.asarray(posemb_sincos_2d(spec.width, grid), x.dtype)
        x = x + (pos if ids_keep is None else jnp.take(pos, ids_keep, axis=0))
        if layout.class_token:
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, spec.width)).astype(x.dtype)
            cls = cls if cls_pos is None else cls + cls_pos
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, spec.width)), x], axis=1)
        if layout.norm_pre:  # CLIP's ln_pre
            x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm_pre")(x)

        if relations_at is not None and (stop_after is not None or not 0 <= relations_at < spec.depth):
            raise ValueError(f"relations_at={relations_at}: expected a block in 0..{spec.depth - 1}, "
                             f"without stop_after (given {stop_after})")
        last = spec.depth - 1 if stop_after is None else stop_after
        if relations_at is not None:
            last = relations_at - 1
        if not -1 <= last < spec.depth or (last == -1 and relations_at is None):
            raise ValueError(f"stop_after={stop_after} outside 0..{spec.depth - 1}")
        features = {}
        for i in range(last + 1):
            if self.drop_path_uniform:
                rate = self.drop_path if i < spec.depth - 1 else 0.0
            else:
                rate = self.drop_path * i / max(spec.depth - 1, 1)
            x = block_class(self.remat)(self.heads_of(i), dtype=self.dtype, drop_path=rate, qkv_bias=layout.qkv_bias,
                                        k_bias=layout.k_bias, name=f"block_{i}")(x, deterministic)
            if i in return_blocks:
                features[i] = x
        missing = set(return_blocks) - set(features)
        if missing:
            raise ValueError(f"return_blocks {sorted(missing)} lie past stop_after={last}")
        if relations_at is not None:
            relations = Block(self.heads_of(relations_at), dtype=self.dtype, qkv_bias=layout.qkv_bias,
                              k_bias=layout.k_bias, name=f"block_{relations_at}")(x, relations=True)
            return relations, features
        if stop_after is None and layout.final_norm:
            x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        return x, features
