"""AMD ViT-L/16 -> ViT-B/16 on ImageNet-1k: configs/amd.py with `variant=B/16` (see there).

  python -m mdistill.main --config=configs/amd_vitb.py --workdir=runs/amd_vitb \
      --config.teacher.checkpoint=runs/mae_vitl
"""

from configs import amd


def get_config(arg=None):
    return amd.get_config(",".join(filter(None, ["variant=B/16", arg])))
