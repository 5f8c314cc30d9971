"""AMD (Zhao et al., CVPR 2024): an MAE ViT-L/16 teacher distils into a ViT student on
ImageNet-1k (tfds imagenet2012); the argument picks the student, `variant=B/16` (default)
or `variant=S/16`. The paper reports 84.6% (ViT-B) and 82.1% (ViT-S) top-1 after
fine-tuning (800 pre-training epochs, per the official model zoo).

The paper does not publish its ImageNet pre-training settings, so:
  - from the official video (VideoMAE) settings: student mask 0.9, teacher mask 0.75,
    student blocks {6, 12} <-> teacher blocks {12, 24} (1-based there; 0-based pairs
    (5, 11), (11, 23), for ViT-S as ViT-B: both have 12 blocks; the teacher runs all 24
    blocks, on 49 of 196 patches), generator depth 2 with teacher width / 64 = 16 heads, L2
    on raw features, bias-free linear projection student width -> 1024 shared by both
    alignments, loss weights 1/1/1, decoder 4 blocks of half the student's width
    (B: 384-d, 6 heads; S: 192-d, 3 heads), grad clip 0.02;
  - from the ImageNet MAE recipe (ours): norm_pix_loss, global batch 4096,
    blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, 40 warm-up epochs.

  python -m mdistill.main --config=configs/amd.py:variant=S/16 --workdir=runs/amd_vits \
      --config.teacher.checkpoint=runs/mae_vitl

configs/amd_vitb.py and configs/amd_vits.py are the two variants under their own names.
"""

from mdistill.config import apply_smoke, base_config, parse_arg
from mdistill.models.vit import ViTSpec


def get_config(arg=None):
    args = parse_arg(arg, variant="B/16")
    width = ViTSpec.parse(args["variant"]).width
    c = base_config()
    c.method = "amd"
    c.mask_ratio = 0.9  # the student's
    c.student.update(variant=args["variant"], decoder_width=width // 2, decoder_depth=4, decoder_heads=width // 128)
    c.teacher.update(variant="L/16", dtype="bfloat16")
    c.amd.update(teacher_mask_ratio=0.75, pairs=((5, 11), (11, 23)), generator_depth=2, generator_heads=16,
                 loss="l2", normalize=False, dir_weight=1.0, gen_weight=1.0, rec_weight=1.0)
    c.batch_size = 4096
    c.num_epochs, c.warmup_epochs = 800.0, 40.0
    c.optim.update(blr=1.5e-4, grad_clip=0.02)
    return apply_smoke(c) if args["smoke"] else c
