"""DMAE on Fashion-MNIST: the 'xs/4' MAE teacher of configs/fmnist_mae_teacher.py distils
into a 'mu/4' student (64 wide, 4 blocks). Student block 2 <-> teacher block 4 (0-based:
the teacher runs 5 of its 6 blocks), linear head 64 -> 128, L1 on L2-normalised features,
mask 0.75. The second half of the README's main job; about 5 minutes on 2 CPU cores.

  python -m mdistill.main --config=configs/fmnist_dmae.py --workdir=runs/fmnist_dmae \
      --config.teacher.checkpoint=runs/fmnist_teacher
"""

from mdistill.config_base import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "dmae"
    c.student.variant = "mu/4"
    c.teacher.update(variant="xs/4", checkpoint="runs/fmnist_teacher", dtype="float32")
    c.distill.update(pairs=((2, 4),), head="linear", projection=(64, 128), loss="l1", normalize=True)
    c.total_steps, c.warmup_steps = 500, 50
    return apply_smoke(c) if arg == "smoke" else c
