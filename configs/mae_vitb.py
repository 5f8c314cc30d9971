"""MAE ViT-B/16 on ImageNet-1k: configs/mae.py with `variant=B/16` (see there).

  python -m mdistill.main --config=configs/mae_vitb.py --workdir=runs/mae_vitb
"""

from configs import mae


def get_config(arg=None):
    return mae.get_config(",".join(filter(None, ["variant=B/16", arg])))
