"""MAE pre-training on ImageNet-1k (He et al.); the argument picks the ViT, `variant=B/16`
(default) or `variant=L/16` (the DMAE and AMD teacher): mask 0.75, norm_pix_loss, decoder
512-d x 8, global batch 4096, blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05, 800 epochs with 40
warm-up. The paper reports 83.6% (ViT-B) and 85.9% (ViT-L) top-1 after fine-tuning (1600
epochs).

  python -m mdistill.main --config=configs/mae.py:variant=L/16 --workdir=runs/mae_vitl

configs/mae_vitb.py and configs/mae_vitl.py are the two variants under their own names.
"""

from mdistill.config import apply_smoke, base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, variant="B/16")
    c = base_config()
    c.method = "mae"
    c.student.variant = args["variant"]
    c.num_epochs, c.warmup_epochs = 800.0, 40.0
    return apply_smoke(c) if args["smoke"] else c
