"""DMAE (Bai et al., CVPR 2023) as in its official release: an MAE ViT-L/16 teacher distils
into a ViT-B/16 student on ImageNet-1k (tfds imagenet2012).

Mask 0.75, reconstruction of the raw (not per-patch normalised) pixels as the release's
pretrain.sh does (--student_reconstruction_target original_img, no --norm_pix_loss), global
batch 4096 (the release: 8 GPUs x 128 x 4 accumulation
steps), blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, 100 epochs with 20 warm-up. Distillation:
student block 8 <-> teacher block 17 (0-based; the teacher runs 18 of its 24 blocks, on the
student's visible patches only), linear head 768 -> 1024, L1 on L2-normalised features.
The paper reports 84.0% top-1 after fine-tuning.

  python -m mdistill.main --config=configs/dmae_vitb.py --workdir=runs/dmae_vitb \
      --config.teacher.checkpoint=runs/mae_vitl
"""

from mdistill.config_base import apply_smoke, base_config


def get_config(arg=None):
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
    return apply_smoke(c) if arg == "smoke" else c
