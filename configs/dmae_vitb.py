"""DMAE (Bai et al., CVPR 2023) as in its official release: an MAE ViT-L/16 teacher distils
into a ViT-B/16 student on ImageNet-1k (tfds imagenet2012).

Mask 0.75, reconstruction of the raw (not per-patch normalised) pixels as the release's
pretrain.sh does (--student_reconstruction_target original_img, no --norm_pix_loss), global
batch 4096 (the release: 8 GPUs x 128 x 4 accumulation
steps), blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, 100 epochs with 20 warm-up. Distillation:
student block 8 <-> teacher block 17 (0-based; the teacher runs 18 of its 24 blocks, on the
student's visible patches only), linear head 768 -> 1024, L1 on L2-normalised features.
The paper reports 84.0% top-1 after fine-tuning.

`target=last` keeps the recipe but distils MaskDistill's target instead (Peng et al., 2022,
for CLIP / DINO teachers): the student's last block <-> the teacher's last block (11 <-> 23),
smooth-L1 on the teacher's features standardised per token (LayerNorm without affine), every
token the teacher sees. The teacher may be any timm-layout ViT-L/16 (it must share the
student's 16 px patches): its layout is read from the checkpoint, e.g. timm's supervised
`vit_large_patch16_224.augreg_in21k_ft_in1k`, which is also the DMAE paper's baseline of
distilling a fine-tuned ViT-L.

  python -m mdistill.main --config=configs/dmae_vitb.py --workdir=runs/dmae_vitb \
      --config.teacher.checkpoint=runs/mae_vitl
  python -m mdistill.main --config=configs/dmae_vitb.py:target=last --workdir=runs/dmae_last \
      --config.teacher.checkpoint=vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors
"""

from mdistill.config import apply_smoke, base_config, parse_arg
from mdistill.models.vit import ViTSpec

TARGETS = ("dmae", "last")


def get_config(arg=None):
    args = parse_arg(arg, target="dmae")
    if args["target"] not in TARGETS:
        raise ValueError(f"config argument target={args['target']!r}: expected one of {TARGETS}")
    c = base_config()
    c.method = "dmae"
    c.student.variant = "B/16"
    c.teacher.variant = "L/16"
    c.teacher.dtype = "bfloat16"
    c.norm_pix_loss = False
    c.distill.update(pairs=((8, 17),), head="linear", projection=(768, 1024), loss="l1", normalize=True)
    c.batch_size = 4096
    c.num_epochs, c.warmup_epochs = 100.0, 20.0
    c.optim.blr = 1.5e-4
    if args["smoke"]:
        apply_smoke(c)
    if args["target"] == "last":  # the deepest blocks of whichever sizes the run has
        last = lambda v: ViTSpec.parse(v).depth - 1  # noqa: E731
        c.distill.update(pairs=((last(c.student.variant), last(c.teacher.variant)),), loss="smooth_l1",
                         normalize=False, target_norm="layernorm")
    return c
