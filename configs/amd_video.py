"""AMD (Zhao et al., CVPR 2024) on video, as its official release pre-trains: a VideoMAE
ViT-L/16 teacher (`vit_large_patch16_224`, 16 frames, 2-frame tubelets, VideoMAE's
Kinetics-400 pre-training) distils into a video ViT student. Arguments: `variant=B/16`
(default) or `S/16`; `dataset=ssv2` (default; Something-Something V2, where the paper
reports 73.3% top-1 for ViT-B) or `k400`.

From the release's scripts/pretrain/*_pt.sh and run_amd_pretrain.py: 16 frames at sampling
rate 2 (SSv2) or 4 (K400), tubelets 2 x 16 x 16, tube masks (`t_consist`) with the student
at 0.9 and the teacher at 0.75 (of a frame's 196 patches 20 and 49 seen: the release rounds
the hidden count down), student blocks {6, 12} <-> teacher blocks {12, 24} (1-based there;
0-based pairs (5, 11), (11, 23)) for both direct and generation alignment, generator depth
2, L2 on raw features, decoder depth 4 (B: 384-d, 6 heads; S: 192-d, 3 heads), AdamW
(0.9, 0.95), wd 0.05, 200 epochs with 10 warm-up, grad clip 0.02, normalised tubelet
targets (VideoMAE's per-channel normalisation). Batch: 16 videos per GPU on 32 GPUs, each
video sampled 4 times (`data.num_sample`, repeated sampling: one decoded window, 4
independent multi-scale crops), so 512 videos and 2048 clips per step (`batch_size` counts
clips); an epoch is a pass over the videos. The release's lr is 1.2e-3 x 512 videos / 256 =
2.4e-3, which with mdistill's rule (blr x batch / 256, batch counting clips) is blr 3e-4 at
batch 2048.

  python -m mdistill.main --config=configs/amd_video.py:variant=B/16,dataset=ssv2 \
      --workdir=runs/amd_video_vitb --config.data.path=ssv2/train.csv --config.data.root=ssv2/videos \
      --config.teacher.checkpoint=VideoMAEv1_vit_L_k400_pt_1600e.pth

configs/amd_video_vitb.py and configs/amd_video_vits.py are the two students under their own
names; `:smoke` trains on synthetic 4-frame clips.
"""

from mdistill.config import apply_smoke, base_config, parse_arg
from mdistill.models.vit import ViTSpec

DATASETS = {  # name -> (sampling rate, published training-set size used to plan the epochs)
    "ssv2": (2, 168_913),
    "k400": (4, 0),  # copies of Kinetics-400 differ in size: counted from the list file
}


def video_config(variant: str, dataset: str):
    """The video pre-training settings shared by AMD and its VideoMAE teacher's recipe."""
    if dataset not in DATASETS:
        raise ValueError(f"config argument dataset={dataset!r}: expected one of {sorted(DATASETS)}")
    width = ViTSpec.parse(variant).width
    sampling_rate, size = DATASETS[dataset]
    c = base_config()
    c.num_frames, c.tubelet_size = 16, 2
    c.student.update(variant=variant, decoder_width=width // 2, decoder_depth=4, decoder_heads=width // 128)
    c.data.update(source="video_list", path="", root="", split="train", sampling_rate=sampling_rate,
                  flip=False, size=size,  # neither release flips in pre-training
                  num_sample=1)  # clips per video read (repeated sampling); AMD's release: 4
    c.norm_pix_loss = True
    c.optim.update(b1=0.9, b2=0.95, weight_decay=0.05)
    return c


def get_config(arg=None):
    args = parse_arg(arg, variant="B/16", dataset="ssv2")
    c = video_config(args["variant"], args["dataset"])
    c.method = "amd"
    c.mask_ratio = 0.9  # the student's
    c.teacher.update(variant="L/16", dtype="bfloat16")
    c.amd.update(teacher_mask_ratio=0.75, pairs=((5, 11), (11, 23)), generator_depth=2, generator_heads=16,
                 loss="l2", normalize=False, dir_weight=1.0, gen_weight=1.0, rec_weight=1.0)
    c.batch_size = 2048  # clips: 512 videos x num_sample 4
    c.data.num_sample = 4
    c.num_epochs, c.warmup_epochs = 200.0, 10.0
    c.optim.update(blr=3e-4, grad_clip=0.02)
    return apply_smoke(c) if args["smoke"] else c
