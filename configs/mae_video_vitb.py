"""VideoMAE (Tong et al., NeurIPS 2022) pre-training of a video ViT: the way AMD's teachers
are made, here at ViT-B/16 (`variant=L/16` for the teacher itself; `dataset=ssv2` (default)
or `k400` as in configs/amd_video.py).

From the VideoMAE release's scripts/*/pretrain.sh: 16 frames, tubelets 2 x 16 x 16, tube
masks at 0.9, decoder 4 blocks (B: 384-d, 6 heads; L: 512-d, 8 heads), normalised tubelet
targets, AdamW (0.9, 0.95), wd 0.05, blr 1.5e-4 (lr = blr x batch / 256), batch 32 per GPU
on 64 GPUs (2048 clips), 40 warm-up epochs, 800 epochs (the release also runs 1600 and 2400).

  python -m mdistill.main --config=configs/mae_video_vitb.py --workdir=runs/videomae_vitb \
      --config.data.path=ssv2/train.csv --config.data.root=ssv2/videos
"""

from configs.amd_video import video_config
from mdistill.config import apply_smoke, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, variant="B/16", dataset="ssv2")
    c = video_config(args["variant"], args["dataset"])
    c.method = "mae"
    c.mask_ratio = 0.9
    c.student.decoder_width = 512 if args["variant"] == "L/16" else c.student.decoder_width
    c.student.decoder_heads = c.student.decoder_width // 64
    c.batch_size = 2048
    c.num_epochs, c.warmup_epochs = 800.0, 40.0
    c.optim.blr = 1.5e-4
    return apply_smoke(c) if args["smoke"] else c
