"""MAE pre-training of ViT-B/16 on ImageNet-1k (He et al.): mask 0.75, norm_pix_loss,
decoder 512-d x 8, global batch 4096, blr 1.5e-4, AdamW (0.9, 0.95), wd 0.05,
800 epochs with 40 warm-up. The paper reports 83.6% top-1 after fine-tuning
(1600 epochs).

  python -m mdistill.main --config=configs/mae_vitb.py --workdir=runs/mae_vitb
"""

from mdistill.config_base import apply_smoke, base_config


def get_config(arg=None):
    c = base_config()
    c.method = "mae"
    c.student.variant = "B/16"
    c.num_epochs, c.warmup_epochs = 800.0, 40.0
    return apply_smoke(c) if arg == "smoke" else c
