"""An analytic FLOP model of one training step, term by term.

Counts the matrix products only (2 FLOPs per multiply-add), which is what a step's useful
work is: every dense layer, the patch embedding, and attention's two products (q k^T and
attention x v). Layer norms, softmax, GELU, the losses and the optimizer update are
elementwise; XLA's cost analysis counts them too, so it reads a few percent higher than
this model on real widths (tests/test_flops.py bounds the gap). The model follows what
mdistill executes:

  teacher    forward only, on the tokens it sees (cls + visible; AMD: cls + its larger
             visible set), blocks 0..deepest aligned block, no final norm, no decoder;
  student    patch embedding and blocks on cls + visible tokens, final norm;
  decoder    embedding of the encoder tokens, blocks on cls + every patch, pixel head;
  heads      projection heads (DMAE, AMD) and AMD's generators;
  backward   twice the forward of everything trained (gradients for activations and for
             weights), less the patch embedding's input gradient (its input is pixels).

step_flops(config) returns a dict of these terms (per step, global batch) plus 'total'.
"""

from __future__ import annotations

from mdistill import masking
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


def patch_embed_flops(patches: int, patch_size: int, channels: int, width: int) -> float:
    return 2.0 * patches * patch_size * patch_size * channels * width


def encoder_flops(spec: ViTSpec, channels: int, visible: int, blocks: int | None = None) -> float:
    """ViT encoder per sample: patch embedding of the visible patches, then `blocks` blocks
    (all by default) on cls + visible tokens."""
    blocks = spec.depth if blocks is None else blocks
    return (patch_embed_flops(visible, spec.patch_size, channels, spec.width)
            + blocks * block_flops(1 + visible, spec.width))


def decoder_flops(enc_width: int, width: int, depth: int, num_patches: int, visible: int,
                  patch_dim: int) -> float:
    """MAE decoder per sample: embed cls + visible tokens, `depth` blocks on cls + all
    patches, pixel head on cls + all patches (the cls row is dropped after it)."""
    embed = 2.0 * (1 + visible) * enc_width * width
    pred = 2.0 * (1 + num_patches) * width * patch_dim
    return embed + depth * block_flops(1 + num_patches, width) + pred


def step_flops(config) -> dict[str, float]:
    """FLOPs of one training step of `config` over its global batch, by term."""
    spec = ViTSpec.parse(config.student.variant)
    channels = config.data.channels
    num_patches = (config.image_size // spec.patch_size) ** 2
    visible = masking.num_visible(num_patches, config.mask_ratio)
    patch_dim = spec.patch_size ** 2 * channels
    batch = config.batch_size

    student = encoder_flops(spec, channels, visible)
    embed = patch_embed_flops(visible, spec.patch_size, channels, spec.width)
    s = config.student
    decoder = decoder_flops(spec.width, s.decoder_width, s.decoder_depth, num_patches, visible, patch_dim)
    teacher = heads = 0.0
    if config.method in ("dmae", "amd"):
        t_spec = ViTSpec.parse(config.teacher.variant)
        pairs = config.distill.pairs if config.method == "dmae" else config.amd.pairs
        t_visible = visible
        if config.method == "amd":
            t_visible = masking.num_visible(num_patches, config.amd.teacher_mask_ratio)
        teacher = encoder_flops(t_spec, channels, t_visible, blocks=1 + max(t for _, t in pairs))
        # one projection per pair on cls + the student's visible tokens ('mlp' heads: two layers)
        layers = 2 if config.method == "dmae" and config.distill.head == "mlp" else 1
        first = 2.0 * (1 + visible) * spec.width * t_spec.width
        heads = len(pairs) * (first + (layers - 1) * 2.0 * (1 + visible) * t_spec.width ** 2)
        if config.method == "amd":
            # each pair's generator runs at the teacher's width on cls + visible + targets
            gen_tokens = 1 + t_visible
            heads += len(pairs) * config.amd.generator_depth * block_flops(gen_tokens, t_spec.width)
    forward = student + decoder + heads
    backward = 2.0 * forward - embed  # no gradient for the pixels
    terms = {"teacher_forward": teacher, "student_encoder": student, "decoder": decoder,
             "heads": heads, "student_forward": forward, "backward": backward}
    terms = {k: v * batch for k, v in terms.items()}
    terms["total"] = terms["teacher_forward"] + terms["student_forward"] + terms["backward"]
    return terms
