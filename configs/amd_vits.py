"""AMD ViT-L/16 -> ViT-S/16 on ImageNet-1k: configs/amd.py with `variant=S/16` (see there).

  python -m mdistill.main --config=configs/amd_vits.py --workdir=runs/amd_vits \
      --config.teacher.checkpoint=runs/mae_vitl
"""

from configs import amd


def get_config(arg=None):
    return amd.get_config(",".join(filter(None, ["variant=S/16", arg])))
