"""Moving Fashion-MNIST (scripts/make_moving_fmnist.py): the small real video study of
MAE and AMD students on clips, run by benchmarks/moving_fmnist/study.py. Arguments:
`role=teacher` (the VideoMAE teacher, the default) or `role=student`; `method=mae|amd` for a
student (default mae); `smoke`.

Clips: one real Fashion-MNIST object moving across a 64 x 64 black canvas for 16 frames;
the model sees 8 frames at sampling rate 2 (the whole clip, VideoMAE's pre-training
sampling), grayscale, at 64 px through VideoMAE's multi-scale crop, never flipped (the
direction of motion is a label). Tubelets 2 x 8 x 8: 4 x 8 x 8 = 256 tokens a clip. Tube
masks as VideoMAE: the student sees 6 of a frame's 64 patches (mask 0.9), AMD's teacher 16
(0.75). Normalised tubelet targets, AdamW (0.9, 0.95), wd 0.05, batch 64 clips.

- teacher: video ViT 'xs/8' (128 wide, 6 blocks), decoder 64 x 2, mask 0.9, lr 1.5e-3.
- students: 'mu/8' (64 wide, 4 blocks), the same budget for both methods. AMD: pairs
  (1, 2), (3, 5) as configs/fmnist_amd.py, generator depth 2, L2 on raw features, grad clip
  0.02, direct and generation weights 1 (the release's).

  python scripts/make_moving_fmnist.py --out=data/moving_fmnist --train_clips=2000 --test_clips=1000
  python -m mdistill.main --config=configs/moving_fmnist.py --workdir=runs/mf_teacher \\
      --config.data.path=data/moving_fmnist/direction
  python -m mdistill.main --config=configs/moving_fmnist.py:role=student,method=amd \\
      --workdir=runs/mf_amd --config.data.path=data/moving_fmnist/direction \\
      --config.teacher.checkpoint=runs/mf_teacher
"""

from mdistill.config import apply_smoke, base_config, parse_arg

ROLES = ("teacher", "student")


def get_config(arg=None):
    args = parse_arg(arg, role="teacher", method="mae")
    if args["role"] not in ROLES:
        raise ValueError(f"config argument role={args['role']!r}: expected one of {ROLES}")
    if args["method"] not in ("mae", "amd"):
        raise ValueError(f"config argument method={args['method']!r}: expected 'mae' or 'amd'")
    c = base_config()
    c.image_size, c.num_frames, c.tubelet_size = 64, 8, 2
    c.data.update(source="video_folder", path="data/moving_fmnist/direction", split="train", channels=1,
                  mean=(0.055,), std=(0.19,), sampling_rate=2, flip=False, size=0, num_sample=1, workers=0)
    c.eval.update(train_split="train", test_split="test", knn_train_examples=-1, knn_test_examples=-1,
                  batch_size=128)
    c.norm_pix_loss = True
    c.optim.update(lr=1.5e-3, b1=0.9, b2=0.95, weight_decay=0.05)
    c.batch_size = 64
    c.log_every, c.checkpoint_every = 50, 500
    c.visualize_every = 250  # frame strips of 4 clips in <workdir>/visualizations (and at the end)
    if args["role"] == "teacher":
        c.method = "mae"
        c.mask_ratio = 0.9
        c.student.update(variant="xs/8", decoder_width=64, decoder_depth=2, decoder_heads=4)
        c.total_steps, c.warmup_steps = 1500, 100
    else:
        c.method = args["method"]
        c.mask_ratio = 0.9
        c.student.update(variant="mu/8", decoder_width=64, decoder_depth=2, decoder_heads=4)
        c.teacher.update(variant="xs/8", checkpoint="runs/mf_teacher", dtype="float32")
        c.amd.update(teacher_mask_ratio=0.75, pairs=((1, 2), (3, 5)), generator_depth=2, generator_heads=2,
                     loss="l2", normalize=False)
        c.optim.grad_clip = 0.02 if c.method == "amd" else 0.0
        c.total_steps, c.warmup_steps = 300, 30
    return apply_smoke(c) if args["smoke"] else c
