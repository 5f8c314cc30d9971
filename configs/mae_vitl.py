"""MAE ViT-L/16 on ImageNet-1k: configs/mae.py with `variant=L/16` (see there).

  python -m mdistill.main --config=configs/mae_vitl.py --workdir=runs/mae_vitl
"""

from configs import mae


def get_config(arg=None):
    return mae.get_config(",".join(filter(None, ["variant=L/16", arg])))
