"""Linear probe of a ViT-B/16 encoder on ImageNet-1k, MAE's recipe (He et al., appendix
A.2): frozen encoder, cls token after the final norm, BatchNorm without affine + linear
head, LARS (momentum 0.9), batch 16384, blr 0.1 (lr = 6.4), weight decay 0, 90 epochs with
10 warm-up. MAE ViT-B reports 68.0% top-1.

MAE trains the head on augmented images, RandomResizedCrop (torchvision's default scale,
8-100% of the area, bicubic) + horizontal flip, through the frozen encoder; so does this
config (data.augment='mae', data.crop_scale=(0.08, 1.0)): each step reads its batch
through the input pipeline and runs the encoder on it, a forward pass of ViT-B over the
training set every epoch, on the whole global batch at once (MAE spreads its 16384 over 32
GPUs). Test features are computed once, centre-cropped. --config.data.augment=none trains
instead on features precomputed once, without augmentation: 90x fewer encoder passes
(features of the 1.28M training images take ~3.9 GB, sharded over the devices), numbers
slightly off the paper's.

  python -m mdistill.evaluate.linprobe --config=configs/linprobe_vitb.py \
      --config.pretrained=runs/dmae_vitb --workdir=runs/dmae_vitb/linprobe
"""

from mdistill.config import base_config
from mdistill.evaluate.linprobe import linprobe_config


def get_config(arg=None):
    if arg == "smoke":
        from configs.linprobe_fmnist import get_config as fmnist

        return fmnist("smoke")
    c = linprobe_config(base_config())
    c.student.variant = "B/16"
    c.eval.update(train_split="train", test_split="validation")
    c.data.update(augment="mae", crop_scale=(0.08, 1.0))  # MAE's probe: RandomResizedCrop + flip
    return c
