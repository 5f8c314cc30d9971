"""The Fashion-MNIST MAE teacher: ViT 'xs/4' (128 wide, 6 blocks, 4x4 patches: 49 per
image), decoder 64 x 2, mask 0.75, per-patch normalised pixel targets, batch 128, peak lr
1.5e-3, 2400 steps (5.1 epochs), 200 warm-up. About 18 minutes on 2 CPU cores.

Chosen by its k-NN curve (benchmarks/fmnist/results.md, teacher_curve.png): MAE features
here improve gradually with training, so the teacher is trained several times longer than
the students it teaches, as in the papers (an MAE teacher of 1600 epochs, students of 100).
Batch 128 learns as much per image as 256 and takes twice the steps per second; a peak lr
of 3e-3 or mask 0.5 learnt more slowly (k-NN 72.2 and 69.5 at steps 600 and 400, against
74.2 and 70.9); a raw-pixel target and a 128 x 4 decoder did not help (the latter costs 3x).
demo.sh trains it for 800 steps only, to fit its 20-minute budget.

  python -m mdistill.main --config=configs/fmnist_mae_teacher.py --workdir=runs/fmnist_teacher
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "mae"
    c.student.variant = "xs/4"
    c.batch_size = 128
    c.total_steps, c.warmup_steps = 2400, 200
    return apply_smoke(c) if arg == "smoke" else c
