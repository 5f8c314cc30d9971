"""TinyMIM on Fashion-MNIST: the 'xs/4' MAE teacher of configs/fmnist_mae_teacher.py distils
its token relations into a 'mu/4' student (64 wide, 4 blocks, 4 heads), at the budget and
optimiser of configs/fmnist_dmae.py and configs/fmnist_amd.py (400 steps of batch 128, peak
lr 1.5e-3, 40 warm-up), so that the study compares the methods at equal cost in steps.

The release's recipe (configs/tinymim_vitb.py), scaled to these models:
  - teacher relation block 4 of 0..5: TinyMIM's intermediate block at ViT-L's relative depth
    (its 18th of 24), the block DMAE's Fashion-MNIST config distils from;
  - the student's last block takes the teacher's heads (4, its own count here), its other
    blocks drop their residual branches at 0.1;
  - relations q k^T and v v^T per head with cls, KL(teacher || student), added unweighted;
  - the student sees the whole image with ColorJitter(0.4, 0.4, 0.4): on grey images the
    saturation step is the identity, brightness and contrast act; the teacher sees the image
    without jitter.
Departs from the release in the input: no random resized crop for either model, the images
as every Fashion-MNIST config reads them (28x28, no augmentation), so that the study's
methods see the same pixels.

  python -m mdistill.main --config=configs/fmnist_tinymim.py --workdir=runs/fmnist_tinymim \
      --config.teacher.checkpoint=runs/fmnist_teacher
"""

from mdistill.config import apply_smoke, base_config, fashion_mnist


def get_config(arg=None):
    c = fashion_mnist(base_config())
    c.method = "tinymim"
    c.student.variant = "mu/4"
    c.teacher.update(variant="xs/4", checkpoint="runs/fmnist_teacher", dtype="float32")
    c.tinymim.update(teacher_block=4, relations=("qk", "vv"), jitter=(0.4, 0.4, 0.4), drop_path=0.1, student_heads=0)
    c.batch_size = 128
    c.total_steps, c.warmup_steps = 400, 40
    if arg == "smoke":
        apply_smoke(c)
    c.visualize_every = 0  # no decoder: no reconstruction to draw
    return c
