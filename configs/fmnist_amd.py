"""AMD on Fashion-MNIST: the 'xs/4' MAE teacher of configs/fmnist_mae_teacher.py distils
into a 'mu/4' student (64 wide, 4 blocks). Student mask 0.9 (4 of 49 patches visible),
teacher mask 0.75 (12 visible, so 8 are the teacher's alone). Pairs, 0-based: student
block 1 <-> teacher block 2 and 3 <-> 5 (the middle and last block of each, as AMD pairs
ViT-B with ViT-L; the teacher runs all 6 blocks). Generator 2 blocks at the teacher's
width 128 with 2 heads, L2 on raw features, grad clip 0.02 (AMD's video settings); the
rest as configs/fmnist_dmae.py. A few minutes on 2 CPU cores.

  python -m mdistill.main --config=configs/fmnist_amd.py --workdir=runs/fmnist_amd \
      --config.teacher.checkpoint=runs/fmnist_teacher
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "amd"
    c.mask_ratio = 0.9  # the student's
    c.student.variant = "mu/4"
    c.teacher.update(variant="xs/4", checkpoint="runs/fmnist_teacher", dtype="float32")
    c.amd.update(teacher_mask_ratio=0.75, pairs=((1, 2), (3, 5)), generator_depth=2, generator_heads=2,
                 loss="l2", normalize=False)
    c.optim.grad_clip = 0.02
    c.batch_size = 128
    c.total_steps, c.warmup_steps = 400, 40
    return apply_smoke(c) if arg == "smoke" else c
