"""AMD video pre-training, VideoMAE ViT-L/16 -> ViT-B/16: configs/amd_video.py with
`variant=B/16` (see there; `dataset=k400` and `smoke` pass through).

  python -m mdistill.main --config=configs/amd_video_vitb.py --workdir=runs/amd_video_vitb \
      --config.data.path=ssv2/train.csv --config.data.root=ssv2/videos \
      --config.teacher.checkpoint=VideoMAEv1_vit_L_k400_pt_1600e.pth
"""

from configs import amd_video


def get_config(arg=None):
    return amd_video.get_config(",".join(filter(None, ["variant=B/16", arg])))
