"""Linear probe on Fashion-MNIST of a small pre-trained encoder (default: the DMAE student
`mu/4` of demo.sh; set --config.student.variant=xs/4 for the MAE teacher). MAE's recipe
(BatchNorm without affine + linear, LARS, no weight decay) scaled down: batch 1024,
20 epochs with 2 warm-up, on precomputed features of all 60k train and 10k test images.
About 1-2 minutes on 2 CPU cores, mostly feature extraction.

Peak lr 6.4, MAE's ImageNet peak lr (blr 0.1 at batch 16384), here blr 1.6 at batch 1024
(ours). LARS scales every step by 0.001 |w| / |g|, so the lr sets how far the head can move
in its 1160 steps: with MAE's blr 0.1 (lr 0.4) the probe of a 300-step MAE student was
still underfit at 50.1% top-1 (train loss 1.39); with lr 6.4, 71.2% (loss 0.81).

  python -m mdistill.evaluate.linprobe --config=configs/linprobe_fmnist.py \
      --config.pretrained=runs/demo/student_dmae --workdir=runs/demo/student_dmae/linprobe
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist
from mdistill.evaluate.linprobe import linprobe_config


def get_config(arg=None):
    c = linprobe_config(fashion_mnist(base_config()))
    c.student.variant = "mu/4"
    c.batch_size = 1024
    c.num_epochs, c.warmup_epochs = 20.0, 2.0
    c.optim.blr = 1.6
    c.eval.update(pool="cls", batch_size=512)
    c.log_every = 200
    if arg == "smoke":
        c = apply_smoke(c)
        c.update(batch_size=64, train_examples=-1, test_examples=-1, log_every=20)
        c.total_steps = -1
        c.num_epochs, c.warmup_epochs = 10.0, 1.0
        c.optim.update(lr=-1.0, blr=0.1)  # lr = 0.1 * 64 / 256
        c.eval.update(pool="cls", batch_size=64)
    return c
