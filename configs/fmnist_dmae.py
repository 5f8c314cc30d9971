"""DMAE on Fashion-MNIST: the 'xs/4' MAE teacher of configs/fmnist_mae_teacher.py distils
into a 'mu/4' student (64 wide, 4 blocks), 400 steps of batch 128 (0.85 epochs). Student
block 2 <-> teacher block 4 (0-based; DMAE's relative depth, ViT-B's 9th of 12 blocks
against ViT-L's 18th of 24; the teacher runs 5 of its 6 blocks), linear head 64 -> 128, L1
on L2-normalised features, mask 0.75. About 2 minutes on 2 CPU cores.

Departs from the paper in one setting: the feature loss weight is 10, not 1. At this scale
the normalised-feature L1 is small beside the pixel loss (about 0.07 against 0.6), and at
weight 1 the student barely moves towards the teacher. benchmarks/fmnist/results.md sweeps
the weight at 200 steps, 3 seeds: weight 1 gives 2.1 points less k-NN than 10 (95% interval
[-3.5, -0.7]), 3 and 30 no detectable difference; last <-> last blocks 0.6 less. With
--config.method=mae the same file is the student trained alone (the teacher and the
distillation settings are then unused).

  python -m mdistill.main --config=configs/fmnist_dmae.py --workdir=runs/fmnist_dmae \
      --config.teacher.checkpoint=runs/fmnist_teacher
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "dmae"
    c.student.variant = "mu/4"
    c.teacher.update(variant="xs/4", checkpoint="runs/fmnist_teacher", dtype="float32")
    c.distill.update(pairs=((2, 4),), head="linear", projection=(64, 128), loss="l1", normalize=True, weight=10.0)
    c.batch_size = 128
    c.total_steps, c.warmup_steps = 400, 40
    return apply_smoke(c) if arg == "smoke" else c
