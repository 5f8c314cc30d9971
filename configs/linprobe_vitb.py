"""Linear probe of a ViT-B/16 encoder on ImageNet-1k, MAE's recipe (He et al., appendix
A.2): frozen encoder, cls token after the final norm, BatchNorm without affine + linear
head, LARS (momentum 0.9), batch 16384, blr 0.1 (lr = 6.4), weight decay 0, 90 epochs with
10 warm-up. MAE ViT-B reports 68.0% top-1.

Our probe trains on features precomputed once, without MAE's RandomResizedCrop + flip
(see mdistill/evaluate/linprobe.py). Features of the 1.28M training images take ~3.9 GB,
sharded over the devices.

  python -m mdistill.evaluate.linprobe --config=configs/linprobe_vitb.py \
      --config.pretrained=runs/dmae_vitb --workdir=runs/dmae_vitb/linprobe
"""

from mdistill.config_base import base_config
from mdistill.evaluate.linprobe import linprobe_config


def get_config(arg=None):
    if arg == "smoke":
        from configs.linprobe_fmnist import get_config as fmnist

        return fmnist("smoke")
    c = linprobe_config(base_config())
    c.student.variant = "B/16"
    c.eval.update(train_split="train", test_split="validation")
    return c
