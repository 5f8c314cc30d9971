"""TinyMIM ViT-S/16 as in its official release (OliverRensu/TinyMIM), by sequential
distillation: its teacher is a TinyMIM ViT-B/16 (configs/tinymim_vitb.py's run, distilled from
MAE ViT-L), as the release's `tinymim_vit_small_patch16` with 12 heads in its last block (the
ViT-B teacher's) pairs with `mae_vit_base`, whose relations are those of its 12th block of 12
(its last: `teacher_block=-1`, 12 heads). The paper reports 83.0% top-1 after fine-tuning
(MAE ViT-S: 80.6%).

Everything else is configs/tinymim_vitb.py's (see there, with the deviations from the
release): 6 heads in blocks 1-11, drop path 0.1, ColorJitter(0.4, 0.4, 0.4) on the student's
whole image, KL of q k^T + v v^T; 300 epochs, 15 warm-up, batch 4096, blr 1.5e-4. The
release's README gives the pre-training command of ViT-B only; ViT-S takes the same schedule.
The teacher's relation block reads a TinyMIM-B checkpoint with its variant's 12 heads, as the
release's mae_vit_base does (the checkpoint's last block was trained with 16).

  python -m mdistill.main --config=configs/tinymim_vits.py --workdir=runs/tinymim_vits \
      --config.teacher.checkpoint=runs/tinymim_vitb
"""

from configs.tinymim_vitb import tinymim_config


def get_config(arg=None):
    return tinymim_config(arg, "S/16", "B/16", teacher_block=-1)
