"""TinyMIM (Ren et al., CVPR 2023) as in its official release (OliverRensu/TinyMIM): an MAE
ViT-L/16 teacher distils its token relations into a ViT-B/16 student on ImageNet-1k (tfds
imagenet2012). The paper reports 85.0% top-1 after fine-tuning (MAE ViT-B: 83.6%).

The release's settings (main_pretrain.py, models_tinymim.py, models_teacher.py, its README's
command):
  - teacher: MAE ViT-L/16 (`mae_vit_large`), relations of its 18th block of 24 (0-based
    `teacher_block=17`), 16 heads; on the crop, without jitter;
  - student: ViT-B/16 with 12 heads in blocks 1-11 and the teacher's 16 in its last block,
    whose relations are distilled; drop path 0.1 in every block but the last; the whole
    image, ColorJitter(0.4, 0.4, 0.4); no mask, no decoder;
  - relations q k^T and v v^T per head, cls included, each scaled by its block's
    head_dim^-0.5, softmax; loss KL(teacher || student), the two added unweighted;
  - input: random resized crop 224 (scale 0.2-1, bicubic) + flip for both;
  - schedule: 300 epochs, 15 warm-up, global batch 4096, blr 1.5e-4 (lr = blr * 4096 / 256),
    AdamW (0.9, 0.95), wd 0.05 (none on biases and norms), cosine to 0.

Where mdistill differs from the release:
  - the release computes in float16 autocast; here the student in config.dtype (float32) and
    the teacher in bfloat16, relations' logits and the loss in float32;
  - the colour jitter runs on device in float on the uint8 crop (torchvision's PIL path
    rounds to 8 bits after each adjustment and takes the contrast mean as an integer);
  - the release's parameters that never get a gradient (the student's last block's proj,
    norm2 and MLP, its final norm) stay at their init, as here, on the reading that its AdamW
    skips a parameter whose gradient is None (PyTorch DDP leaves globally unused ones so);
    their init is mdistill's (xavier, as the release), not the release's draws;
  - the release hard-codes the student's 12th block (its last); here always the last block.
The student is a whole ViT encoder: fine-tune it with its variant's 12 heads in every block, as
the release's main_finetune.py does (vit_base_patch16).

  python -m mdistill.main --config=configs/tinymim_vitb.py --workdir=runs/tinymim_vitb \
      --config.teacher.checkpoint=runs/mae_vitl
"""

from mdistill.config import apply_smoke, base_config, parse_arg


def tinymim_config(arg, student: str, teacher: str, teacher_block: int, student_heads: int = 0):
    """The release's recipe for one (student, teacher) pair; `arg` takes 'smoke'."""
    args = parse_arg(arg)
    c = base_config()
    c.method = "tinymim"
    c.student.variant = student
    c.teacher.update(variant=teacher, dtype="bfloat16")
    c.tinymim.update(teacher_block=teacher_block, relations=("qk", "vv"), jitter=(0.4, 0.4, 0.4), drop_path=0.1,
                     student_heads=student_heads)
    c.data.update(augment="mae", crop_scale=(0.2, 1.0))
    c.batch_size = 4096
    c.num_epochs, c.warmup_epochs = 300.0, 15.0
    c.optim.update(blr=1.5e-4, weight_decay=0.05, b1=0.9, b2=0.95, min_lr=0.0)
    if args["smoke"]:
        apply_smoke(c)
    c.visualize_every = 0  # no decoder: no reconstruction to draw
    return c


def get_config(arg=None):
    return tinymim_config(arg, "B/16", "L/16", teacher_block=17)
