"""A small MAE teacher on Fashion-MNIST: the first half of the README's main job.
ViT 'xs/4' (128 wide, 6 blocks, 4x4 patches), decoder 64 x 2, mask 0.75, batch 256,
peak lr 1.5e-3. About 5 minutes on 2 CPU cores. Reads the original IDX files (Debian's
dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist).

  python -m mdistill.main --config=configs/fmnist_mae_teacher.py --workdir=runs/fmnist_teacher
"""

from mdistill.config_base import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "mae"
    c.student.variant = "xs/4"
    c.total_steps, c.warmup_steps = 500, 50
    return apply_smoke(c) if arg == "smoke" else c
