"""AMD video pre-training, VideoMAE ViT-L/16 -> ViT-S/16: configs/amd_video.py with
`variant=S/16` (see there; `dataset=k400` and `smoke` pass through).

  python -m mdistill.main --config=configs/amd_video_vits.py --workdir=runs/amd_video_vits \
      --config.data.path=ssv2/train.csv --config.data.root=ssv2/videos \
      --config.teacher.checkpoint=VideoMAEv1_vit_L_k400_pt_1600e.pth
"""

from configs import amd_video


def get_config(arg=None):
    return amd_video.get_config(",".join(filter(None, ["variant=S/16", arg])))
