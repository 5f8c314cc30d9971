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
             (the teacher and heads terms are each objective's flop_terms());
  backward   twice the forward of everything trained (gradients for activations and for
             weights), less the patch embedding's input gradient (its input is pixels).

step_flops(config) returns a dict of these terms (per step, global batch) plus 'total'.
"""

from __future__ import annotations

from mdistill import inputs
# the parts' FLOPs, here too for the callers of benchmarks.flops
from mdistill.models.flops import (attention_flops, block_flops, decoder_flops, encoder_flops,  # noqa: F401
                                   patch_embed_flops)
from mdistill.objectives import OBJECTIVES


def step_flops(config) -> dict[str, float]:
    """FLOPs of one training step of `config` over its global batch, by term."""
    spec = inputs.student_spec(config)
    channels, tubelet = config.data.channels, spec.layout.tubelet
    num_patches = inputs.num_tokens(config)
    visible = inputs.visible_tokens(config, config.mask_ratio)
    patch_dim = max(tubelet, 1) * spec.patch_size ** 2 * channels
    batch = config.batch_size

    student = encoder_flops(spec, channels, visible)
    embed = patch_embed_flops(visible, spec.patch_size, channels, spec.width, tubelet)
    s = config.student
    decoder = decoder_flops(spec.width, s.decoder_width, s.decoder_depth, num_patches, visible, patch_dim,
                            cls=int(spec.layout.class_token))
    method = OBJECTIVES[config.method].flop_terms(config)  # the teacher and the method's heads
    teacher, heads = method["teacher_forward"], method["heads"]
    # a student that is not MAE's (TinyMIM's: every patch, no decoder) counts itself
    student, embed = method.get("student_encoder", student), method.get("student_embed", embed)
    decoder = method.get("decoder", decoder)
    forward = student + decoder + heads
    backward = 2.0 * forward - embed  # no gradient for the pixels
    terms = {"teacher_forward": teacher, "student_encoder": student, "decoder": decoder,
             "heads": heads, "student_forward": forward, "backward": backward}
    terms = {k: v * batch for k, v in terms.items()}
    terms["total"] = terms["teacher_forward"] + terms["student_forward"] + terms["backward"]
    return terms
