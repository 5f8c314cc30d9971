"""Fine-tuning on Fashion-MNIST of a small pre-trained encoder (default: the DMAE student
`mu/4` of demo.sh; --config.student.variant=xs/4 for the MAE teacher). MAE's recipe cut
down to a 2-epoch schedule (234 steps of batch 512, warm-up half an epoch, evaluated on the
10k test images after each epoch): global pool + fc_norm, AdamW blr 1e-3 (lr 2e-3), weight
decay 0.05, layer decay 0.75 (4 blocks), drop path 0.1, random erasing 0.25, smoothing 0.1.
Without mixup, cutmix and RandAugment: over 2 epochs they keep the model from fitting (the
MAE teacher of benchmarks/fmnist with MAE's full regularisation, blr 5e-4 and 1 warm-up
epoch: 61.4% top-1, below its linear probe's 72.4%). No flip: garments here are centred and
upright; no RandomResizedCrop either (28x28 images, centred). About 4.5 minutes for `mu/4` on 2 CPU cores.

  python -m mdistill.evaluate.finetune --config=configs/finetune_fmnist.py \
      --config.pretrained=runs/demo/student_dmae --workdir=runs/demo/student_dmae/finetune

`:labels10` is the study's fine-tuning (benchmarks/fmnist/study.py): the same recipe on a
fixed 10% of the train labels (6000 images, drawn once with seed 0), batch 256, 40 epochs
(920 steps, 4 of warm-up), test top-1 every 4 epochs. Long enough to flatten: the MAE
student of 400 steps (seed 0), evaluated every 2 epochs, reached 74.7% at epoch 10, 80.2 at
22, 82.1 at 30, then stayed within 82.41-82.64 over the last 8 epochs (final 82.58).
10% of the labels because the full 60k would take hours per run on 2 CPU cores.
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist
from mdistill.evaluate.finetune import finetune_config


def get_config(arg=None):
    c = finetune_config(fashion_mnist(base_config()))
    c.student.variant = "mu/4"
    c.batch_size = 512
    c.num_epochs, c.warmup_epochs = 2.0, 0.5
    c.optim.update(blr=1e-3)
    c.finetune.update(layer_decay=0.75, flip=False, mixup=0.0, cutmix=0.0, randaug_layers=0)
    c.data.update(augment="none", crop_scale=(0.2, 1.0))  # the 28x28 images as they are: no crop
    c.eval.update(batch_size=1024)
    c.log_every, c.eval_every, c.checkpoint_every = 39, 117, 117
    if arg == "labels10":
        c.train_examples = 6000
        c.batch_size = 256
        c.num_epochs, c.warmup_epochs = 40.0, 4.0
        c.log_every, c.eval_every, c.checkpoint_every = 46, 92, 460
    elif arg == "smoke":
        c = apply_smoke(c)  # synthetic 32px gratings, mu/4 from scratch
        c.update(batch_size=32, log_every=10, eval_every=30, checkpoint_every=30)
        c.total_steps, c.warmup_steps = 60, 5
        c.optim.update(lr=3e-3)
        # a few dozen steps from (nearly) scratch: no layer decay, no regularisation, or
        # nothing is learnt; no flip either: a grating's orientation is its class
        c.finetune.update(layer_decay=1.0, drop_path=0.0, randaug_layers=0, mixup=0.0, cutmix=0.0, reprob=0.0,
                          flip=False)
        c.data.synthetic_size = 512
        c.eval.update(batch_size=64)
    elif arg:
        raise ValueError(f"configs/finetune_fmnist.py: unknown variant {arg!r} (expected 'labels10' or 'smoke')")
    return c
