"""FLOPs of the models' parts, per sample: matrix products only, 2 FLOPs per multiply-add
(see benchmarks.flops for what the step model counts and why)."""

from __future__ import annotations

from mdistill.models.vit import ViTSpec


def attention_flops(tokens: int, width: int) -> float:
    """Attention's two [tokens x tokens] products, q k^T and probabilities x v, per sample
    (summed over heads, whose channels add up to `width`)."""
    return float(2 * 2 * tokens * tokens * width)


def block_flops(tokens: int, width: int, mlp_ratio: float = 4.0) -> float:
    """One pre-norm transformer block on `tokens` tokens, per sample: qkv, proj, the MLP's
    two layers, and attention's two [tokens x tokens] products."""
    hidden = int(width * mlp_ratio)
    dense = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden)
    return float(dense) + attention_flops(tokens, width)


def patch_embed_flops(patches: int, patch_size: int, channels: int, width: int, tubelet: int = 0) -> float:
    return 2.0 * patches * max(tubelet, 1) * patch_size * patch_size * channels * width


def encoder_flops(spec: ViTSpec, channels: int, visible: int, blocks: int | None = None) -> float:
    """ViT encoder per sample: patch embedding of the visible patches (tubelets for clips),
    then `blocks` blocks (all by default) on (cls +) visible tokens."""
    blocks = spec.depth if blocks is None else blocks
    cls = int(spec.layout.class_token)
    return (patch_embed_flops(visible, spec.patch_size, channels, spec.width, spec.layout.tubelet)
            + blocks * block_flops(cls + visible, spec.width))


def decoder_flops(enc_width: int, width: int, depth: int, num_patches: int, visible: int,
                  patch_dim: int, cls: int = 1) -> float:
    """MAE decoder per sample: embed cls + visible tokens, `depth` blocks on cls + all
    patches, pixel head on cls + all patches (the cls row is dropped after it); cls=0 for
    VideoMAE's decoder, which has no cls slot."""
    embed = 2.0 * (cls + visible) * enc_width * width
    pred = 2.0 * (cls + num_patches) * width * patch_dim
    return embed + depth * block_flops(cls + num_patches, width) + pred
