"""TinyMIM ViT-T/16 as in its official release (OliverRensu/TinyMIM), by sequential
distillation from a TinyMIM ViT-B/16 (configs/tinymim_vitb.py's run): the release's
`tinymim_vit_tiny_patch16` has 12 heads in its last block (the ViT-B teacher's, whose last
block, 12th of 12, gives the relations: `teacher_block=-1`), and pre-trains with 6 heads in
blocks 1-11 (`student_heads=6`) where timm's ViT-T has 3; fine-tuning takes ViT-T's 3
(the release's vit_tiny_patch16), every parameter having the same shape. The paper reports
75.8% top-1 after fine-tuning (MAE ViT-T: 71.6%).

Everything else is configs/tinymim_vitb.py's (see there, with the deviations from the
release): drop path 0.1, ColorJitter(0.4, 0.4, 0.4) on the student's whole image, KL of
q k^T + v v^T; 300 epochs, 15 warm-up, batch 4096, blr 1.5e-4. The release's README gives the
pre-training command of ViT-B only; ViT-T takes the same schedule.

  python -m mdistill.main --config=configs/tinymim_vitt.py --workdir=runs/tinymim_vitt \
      --config.teacher.checkpoint=runs/tinymim_vitb
"""

from configs.tinymim_vitb import tinymim_config


def get_config(arg=None):
    return tinymim_config(arg, "Ti/16", "B/16", teacher_block=-1, student_heads=6)
