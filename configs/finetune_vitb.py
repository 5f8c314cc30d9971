"""Fine-tuning a ViT-B/16 encoder on ImageNet-1k, MAE's recipe (He et al., appendix A.1):
global average pooling + fc_norm, batch 1024, blr 5e-4 (lr 2e-3), AdamW (0.9, 0.999),
weight decay 0.05, layer decay 0.65, drop path 0.1, RandAugment (m9, mstd 0.5, 2 layers),
random erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1, 100 epochs with 5
warm-up, cosine to 1e-6. MAE ViT-B reports 83.6% top-1; DMAE's ViT-L -> ViT-B student 84.0%.

Differs from MAE in one transform: no RandomResizedCrop (images are resized and
centre-cropped by the data source, then flipped at random); see
mdistill/evaluate/finetune.py.

  python -m mdistill.evaluate.finetune --config=configs/finetune_vitb.py \
      --config.pretrained=runs/dmae_vitb --workdir=runs/dmae_vitb/finetune
"""

from mdistill.config import base_config
from mdistill.evaluate.finetune import finetune_config


def get_config(arg=None):
    if arg == "smoke":
        from configs.finetune_fmnist import get_config as fmnist

        return fmnist("smoke")
    c = finetune_config(base_config())
    c.student.variant = "B/16"
    c.eval.update(train_split="train", test_split="validation")
    c.eval_every, c.checkpoint_every = 1250, 1250  # each epoch
    return c
